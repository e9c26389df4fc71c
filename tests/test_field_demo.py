"""The field demo (benchmarks/field_demo.py): its helpers (fast) and its FAST form end to
end (slow: trains and converts two models; `make test-slow`)."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from benchmarks import field_loop as fl
from benchmarks.field_demo import goals, table
from tests.conftest import run_cli


def _pair(folder: Path, name: str, frame: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    jpg = folder / f"{name}.jpg"
    jpg.write_bytes(b"\xff\xd8 not decoded here \xff\xd9")
    jpg.with_suffix(".json").write_text(json.dumps({"device": "cam", "model_sha256": "0",
                                                    "frame": frame}))
    return jpg


def test_truth_labels_from_sidecar_frames(tmp_path):
    home = tmp_path / "field"
    _pair(home / "cam" / "2026-12-01", "a_f00000001", 1)
    _pair(home / "cam" / "2026-12-01", "b_f00000005", 5)  # 5 wraps to line 1 of 4
    (home / "cam" / "2026-12-01" / ".c_f00000002.jpg").write_bytes(b"temp")  # skipped
    (home / "cam" / "2026-12-01" / "d_f00000003.jpg").write_bytes(b"no sidecar yet")
    labels = tmp_path / "video_labels.txt"
    labels.write_text("circle\nsquare\nstar\ntriangle\n")
    counts = fl.truth_labels(home, labels, tmp_path / "labels.csv")
    assert counts == {"square": 2}
    assert (tmp_path / "labels.csv").read_text().splitlines() == [
        "path,label", "cam/2026-12-01/a_f00000001.jpg,square",
        "cam/2026-12-01/b_f00000005.jpg,square"]


def test_materialize_copies_images_with_sidecars(tmp_path):
    root = tmp_path / "data"
    _pair(root / "star", "k", 3)
    (root / "circle").mkdir()
    (root / "circle" / "c.jpg").write_bytes(b"x")
    n = fl.materialize(root, [["star/k.jpg", 1], ["circle/c.jpg", 0]], ["circle", "star"],
                       tmp_path / "out")
    assert n == 2
    assert sorted(p.relative_to(tmp_path / "out").as_posix()
                  for p in (tmp_path / "out").rglob("*")) == [
        "circle", "circle/c.jpg", "star", "star/k.jpg", "star/k.json"]


def _results(field=(0.4, 0.8), original=(1.0, 0.99), alert=120, sample_alert=None):
    return {"fast": False, "kept": 180, "collect": "deploy collect over ssh", "seconds": 9.0,
            "field_test": {"images": 50, "v1": field[0], "v2": field[1]},
            "original_test": {"images": 60, "v1": original[0], "v2": original[1]},
            "field_images": {"images": 400, "v1": 0.45, "v2": 0.7},
            "drift_v1_field": {"frames": 1440, "max": 1.5, "final": 1.4,
                               "first_alert_frame": alert},
            "drift_v1_sample": {"frames": 9000, "max": 0.5, "final": 0.2,
                                "first_alert_frame": sample_alert},
            "drift_v2_field": None}


def test_goals_and_table():
    r = _results()
    r["goals"] = goals(r, fast=False)
    assert all(r["goals"].values()) and len(r["goals"]) == 4
    assert list(goals(_results(field=(0.4, 0.49)), fast=False).values())[0] is False
    g = goals(_results(original=(1.0, 0.98), alert=400, sample_alert=3000), fast=False)
    assert list(g.values()) == [True, False, False, False]
    assert list(goals(_results(field=(0.4, 0.46), original=(1.0, 0.96)), fast=True).values()
                ) == [True, True, True, True]
    text = table(r)
    assert "  field test split (held out)           50    40.0    80.0   +40.0" in text
    assert "alert at frame 120 (1440 frames)" in text and "no baseline in the model" in text
    assert "[MISSED]" not in text and text.count("[met]") == 4


@pytest.mark.slow  # key generation and two logins: ~5 s on a loaded 2-core machine
@pytest.mark.skipif(fl.LoopbackSSH.why_not() is not None, reason="no sshd/ssh here")
def test_loopback_sshd_accepts_its_key_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative folder (sshd re-executes itself: made absolute)
    with fl.LoopbackSSH(Path("ssh")) as ssh:
        base = ["ssh", "-p", str(ssh.port), *shlex.split(ssh.ssh_args), ssh.host]
        ok = subprocess.run([*base[:1], "-i", str(ssh.key), *base[1:], "echo", "hi"],
                            capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0 and ok.stdout == "hi\n", ok.stderr
        other = tmp_path / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                       check=True, timeout=30)
        bad = subprocess.run([*base[:1], "-i", str(other), *base[1:], "true"],
                             capture_output=True, text=True, timeout=30)
        assert bad.returncode == 255 and "Permission denied" in bad.stderr
    assert ssh.proc.poll() is not None  # stopped on exit


@pytest.mark.slow
@pytest.mark.field_demo  # make test-field-demo; ~15 min on 2 cores, outside CI's 50-minute budget
def test_field_demo_fast_end_to_end(tmp_path):
    """The CI form of `make field-demo`: every step runs, and the fast goals hold."""
    p = run_cli("benchmarks.field_demo", "--fast", "--strict", "--out", str(tmp_path / "d"),
                timeout=1800)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((tmp_path / "d" / "field_demo.json").read_text())
    assert r["fast"] and all(r["goals"].values()), r["goals"]
    assert r["kept"] >= 40 and r["field_test"]["images"] >= 10
    assert r["original_test"]["images"] == r["v2_metrics"]["test"]["count"]
    assert r["field_test"]["images"] == r["v2_metrics"]["field_test"]["count"]
    assert all(s["status"] == 0 for s in r["steps"])
    assert "field test split (held out)" in p.stdout
