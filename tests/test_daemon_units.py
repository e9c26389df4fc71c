"""Daemon building blocks without a model: hand-off, capture lifecycle, smoothing, outputs."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
import types

import numpy as np
import pytest

from edge_runtime import EdgekitError
from edge_runtime.camera import Source, parse_source
from edge_runtime.capture import Capture, Frame, FrameSlot, backoff_delay, valid_frame
from edge_runtime.config import (
    CameraSettings,
    ClassifySettings,
    HttpSettings,
    SmoothingSettings,
    WatchdogSettings,
    load_config,
)
from edge_runtime.doctor import Doctor
from edge_runtime.metrics import Histogram, Metrics
from edge_runtime.outputs import JsonlWriter
from edge_runtime.server import Server
from edge_runtime.smoothing import Smoother, class_mask
from edge_runtime.systemd import Notifier, render_unit

FAST = WatchdogSettings(stall_s=0.3, backoff_initial_s=0.02, backoff_max_s=0.1, jitter=0.2,
                        health_max_age_s=1.0)


def img(value: int = 0) -> np.ndarray:
    return np.full((8, 8, 3), value, np.uint8)


# -- hand-off ---------------------------------------------------------------------------

def test_newest_only_slot_drops_and_counts():
    slot = FrameSlot(lossless=False)
    for i in range(5):
        assert slot.put(Frame(i, img(), time.monotonic()))
    f = slot.get(0.1)
    assert f.seq == 4 and f.dropped == 4 and slot.dropped == 4
    assert slot.get(0.01) is None
    slot.put(Frame(5, img(), time.monotonic()))
    assert slot.get(0.1).dropped == 0


def test_lossless_slot_keeps_every_frame_in_order():
    slot = FrameSlot(lossless=True)
    got = []

    def consume():
        while len(got) < 20:
            f = slot.get(1.0)
            if f is not None:
                got.append((f.seq, f.dropped))
                time.sleep(0.001)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(20):
        assert slot.put(Frame(i, img(), time.monotonic()))
    t.join(5)
    assert got == [(i, 0) for i in range(20)] and slot.dropped == 0


def test_closed_slot_refuses_and_wakes():
    slot = FrameSlot(lossless=True)
    slot.put(Frame(0, img(), 0.0))
    threading.Timer(0.05, slot.close).start()
    t0 = time.monotonic()
    assert slot.put(Frame(1, img(), 0.0)) is False  # was blocked, woken by close
    assert time.monotonic() - t0 < 1.0
    assert slot.get(0.1).seq == 0  # the frame already in stays gettable


def test_backoff_doubles_caps_and_jitters():
    assert backoff_delay(0, 0.5, 30, 0.0) == 0.5
    assert backoff_delay(3, 0.5, 30, 0.0) == 4.0
    assert backoff_delay(50, 0.5, 30, 0.0) == 30.0
    assert backoff_delay(2, 1.0, 30, 0.2, rand=lambda: 0.0) == pytest.approx(3.2)
    assert backoff_delay(2, 1.0, 30, 0.2, rand=lambda: 1.0) == pytest.approx(4.8)


def test_valid_frame():
    assert valid_frame(img()) and valid_frame(np.zeros((4, 4), np.uint8))
    assert not valid_frame(None) and not valid_frame(np.zeros((0, 4, 3), np.uint8))
    assert not valid_frame(np.zeros((4, 4, 3), np.float32))
    assert not valid_frame(np.zeros((4, 4, 2), np.uint8))


# -- capture lifecycle with a fake camera ------------------------------------------------

class FakeCamera:
    """Delivers ``frames`` (None: a failed read) then hangs in read() until released."""

    def __init__(self, frames: list, hang: bool = True) -> None:
        self.frames = list(frames)
        self.hang = hang
        self.released = threading.Event()

    def read(self):
        if self.frames:
            f = self.frames.pop(0)
            time.sleep(0.002)
            return (f is not None), f
        if self.hang:
            self.released.wait(5)  # a wedged driver: read() does not return
        return False, None

    def set(self, *_):
        return False

    def get(self, *_):
        return 0.0

    def release(self):
        self.released.set()


def live() -> Source:
    return Source("camera", 0)


def test_stalled_camera_is_reopened_with_backoff_and_bad_frames_counted():
    cams = [FakeCamera([img(1), np.zeros((0, 0, 3), np.uint8), img(2)]),
            FakeCamera([img(3), img(4)])]
    opens = []

    def opener(source, camera):
        opens.append(time.monotonic())
        if len(opens) in (2, 3):  # the camera is still gone for two attempts
            raise EdgekitError("cannot open video source 0 (camera)")
        return cams.pop(0) if cams else FakeCamera([img(9)] * 3)

    cap = Capture(live(), CameraSettings(), FAST, opener=opener).start()
    seen = []
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (len(seen) < 4 or cap.reconnects < 1):
            f = cap.get(0.05)
            if f is not None:
                seen.append(int(f.image[0, 0, 0]))
    finally:
        cap.stop()
    assert seen[:2] == [1, 2] and 3 in seen and 4 in seen
    assert cap.bad_frames == 1 and cap.stalls >= 1 and cap.reconnects >= 1
    assert len(opens) >= 4 and "cannot open" in (cap.last_error or "")
    gaps = np.diff(opens[1:4])
    assert all(g >= 0.015 for g in gaps)  # backoff waited between attempts


def test_capture_stop_is_fast_even_with_a_wedged_read():
    cap = Capture(live(), CameraSettings(), WatchdogSettings(stall_s=60),
                  opener=lambda s, c: FakeCamera([])).start()
    time.sleep(0.1)
    t0 = time.monotonic()
    cap.stop()
    assert time.monotonic() - t0 < 1.5


def test_bench_simulated_camera_paces_skips_and_decodes(tmp_path):
    from edge_runtime.bench_pipeline import SimCamera, make_video

    video = make_video(tmp_path / "v.avi", frames=5, size=(64, 48))
    for fmt in ("yuyv", "mjpg", "bgr"):
        cam = SimCamera(video, fps=100, fmt=fmt)
        t0 = time.monotonic()
        ok, first = cam.read()
        assert ok and first.shape == (48, 64, 3) and first.dtype == np.uint8
        time.sleep(0.035)  # a camera does not wait: frames due meanwhile are skipped
        assert cam.grab() and cam.index >= 4
        assert cam.grab() and time.monotonic() - t0 >= 0.04
        assert cam.retrieve()[1].shape == (48, 64, 3)
    import cv2

    raw = make_video(tmp_path / "raw.avi", frames=3, size=(64, 48), codec="i420")
    cap = cv2.VideoCapture(str(raw))
    frames = [cap.read()[1] for _ in range(3)]
    assert all(f is not None and f.shape == (48, 64, 3) for f in frames)
    assert not np.array_equal(frames[0], frames[2])  # the shapes move


def test_file_capture_is_lossless_and_ends(tmp_path):
    frames = [img(i) for i in range(30)]
    cap = Capture(Source("file", "x.avi"), CameraSettings(), FAST,
                  opener=lambda s, c: FakeCamera(frames, hang=False)).start()
    got = []
    while not cap.finished:
        f = cap.get(0.05)
        if f is not None:
            got.append((f.seq, int(f.image[0, 0, 0]), f.dropped))
            time.sleep(0.001)
    cap.stop()
    assert got == [(i, i, 0) for i in range(30)] and cap.error is None


def test_capture_thread_prepares_frames_and_counts_the_ones_it_rejects():
    frames = [img(i) for i in range(10)]
    frames[3] = img(200)  # rejected below

    def prepare(bgr):
        if bgr[0, 0, 0] == 200:
            raise ValueError("cannot prepare")
        return bgr[::2, ::2, ::-1].copy()

    cap = Capture(Source("file", "x.avi"), CameraSettings(), FAST,
                  opener=lambda s, c: FakeCamera(frames, hang=False))
    cap.prepare = prepare
    cap.start()
    got = []
    while not cap.finished:
        f = cap.get(0.05)
        if f is not None:
            got.append(f)
    cap.stop()
    assert [int(f.image[0, 0, 0]) for f in got] == [i for i in range(10) if i != 3]
    assert cap.bad_frames == 1
    for f in got:
        np.testing.assert_array_equal(f.input, prepare(f.image))


class GrabCamera:
    """A live camera with grab()/retrieve() at ``fps``, counting conversions."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self.next = time.monotonic()
        self.grabs = self.retrieves = 0

    def grab(self):
        self.next += self.period
        time.sleep(max(0.0, self.next - time.monotonic()))
        self.grabs += 1
        return True

    def retrieve(self):
        self.retrieves += 1
        return True, img(self.grabs % 256)

    def read(self):  # pragma: no cover - the capture thread must use grab/retrieve
        raise AssertionError("read() used on a grab/retrieve camera")

    def set(self, *_):
        return False

    def get(self, *_):
        return 0.0

    def release(self):
        pass


