"""Daemon building blocks without a model: smoothing, outputs, HTTP, systemd, doctor."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import EdgekitError
from edge_runtime.config import load_config
from edge_runtime.doctor import Doctor
from edge_runtime.metrics import Metrics
from edge_runtime.outputs import JsonlWriter
from edge_runtime.server import Server
from edge_runtime.settings import ClassifySettings, HttpSettings, SmoothingSettings
from edge_runtime.smoothing import Smoother, class_mask
from edge_runtime.systemd import Notifier, render_unit


def img(value: int = 0) -> np.ndarray:
    return np.full((8, 8, 3), value, np.uint8)


# -- smoothing, allow/deny ---------------------------------------------------------------

LABELS = {0: "cat", 1: "dog", 2: "bird"}


def smoother(window=1, hysteresis=0.0, threshold=0.0, allow=(), deny=(), top_k=1):
    return Smoother(LABELS, 3, ClassifySettings(top_k=top_k, threshold=threshold, allow=allow,
                                                deny=deny),
                    SmoothingSettings(window=window, hysteresis=hysteresis))


def test_no_smoothing_is_plain_thresholded_argmax():
    s = smoother(threshold=0.5)
    r = s(np.array([0.2, 0.7, 0.1], np.float32))
    assert (r.index, r.label, r.score) == (1, "dog", pytest.approx(0.7)) and r.changed
    r = s(np.array([0.4, 0.3, 0.3], np.float32))
    assert r.label is None and r.score == pytest.approx(0.4) and r.changed


def test_smoothing_with_hysteresis_does_not_flicker():
    flicker = [np.array([0.55, 0.45, 0.0] if i % 2 else [0.45, 0.55, 0.0], np.float32)
               for i in range(20)]
    plain = smoother(threshold=0.3)
    assert sum(plain(x).changed for x in flicker) == 20
    s = smoother(window=4, hysteresis=0.1, threshold=0.3)
    labels = [s(x).label for x in flicker]
    assert len(set(labels)) == 1  # one label, never flickers
    # A real change still comes through, after the window catches up.
    r = [s(np.array([0.05, 0.05, 0.9], np.float32)) for _ in range(4)]
    assert r[-1].label == "bird" and sum(x.changed for x in r) == 1


def test_allow_and_deny_lists():
    s = smoother(deny=("dog",), top_k=3)
    r = s(np.array([0.2, 0.7, 0.1], np.float32))
    assert r.label == "cat" and r.raw.label == "dog"
    assert [c.label for c in r.top] == ["cat", "bird"]
    s = smoother(allow=("bird",), threshold=0.5)
    assert s(np.array([0.2, 0.7, 0.1], np.float32)).label is None
    assert s(np.array([0.1, 0.1, 0.8], np.float32)).label == "bird"
    with pytest.raises(EdgekitError, match="unknown label 'cow'.*cat, dog, bird"):
        class_mask(LABELS, 3, allow=("cow",))
    assert class_mask({}, 3, deny=("1",)).tolist() == [True, False, True]


@pytest.mark.parametrize("settings", [{}, {"deny": ("dog",)}, {"window": 3},
                                      {"allow": ("cat", "bird"), "window": 2}])
def test_top1_shortcut_reports_what_the_full_ranking_does(settings):
    rng = np.random.default_rng(7)
    fast, full = smoother(top_k=1, **settings), smoother(top_k=3, **settings)
    for _ in range(50):
        x = rng.dirichlet(np.ones(3)).astype(np.float32)
        a, b = fast(x), full(x)
        assert (a.index, a.score, a.raw) == (b.index, b.score, b.raw)
        assert a.top == b.top[:1]


# -- outputs -----------------------------------------------------------------------------

def test_jsonl_rotation_keeps_backups(tmp_path):
    path = tmp_path / "logs" / "r.jsonl"
    w = JsonlWriter(str(path), max_bytes=200, backups=2)
    for i in range(40):
        w.write({"frame": i, "label": "x" * 10})
    w.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["r.jsonl", "r.jsonl.1", "r.jsonl.2"]
    assert all(p.stat().st_size <= 200 for p in path.parent.iterdir())
    last = [json.loads(x)["frame"] for x in path.read_text().splitlines()]
    assert last[-1] == 39


def test_metrics_text_format():
    m = Metrics({"backend": "ai-edge-litert", "version": "1.0"})
    for v in (0.004, 0.012, 0.3):
        m.observe(v, v * 1.05, v * 2)
    text = m.render()
    assert 'edgekit_info{backend="ai-edge-litert",version="1.0"} 1.0' in text.splitlines()
    assert "edgekit_frames_total 3.0" in text.splitlines()
    assert 'edgekit_inference_seconds_bucket{le="0.005"} 1.0' in text.splitlines()
    assert 'edgekit_inference_seconds_bucket{le="0.015"} 2.0' in text.splitlines()
    assert 'edgekit_inference_seconds_bucket{le="+Inf"} 3.0' in text.splitlines()
    assert "edgekit_inference_seconds_sum 0.316" in text.splitlines()
    assert "edgekit_frame_age_seconds_count 3.0" in text.splitlines()
    assert "edgekit_seconds_since_last_result -1.0" not in text  # a result was observed
    # The standard process metrics come with the library (resident memory, CPU, files).
    rss = [ln for ln in text.splitlines() if ln.startswith("process_resident_memory_bytes ")]
    assert rss and float(rss[0].split()[1]) > 10e6, rss
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(r'\w+(\{[^}]*\})? [-0-9.e+]+', line), line
    assert "edgekit_seconds_since_last_result -1.0" in Metrics().render().splitlines()


def test_fps_is_shown_from_the_second_frame_and_drops_to_zero_when_results_stop(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    m = Metrics()
    m.observe(0.01, 0.01, 0.01)
    assert m.fps == 0.0  # one frame is no rate
    for _ in range(5):  # 20 fps
        clock[0] += 0.05
        m.observe(0.01, 0.01, 0.01)
    assert m.fps == pytest.approx(20.0)
    assert "edgekit_fps 20.0" in m.render().splitlines()
    clock[0] += 3.0  # the camera stalled: no stale rate
    assert m.fps == 0.0


def test_healthz_fails_without_a_fresh_result():
    m = Metrics()
    srv = Server(HttpSettings(enabled=True, port=0), m, lambda: {"capture": "running"},
                 health_max_age_s=0.2).start()
    try:
        import urllib.error
        import urllib.request

        def status(path):
            try:
                with urllib.request.urlopen(srv.url + path, timeout=5) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        code, doc = status("healthz")
        assert code == 503 and doc["status"] == "starting" and doc["capture"] == "running"
        assert status("latest")[0] == 503
        m.observe(0.01, 0.01, 0.01)
        srv.publish(img(), {"label": "cat", "score": 0.9})
        assert status("healthz")[0] == 200 and status("latest")[1]["label"] == "cat"
        time.sleep(0.3)
        code, doc = status("healthz")
        assert code == 503 and doc["status"] == "stale"
        assert status("nope")[0] == 404
    finally:
        srv.stop()


# -- systemd -----------------------------------------------------------------------------

def test_sd_notify_ready_and_watchdog(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000",
                      "WATCHDOG_PID": str(os.getpid())})
        assert n.active and n.watchdog_s == pytest.approx(0.2)
        assert n.ready("up")
        assert sock.recv(256) == b"READY=1\nSTATUS=up"
        assert n.watchdog(now=100.0) and not n.watchdog(now=100.05)  # rate-limited
        assert n.watchdog(now=100.2)
        assert sock.recv(64) == b"WATCHDOG=1" and sock.recv(64) == b"WATCHDOG=1"
        n.close()
    finally:
        sock.close()
    other = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    assert other.watchdog_s is None  # the watchdog is meant for another process
    assert not Notifier({}).active and not Notifier({}).ready()
    assert Notifier({"NOTIFY_SOCKET": "@edgekit-test"}).address == b"\0edgekit-test"


def test_unit_template_renders(tmp_path):
    from tests.conftest import ROOT

    text = render_unit(ROOT / "device_configs/desktop.yaml", python="/opt/venv/bin/python",
                       user="pi")
    assert "Type=notify" in text and "WatchdogSec=" in text and "Restart=always" in text
    assert f"ExecStart=/opt/venv/bin/python -m edge_runtime run --config " \
           f"{ROOT / 'device_configs/desktop.yaml'}" in text
    assert "User=pi" in text and not re.search(r"@[A-Z]+@", text)


def test_unit_documentation_names_a_file_that_exists(tmp_path):
    """From a checkout the unit's Documentation= is the daemon's guide; a deployed release
    has no docs, so the line is left out rather than naming a missing file."""
    from tests.conftest import ROOT

    text = render_unit(ROOT / "device_configs/desktop.yaml", workdir=ROOT)
    docs = re.findall(r"^Documentation=file://(.+)$", text, re.M)
    assert docs == [str(ROOT / "deploy/README.md")] and Path(docs[0]).is_file()
    release = render_unit(ROOT / "device_configs/desktop.yaml", workdir=tmp_path)
    assert "Documentation=" not in release and "[Unit]" in release
    assert "Description=" in release


# -- doctor ------------------------------------------------------------------------------

def fake_root(tmp_path, speed="480"):
    usb = tmp_path / "sys/bus/usb/devices/2-1"
    usb.mkdir(parents=True)
    (usb / "idVendor").write_text("18d1\n")
    (usb / "idProduct").write_text("9302\n")
    (usb / "speed").write_text(speed + "\n")
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("Raspberry Pi 5 Model B Rev 1.0\0")
    cpu = tmp_path / "sys/devices/system/cpu/cpu0/cpufreq"
    cpu.mkdir(parents=True)
    (cpu / "scaling_governor").write_text("powersave\n")
    tz = tmp_path / "sys/class/thermal/thermal_zone0"
    tz.mkdir(parents=True)
    (tz / "temp").write_text("83500\n")
    (tmp_path / "dev").mkdir()
    return tmp_path


def test_doctor_reads_board_coral_throttling(tmp_path):
    root = fake_root(tmp_path)
    checks = {c.name: c for c in Doctor(None, root, run=lambda cmd: "throttled=0x50005\n",
                                        edgetpu_loader=lambda d: object()).run_all()}
    assert "Raspberry Pi 5" in checks["board"].detail
    assert checks["coral_usb"].status == "warn" and "USB 3" in checks["coral_usb"].fix
    assert checks["cpu_governor"].status == "warn" and "performance" in checks["cpu_governor"].fix
    assert checks["throttling"].status == "warn" and "under-voltage now" in \
        checks["throttling"].detail
    assert checks["temperature"].status == "warn" and "83.5" in checks["temperature"].detail
    assert checks["edgetpu"].status == "ok"
    assert all(c.status != "fail" for c in checks.values())
    assert all("\n" not in c.line() for c in checks.values())


def test_doctor_warns_when_no_camera_is_there_unless_the_source_needs_none(tmp_path):
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)

    def camera(cfg):
        return next(c for c in Doctor(cfg, root, run=lambda cmd: None,
                                      edgetpu_loader=lambda d: object()).run_all()
                    if c.name == "camera")

    none = camera(None)
    assert (none.status, none.detail) == ("warn", "no /dev/video* devices") and none.fix
    prof = tmp_path / "p.yaml"
    (tmp_path / "clip.avi").touch()
    prof.write_text(f"camera:\n  source: {tmp_path / 'clip.avi'}\n")
    file = camera(load_config(prof, environ={}))
    assert file.status == "ok" and "the profile's source: file" in file.detail
    (root / "dev" / "video0").touch()
    assert (camera(None).status, camera(None).detail) == ("ok", "/dev/video0")


def test_doctor_fails_what_the_profile_needs(tmp_path):
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    prof = tmp_path / "p.yaml"
    prof.write_text("model:\n  path: nope.tflite\n  delegate: edgetpu\ncamera:\n"
                    "  source: /dev/video3\n")

    def no_tpu(device):
        raise EdgekitError("Edge TPU delegate did not load (libedgetpu.so.1)")

    checks = {c.name: c for c in Doctor(load_config(prof, environ={}), root,
                                        run=lambda cmd: None, edgetpu_loader=no_tpu).run_all()}
    failed = {n for n, c in checks.items() if c.status == "fail"}
    assert failed == {"edgetpu", "coral_usb", "camera", "model"}
    assert "/dev/video3 not found" in checks["camera"].detail and checks["camera"].fix
