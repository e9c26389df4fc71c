"""The field demo (benchmarks/field_demo.py): its helpers and convert's field report (fast),
and its CI form end to end (`make test-field-demo`: trains and converts two models)."""

from __future__ import annotations

import json
import re
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
    return {"mode": "full", "kept": 180, "collect": "deploy collect over ssh", "seconds": 9.0,
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
    r["goals"] = goals(r, "full")
    assert all(r["goals"].values()) and len(r["goals"]) == 4
    assert list(goals(_results(field=(0.4, 0.49)), "full").values())[0] is False
    g = goals(_results(original=(1.0, 0.98), alert=400, sample_alert=3000), "full")
    assert list(g.values()) == [True, False, False, False]
    assert list(goals(_results(field=(0.4, 0.46), original=(1.0, 0.96), alert=1000), "fast"
                      ).values()) == [True, True, True, True]
    # ci: 4 images of 60 may flip on the original split, not 5; drift within 300 frames
    assert list(goals(_results(field=(0.4, 0.46), original=(1.0, 1 - 4 / 60)), "ci").values()
                ) == [True, True, True, True]
    assert list(goals(_results(original=(1.0, 1 - 5 / 60), alert=301), "ci").values()
                ) == [True, False, False, True]
    text = table(r)
    assert "  field test split (held out)           50    40.0    80.0   +40.0" in text
    assert "alert at frame 120 (1440 frames)" in text and "no baseline in the model" in text
    assert "[MISSED]" not in text and text.count("[met]") == 4
    assert "Field loop (full): 180 frames kept" in text


def test_convert_report_scores_the_field_test_split(trained_run, exported):
    """convert's report: top-1 on the field test split beside the original one, with counts
    (the tiny run has no field images: some of its test images stand in for them)."""
    from dataclasses import replace

    from convert.evaluate import field_test, format_table, run_model, to_markdown
    from edge_runtime import Classifier
    from edge_runtime.runs import load_run

    manifest, split, root = load_run(trained_run)
    int8 = exported / "model_int8.tflite"
    models = {"int8": int8}
    report = json.loads((exported / "convert_report.json").read_text())
    assert "field_test" not in report  # no field images, no field section
    assert field_test(models, None, manifest, root, manifest.labels) is None
    items = [[rel, ci] for rel, ci in split.test[:6]]
    data = manifest.extra["data"] | {"field_test": items, "field_test_groups": ["a", "b"]}
    m = replace(manifest, extra=manifest.extra | {"data": data})
    f = field_test(models, lambda x: run_model(int8, x), m, root, manifest.labels)
    clf = Classifier(int8)  # scored again one file at a time, through another path
    want = sum(clf.classify_file(root / rel, k=1)[0].label == manifest.labels[ci]
               for rel, ci in items) / len(items)
    assert (f["images"], f["groups"], f["skipped"]) == (6, 2, [])
    assert f["variants"]["int8"]["top1"] == pytest.approx(want)
    assert f["keras"]["top1"] == pytest.approx(want)
    assert f["variants"]["int8"]["agreement"] == 1.0
    report["field_test"] = f
    assert (f"field test split (6 held-out field images, 2 device/time groups): top-1 keras "
            f"{want:.4f}, int8 {want:.4f}") in format_table(report)
    md = to_markdown(report)
    assert "Field test split: 6 held-out field images" in md
    assert f"| int8 | {want:.4f} | 1.0000 |" in md
    assert f"original test split, {report['test_images']} images" in md


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


def _drift_goals_apply(run: Path) -> bool:
    """Whether the drift goals are asserted: once convert records input statistics in the
    model's drift baseline (edge_runtime/drift_input.py). v1 is confidently wrong on the
    field video, so its outputs alone look like validation for far more than 300 frames."""
    from edge_runtime.manifest import load_manifest

    baseline = load_manifest(run / "export" / "manifest.json").drift_baseline or {}
    return any("input" in entry for entry in baseline.get("models", {}).values())


@pytest.mark.slow
@pytest.mark.field_demo  # make test-field-demo, in CI (.ci/run): ~8 min on 2 cores
def test_field_demo_ci_end_to_end(tmp_path):
    """The CI form of `make field-demo`: every step runs as its CLI, and the goals hold
    (the drift goals once the baselines have input statistics)."""
    out = tmp_path / "d"
    p = run_cli("benchmarks.field_demo", "--ci", "--out", str(out), timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((out / "field_demo.json").read_text())
    assert r["mode"] == "ci" and all(s["status"] == 0 for s in r["steps"])
    steps = [s["step"] for s in r["steps"]]
    for step in ("train v1", "convert v1", "daemon: v1 on the field video, keeping on",
                 "apply the labels", "train v2", "convert v2", "compare v1 v2 on field-test",
                 "compare v1 v2 on original-test"):
        assert step in steps, steps
    if fl.LoopbackSSH.why_not() is None:
        assert r["collect"] == "deploy collect over ssh"
        again = re.findall(r"field-device: 0 frames copied \(0\.0 MB\), 0 failed, (\d+) "
                           r"already here", p.stdout)
        assert again == [str(r["kept"])], p.stdout[-3000:]
    assert r["kept"] >= 40 and r["field_test"]["images"] >= 10
    # Both splits with their counts in metrics.json and in convert's report of v2.
    metrics, report = r["v2_metrics"], r["v2_convert_report"]
    assert r["original_test"]["images"] == metrics["test"]["count"] == \
        report["test"]["images"] == 60
    assert r["field_test"]["images"] == metrics["field_test"]["count"] == \
        report["field_test"]["images"]
    assert report["field_test"]["top1"]["int8"] == pytest.approx(r["field_test"]["v2"],
                                                                 abs=1e-4)
    drift = _drift_goals_apply(out / "v1")  # the one line that decides the drift goals
    asserted = {g: ok for g, ok in r["goals"].items() if drift or "drift" not in g}
    assert len(asserted) == (4 if drift else 2) and all(asserted.values()), r["goals"]
    assert "field test split (held out)" in p.stdout