def test_live_capture_converts_only_frames_inference_may_take():
    cam = GrabCamera(fps=400)
    cap = Capture(live(), CameraSettings(), FAST, opener=lambda s, c: cam).start()
    taken, dropped, ages = 0, 0, []
    t_end = time.monotonic() + 1.5
    while time.monotonic() < t_end:
        f = cap.get(0.5)
        assert f is not None
        taken += 1
        dropped += f.dropped
        ages.append(time.monotonic() - f.t)
        time.sleep(0.02)  # inference: 50 fps against a 400 fps camera
    cap.stop()
    # Roughly one conversion per frame taken, not one per frame captured...
    assert cam.retrieves < 0.5 * cam.grabs and cam.retrieves < 2.5 * taken
    # ...every frame captured is either taken or counted as dropped...
    assert cap.captured - (taken + cap.dropped) in (0, 1)  # one may wait in the slot
    assert dropped <= cap.dropped  # the rest came after the last frame taken
    # ...and the frame handed over is still fresh (a few camera periods old).
    assert sorted(ages)[len(ages) // 2] < 0.01


def test_empty_file_is_an_error():
    cap = Capture(Source("file", "x.avi"), CameraSettings(), FAST,
                  opener=lambda s, c: FakeCamera([], hang=False)).start()
    while not cap.finished:
        cap.get(0.05)
    cap.stop()
    assert cap.error is not None and "no frame could be read" in str(cap.error)


def test_picamera2_source_is_imported_only_when_asked(monkeypatch):
    assert parse_source("picamera2").kind == "picamera2"
    assert parse_source("picamera2:1").target == 1
    with pytest.raises(EdgekitError, match="picamera2:N"):
        parse_source("picamera2:x")
    from edge_runtime.camera import open_capture

    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(EdgekitError, match="python3-picamera2"):
        open_capture(parse_source("picamera2"))

    class Cam:
        def __init__(self, index):
            self.index = index

        def create_video_configuration(self, main, controls):
            self.main = main
            return main

        def configure(self, c):
            pass

        def start(self):
            pass

        def capture_array(self, name):
            return np.zeros((self.main["size"][1], self.main["size"][0], 3), np.uint8)

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=Cam))
    cap = open_capture(parse_source("picamera2"), 320, 240, 30)
    ok, frame = cap.read()
    assert ok and frame.shape == (240, 320, 3)


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
    assert 'edgekit_info{backend="ai-edge-litert",version="1.0"} 1' in text
    assert "edgekit_frames_total 3" in text
    assert 'edgekit_inference_seconds_bucket{le="0.005"} 1' in text
    assert 'edgekit_inference_seconds_bucket{le="+Inf"} 3' in text
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+(\{[^}]*\})? [-0-9.e+]+', line), line
    h = Histogram((0.01, 0.1))
    for v in (0.005, 0.05, 0.05, 0.5):
        h.observe(v)
    assert h.quantile(0.5) == 0.1 and h.quantile(0.25) == 0.01


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
    assert "edgekit_fps 20.00" in m.render()
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

        assert status("healthz") == (503, pytest.approx(status("healthz")[1]))
        assert status("healthz")[1]["status"] == "starting"
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
