"""`python -m deploy bench-fleet` against real OpenSSH servers on 127.0.0.1 (see conftest.py).

One fleet: devices 1 and 2 run a release that carries a held-out set (device 2 flagged
emulated in the inventory), device 3 has the venv but no active release, and a fourth
inventory host has no sshd. The benchmark runs on each device with its own environment;
the results come home and are merged into one report. Prints what it measured (pytest -s).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORAL_DIRS = (ROOT.parent / "shared" / "reference" / "coral", ROOT / "data" / "coral")
PHOTOS = ("cat.bmp", "parrot.jpg", "grace_hopper.bmp", "hot_dog.jpg")  # as conftest.py
PROFILE = """\
name: bench-device
model:
  path: models/whatever.tflite
  threads: 1
camera:
  source: /dev/video0
"""


@pytest.fixture(scope="module")
def heldout(models, tmp_path_factory) -> tuple[Path, float]:
    """A held-out folder (one subfolder per label) of Coral's photos, labelled with this
    machine's top-1 except one photo filed under a wrong label: (folder, expected top-1)."""
    from edge_runtime.classify import Classifier

    coral = next(d for d in CORAL_DIRS if (d / "bird.bmp").is_file())
    clf = Classifier(models["golden"])
    out = tmp_path_factory.mktemp("heldout")
    names = []
    for photo in PHOTOS:
        label = clf.classify_file(coral / photo)[0].label
        names.append(label)
        (out / label).mkdir(exist_ok=True)
        shutil.copyfile(coral / photo, out / label / photo)
    shutil.copyfile(coral / "bird.bmp", out / names[0] / "bird.bmp")  # wrong on purpose
    return out, len(PHOTOS) / (len(PHOTOS) + 1)


def _run(argv: list[str], timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return p, time.monotonic() - t0


def test_bench_fleet_measures_each_device_and_merges(devices, models, ssh_args, wheel,
                                                     wheelhouse, heldout, tmp_path):
    folder, expected_top1 = heldout
    profile = tmp_path / "bench-device.yaml"
    profile.write_text(PROFILE)
    inv = tmp_path / "hosts.ini"
    lines = [f"{d.user} ansible_host=127.0.0.1 ansible_port={d.port} ansible_user={d.user}"
             for d in devices]
    inv.write_text("[edgekit]\n" + "\n".join(lines[:2]) + "\n")
    p, deploy_s = _run([sys.executable, "-m", "deploy", "deploy", "--inventory", str(inv),
                        *ssh_args, "--config", str(profile), "--model", str(models["golden"]),
                        "--wheel", str(wheel), "--wheelhouse", str(wheelhouse),
                        "--heldout", str(folder), "--no-service", "--quiet"])
    assert p.returncode == 0, p.stdout + p.stderr
    rel = devices[0].ek / "current"
    index = json.loads((rel / "heldout" / "index.json").read_text())
    assert len(index["images"]) == len(PHOTOS) + 1
    (devices[2].ek / "current").unlink(missing_ok=True)  # device 3: nothing active

    lines[1] += " edgekit_emulated=true"
    closed = devices[0].port + 1 if devices[0].port + 1 not in {d.port for d in devices} \
        else devices[0].port + 2
    lines.append(f"nodevice ansible_host=127.0.0.1 ansible_port={closed} ansible_user=nobody")
    inv.write_text("[edgekit]\n" + "\n".join(lines) + "\n")
    out = tmp_path / "bench"
    p, bench_s = _run([sys.executable, "-m", "deploy", "bench-fleet", "--inventory", str(inv),
                       *ssh_args, "--out", str(out), "--runs", "20", "--timeout", "240",
                       "--forks", "1", "--quiet"])
    assert p.returncode == 1, p.stdout + p.stderr  # two hosts could not be benchmarked
    by_host = {ln.split(":", 1)[0]: ln for ln in p.stdout.splitlines() if ": " in ln}
    ok0, ok1 = by_host[devices[0].user], by_host[devices[1].user]
    assert f"1 row(s) (model top-1 {expected_top1:.3f})" in ok0, p.stdout
    assert ok1.endswith("EMULATED") and "EMULATED" not in ok0, p.stdout
    assert "no release in ~/edgekit/current" in by_host[devices[2].user], p.stdout
    assert "unreachable: connection refused" in by_host["nodevice"], p.stdout
    assert len(p.stderr.strip().splitlines()) <= 2 and "Traceback" not in p.stderr, p.stderr

    merged = json.loads((out / "results.json").read_text())
    assert merged["kind"] == "merged"
    assert sorted(r["device"] for r in merged["rows"]) == sorted(
        [devices[0].user, f"{devices[1].user} (emulated)"])  # one row per device x variant
    for r in merged["rows"]:
        assert r["top1"] == pytest.approx(expected_top1) and r["images"] == len(PHOTOS) + 1
        assert r["latency_ms"]["p50"] > 0 and r["runs"] >= 20
    envs = {d["device"]: d["environment"] for d in merged["devices"]}
    assert envs[f"{devices[1].user} (emulated)"]["emulated"] == "emulated (inventory flag)"
    assert envs[devices[0].user]["emulated"] is None
    assert all("governor" in e and "temperature_c" in e and "throttling" in e
               for e in envs.values())
    report = (out / "report.md").read_text()
    assert f"| {devices[1].user} (emulated) |" in report and "**yes**: emulated" in report
    # The device's own scratch folder is gone; nothing was written into the release.
    assert not any((devices[0].ek / "bench").iterdir())
    assert not (rel / "bench").exists()
    fleet_lines = p.stdout.splitlines()
    # A benchmark that fails on the device is that host's line; the report keeps the rest.
    (rel / "heldout" / "index.json").write_text("{")
    p, again_s = _run([sys.executable, "-m", "deploy", "bench-fleet", "--host", devices[0].host,
                       "--port", str(devices[0].port), *ssh_args, "--out", str(out), "--quiet"])
    assert p.returncode == 1, p.stdout + p.stderr
    assert (f"{devices[0].host}: not benchmarked: benchmark failed (status 1): error: held-out "
            "index unreadable") in p.stdout, p.stdout
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 2
    print(f"\nMEASURE deploy with held-out set to 2 devices (parallel): {deploy_s:.1f} s")
    print(f"MEASURE bench-fleet of 1 device whose benchmark fails: {again_s:.1f} s")
    print(f"MEASURE bench-fleet, 4 hosts (2 benchmarked, one at a time): {bench_s:.1f} s")
    for r in merged["rows"]:
        print(f"MEASURE {r['device']} {r['variant']} x{r['threads']}: p50 "
              f"{r['latency_ms']['p50']:.2f} ms, top-1 {r['top1']:.3f} on {r['images']} images")
    for line in fleet_lines:
        print(f"SUMMARY {line}")
