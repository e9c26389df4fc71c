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


def _bench(inv: Path, out: Path, ssh_args, *extra: str):
    p, secs = _run([sys.executable, "-m", "deploy", "bench-fleet", "--inventory", str(inv),
                    *ssh_args, "--out", str(out), "--runs", "20", "--timeout", "240",
                    "--quiet", *extra])
    assert "Traceback" not in p.stderr, p.stderr
    return p, secs, {ln.split(":", 1)[0]: ln for ln in p.stdout.splitlines() if ": " in ln}


@pytest.fixture
def fleet(devices, models, ssh_args, wheel, wheelhouse, heldout, tmp_path):
    """The three devices on one release of two variants (the model and its fallback) with
    the held-out set; (inventory lines, deploy seconds)."""
    profile = tmp_path / "bench-device.yaml"
    profile.write_text(PROFILE.replace("  threads: 1\n",
                                       f"  threads: 1\n  fallback: {models['plain']}\n"))
    inv = tmp_path / "hosts.ini"
    lines = [f"{d.user} ansible_host=127.0.0.1 ansible_port={d.port} ansible_user={d.user}"
             for d in devices]
    inv.write_text("[edgekit]\n" + "\n".join(lines) + "\n")
    p, secs = _run([sys.executable, "-m", "deploy", "deploy", "--inventory", str(inv),
                    *ssh_args, "--config", str(profile), "--model", str(models["golden"]),
                    "--wheel", str(wheel), "--wheelhouse", str(wheelhouse),
                    "--heldout", str(heldout[0]), "--no-service", "--quiet"])
    assert p.returncode == 0, p.stdout + p.stderr
    index = json.loads((devices[0].ek / "current" / "heldout" / "index.json").read_text())
    assert len(index["images"]) == len(PHOTOS) + 1
    lines[1] += " edgekit_emulated=true"
    return lines, secs


def test_bench_fleet_measures_each_device_and_merges(devices, fleet, ssh_args, heldout,
                                                     tmp_path):
    lines, deploy_s = fleet
    expected_top1 = heldout[1]
    inv, out = tmp_path / "fleet.ini", tmp_path / "bench"
    inv.write_text("[edgekit]\n" + "\n".join(lines) + "\n")
    p, bench_s, by_host = _bench(inv, out, ssh_args)
    assert p.returncode == 0, p.stdout + p.stderr
    for d in devices:
        assert (f"2 row(s) (model top-1 {expected_top1:.3f}, fallback top-1 "
                f"{expected_top1:.3f})") in by_host[d.user], p.stdout
        assert by_host[d.user].endswith("EMULATED") == (d is devices[1]), p.stdout
    merged = json.loads((out / "results.json").read_text())
    names = [devices[0].user, f"{devices[1].user} (emulated)", devices[2].user]
    assert sorted(r["device"] for r in merged["rows"]) == sorted(names * 2)  # device x variant
    for r in merged["rows"]:
        assert r["top1"] == pytest.approx(expected_top1) and r["images"] == len(PHOTOS) + 1
        assert r["latency_ms"]["p50"] > 0 and r["runs"] >= 20
    envs = {d["device"]: d["environment"] for d in merged["devices"]}
    assert envs[names[1]]["emulated"] == "emulated (inventory flag)"
    assert envs[names[0]]["emulated"] is None and envs[names[2]]["emulated"] is None
    assert all({"board", "governor", "temperature_c", "throttling"} <= set(e)
               for e in envs.values())
    report = (out / "report.md").read_text()
    assert f"| {names[1]} | model |" in report and "**yes**: emulated" in report
    rel = devices[0].ek / "current"
    assert not any((devices[0].ek / "bench").iterdir()) and not (rel / "bench").exists()
    print(f"\nMEASURE deploy of 2 variants + held-out set to 3 devices (parallel): "
          f"{deploy_s:.1f} s")
    print(f"MEASURE bench-fleet of 3 devices in parallel: {bench_s:.1f} s, "
          f"{len(merged['rows'])} rows")
    for r in merged["rows"]:
        print(f"MEASURE {r['device']} {r['variant']} x{r['threads']}: p50 "
              f"{r['latency_ms']['p50']:.2f} ms, top-1 {r['top1']:.3f} on {r['images']} images")
    print("\n".join(f"SUMMARY {ln}" for ln in p.stdout.splitlines()))

    # No release, a failing benchmark, no sshd: one line each, the others go on, exit 1,
    # and the report keeps every device's last results.
    (devices[2].ek / "current").unlink()
    (rel / "heldout" / "index.json").write_text("{")
    taken = {d.port for d in devices}
    closed = next(port for port in range(devices[0].port + 1, 65536) if port not in taken)
    inv.write_text("[edgekit]\n" + "\n".join(lines) + f"\nnodevice ansible_host=127.0.0.1 "
                   f"ansible_port={closed} ansible_user=nobody\n")
    p, bad_s, by_host = _bench(inv, out, ssh_args)
    assert p.returncode == 1, p.stdout + p.stderr
    assert (f"{devices[0].user}: not benchmarked: benchmark failed (status 1): error: "
            "held-out index unreadable") in by_host[devices[0].user], p.stdout
    assert by_host[devices[1].user].endswith("EMULATED"), p.stdout
    assert by_host[devices[2].user].endswith("no release in ~/edgekit/current (deploy one "
                                             "first)"), p.stdout
    assert "unreachable: connection refused" in by_host["nodevice"], p.stdout
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 6
    print(f"MEASURE bench-fleet, 4 hosts in parallel, 3 failing: {bad_s:.1f} s")
    print("\n".join(f"SUMMARY {ln}" for ln in p.stdout.splitlines()))
