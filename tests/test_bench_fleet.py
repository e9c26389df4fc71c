"""bench-fleet without devices (fast): a release's variants and held-out set, emulation
detection and labelling, the host lines, the merge at home. The SSH end to end is
device_tests/deploy/test_bench_fleet.py."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import environment as envmod
from benchmarks.core import _load_target, release_variants
from benchmarks.plots import emulated_note
from benchmarks.report import to_markdown
from deploy import heldout
from deploy.bench_fleet import HostBench, _host_result, merge_into
from edge_runtime.errors import EdgekitError


def _row(variant: str, device: str = "", emulated: bool = False) -> dict:
    lat = {k: 2.0 for k in ("mean", "std", "min", "p50", "p90", "p99", "max")}
    return {"variant": variant, "threads": 4, "accelerator": "cpu", "latency_ms": lat,
            "top1": 0.75, "size_bytes": 1000, "device": device, "emulated": emulated}


def _results(device: str, emulated: str | None) -> dict:
    return {"schema_version": 2, "kind": "single", "run": "/home/pi/edgekit/current",
            "created": "2026-12-03T00:00:00+00:00", "device": device,
            "environment": {"cpu": "Cortex-A72", "cores": 4, "board": "Raspberry Pi 4",
                            "governor": "ondemand", "emulated": emulated,
                            "temperature_c": 51.2,
                            "throttling": {"throttled_now": True, "now": ["throttled"]}},
            "warnings": [], "rows": [_row("int8", device, bool(emulated)),
                                     _row("fallback-int8", device, bool(emulated))]}


def test_release_variants_are_named_after_their_files(tmp_path):
    for name in ("model.tflite", "model_int8_edgetpu.tflite", "fallback-model_int8.tflite",
                 "labels.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert list(release_variants(tmp_path)) == ["model", "int8_edgetpu", "fallback-int8"]
    (tmp_path / "fallback-model_int8.tflite").rename(tmp_path / "fallback-mobilenet.tflite")
    assert list(release_variants(tmp_path))[-1] == "fallback"


def _run(tmp_path: Path, per_class: int = 4) -> Path:
    """A training run folder with a test split of ``per_class`` images per class."""
    data = tmp_path / "data"
    test = []
    for ci, c in enumerate(("circle", "square")):
        (data / c).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(data / c / f"{i}.jpg"), np.full((8, 8, 3), 40 * i, np.uint8))
            test.append([f"{c}/{i}.jpg", ci])
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "model_int8.tflite").write_bytes(b"x")
    (run / "manifest.json").write_text(json.dumps({
        "labels": ["circle", "square"], "input_size": {"height": 8, "width": 8},
        "data": {"root": str(data), "split": {"train": [], "val": [], "test": test}}}))
    return run


def test_release_carries_a_round_robin_heldout_set_from_the_run(tmp_path):
    run = _run(tmp_path)
    release = tmp_path / "release"
    (release / "model").mkdir(parents=True)
    written = heldout.write(release, run / "export" / "model_int8.tflite", None, limit=5)
    index = json.loads((release / "heldout" / "index.json").read_text())
    assert [ci for _, ci in index["images"]] == [0, 1, 0, 1, 0]  # every class, in turn
    assert index["source"] == str(run) and len(written) == 6
    (release / "release.json").write_text("{}")
    (release / "model" / "model_int8.tflite").write_bytes(b"x")
    found, files, _ = _load_target(release)
    assert list(found) == ["int8"] and [ci for _, ci in files] == [0, 1, 0, 1, 0]
    assert all(p.is_file() for p, _ in files)
    # A model outside a run's export/ has no held-out set: accuracy is not measured there.
    (release / "heldout" / "index.json").unlink()
    assert heldout.write(tmp_path / "r2", release / "model" / "model_int8.tflite", None) == []
    assert _load_target(release)[1] == []


def test_heldout_folder_must_match_the_models_labels(tmp_path):
    model = tmp_path / "m" / "model.tflite"
    model.parent.mkdir()
    model.write_bytes(b"x")
    (model.parent / "labels.txt").write_text("circle\nsquare\n")
    (tmp_path / "h" / "triangle").mkdir(parents=True)
    with pytest.raises(EdgekitError, match="'triangle' is not one of the model's labels"):
        heldout.from_folder(tmp_path / "h", model)


def test_emulation_detection(tmp_path, monkeypatch):
    monkeypatch.setattr(envmod, "_PROC", tmp_path / "proc")
    monkeypatch.setattr(envmod, "_SYS", tmp_path / "sys")
    monkeypatch.delenv("EDGEKIT_EMULATED", raising=False)
    monkeypatch.setattr(envmod.platform, "machine", lambda: "x86_64")
    assert envmod.emulation() is None  # a PC without DMI or device tree: real as far as known
    monkeypatch.setattr(envmod.platform, "machine", lambda: "aarch64")
    assert "no device-tree model" in envmod.emulation()
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_text("Raspberry Pi 4 Model B\0")
    assert envmod.emulation() is None
    (tmp_path / "proc" / "device-tree" / "model").write_text("linux,dummy-virt\0")
    assert "qemu system emulation" in envmod.emulation()
    monkeypatch.setenv("EDGEKIT_EMULATED", "false")  # the inventory says otherwise
    assert envmod.emulation() is None
    monkeypatch.setenv("EDGEKIT_EMULATED", "true")
    assert envmod.emulation() == "emulated (inventory flag)"
    assert envmod.device_label({"board": "Pi", "emulated": "x"}) == "Pi (emulated)"


def test_host_lines(tmp_path):
    ok = {"status": "ok", "rc": 0, "doc": {"release": "r1", "seconds": 3.5,
                                           "results": _results("pi", "qemu")}}
    r, res = _host_result("pi", ok, "")
    assert res is not None and r.line() == ("pi: 2 row(s) (int8 top-1 0.750, fallback-int8 "
                                            "top-1 0.750), release r1, 3.5 s on the device, "
                                            "EMULATED")
    r, res = _host_result("pi", {"status": "ok", "doc": {"error": "no release in x"}}, "")
    assert res is None and r.line() == "pi: not benchmarked: no release in x" and not r.ok
    gone = {"status": "unreachable", "msg": "ssh: connect: Connection refused",
            "addr": "10.0.0.9", "port": 22, "doc": {}}
    assert _host_result("cam", gone, "")[0].line() == (
        "cam: unreachable: connection refused at 10.0.0.9:22 (no sshd there, or another port)")
    late = {"status": "failed", "rc": None, "doc": {},
            "msg": "The script action failed to execute in the expected time frame (660)"}
    assert _host_result("cam", late, "")[0].error.endswith("timed out")
    assert HostBench("x", error="e").line() == "x: e"


def test_merge_labels_emulated_devices_in_tables_and_plots(tmp_path, monkeypatch):
    from benchmarks import plots

    monkeypatch.setattr(plots, "_pyplot", lambda: None)  # drawing costs seconds; see below
    for host, emu in (("pi-real", None), ("pi-qemu (emulated)", "qemu user-mode emulation")):
        (tmp_path / host).mkdir()
        (tmp_path / host / "results.json").write_text(json.dumps(_results(host, emu)))
    report = merge_into(tmp_path)
    merged = json.loads((tmp_path / "results.json").read_text())
    assert len(merged["rows"]) == 4  # one per device x variant
    text = report.read_text()
    assert "| pi-qemu (emulated) | int8 |" in text
    assert "**yes**: qemu user-mode emulation" in text and "| Raspberry Pi 4 | no |" in text
    assert "**yes** (throttled)" in text and "| 51.2 |" in text
    assert emulated_note(merged["rows"]) == "\nEMULATED: pi-qemu (emulated)"
    assert emulated_note(_results("pi", None)["rows"]) == ""
    single = to_markdown({**_results("pi", "qemu"), "settings": {}})
    assert "**Emulated**: qemu" in single


def test_device_step_stops_a_benchmark_at_its_timeout(tmp_path, monkeypatch, coral):
    """bench_remote.py as on a device: the benchmark (and its workers) killed at timeout_s,
    its scratch folder removed, one line saying so."""
    import shutil
    import time

    from deploy import bench_remote

    release = tmp_path / "edgekit" / "releases" / "r1"
    (release / "model").mkdir(parents=True)
    (release / "release.json").write_text("{}")
    shutil.copyfile(coral / "mobilenet_v2_1.0_224_quant.tflite", release / "model" / "m.tflite")
    (tmp_path / "edgekit" / "current").symlink_to(release)
    monkeypatch.setattr(bench_remote, "EK", str(tmp_path / "edgekit"))
    t0 = time.monotonic()
    doc = bench_remote._measure("cam", "auto", "s1", {"runs": 10**7, "timeout_s": 1})
    assert time.monotonic() - t0 < 5
    assert doc == {"release": "r1", "error": "benchmark still running after 1 s (--timeout): "
                                             "stopped"}
    assert not (tmp_path / "edgekit" / "bench" / "s1").exists()
