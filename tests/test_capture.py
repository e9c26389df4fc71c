"""Capture without a model: the frame hand-off, the capture thread's lifecycle, sources."""

from __future__ import annotations

import re
import sys
import threading
import time
import types

import numpy as np
import pytest

from edge_runtime import EdgekitError
from edge_runtime.camera import Source, parse_source
from edge_runtime.capture import Capture, backoff_delay, valid_frame
from edge_runtime.frameslot import Frame, FrameSlot
from edge_runtime.settings import CameraSettings, WatchdogSettings
from tests.conftest import FakeCamera, run_cli

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


def test_frames_skipped_after_a_waiting_frame_are_charged_to_the_next_one():
    slot = FrameSlot(lossless=False)
    slot.skip()                              # seq 0 skipped
    slot.put(Frame(1, img(), 0.0))           # seq 1 waits in the slot
    slot.skip()                              # seq 2, 3: newer than 1, skipped
    slot.skip()
    assert slot.get(0.1).dropped == 1        # only seq 0 came before seq 1
    slot.put(Frame(4, img(), 0.0))
    assert slot.get(0.1).dropped == 2        # seq 2 and 3
    slot.put(Frame(5, img(), 0.0))
    slot.skip()                              # seq 6
    slot.put(Frame(7, img(), 0.0))           # replaces 5: 5 and 6 dropped before 7
    assert slot.get(0.1).dropped == 2 and slot.dropped == 5  # seq 0, 2, 3, 5, 6


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
                seen.append((int(f.image[0, 0, 0]), f.dropped))
    finally:
        cap.stop()
    values = [v for v, _ in seen]
    assert values == sorted(values), seen  # in order, across the reconnect
    # A live source keeps only the newest frame, so a busy consumer may miss 1 or 3; a
    # frame before a stall stays until taken (2, 4), and each one missed is counted.
    assert 2 in values and 4 in values, seen
    assert sum(1 + d for v, d in seen if v <= 2) == 2, seen  # 1 and 2: the bad one is not
    assert sum(1 + d for v, d in seen if 3 <= v <= 4) == 2, seen
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


class FakeClock:
    """``time.monotonic``/``time.sleep`` on a clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def test_bench_simulated_camera_paces_skips_and_decodes(tmp_path, monkeypatch):
    import benchmarks.pipeline as pipeline
    from benchmarks.pipeline import SimCamera, make_video

    video = make_video(tmp_path / "v.avi", frames=5, size=(64, 48))
    clock = FakeClock()  # exact times: a loaded machine's late wake-ups change nothing
    monkeypatch.setattr(pipeline, "time", clock)
    for fmt in ("yuyv", "mjpg", "bgr"):
        cam = SimCamera(video, fps=100, fmt=fmt)
        t0 = clock.now
        ok, first = cam.read()  # waits for the first frame due, 10 ms on
        assert ok and first.shape == (48, 64, 3) and first.dtype == np.uint8
        assert (cam.index, clock.now - t0) == (1, pytest.approx(0.010))
        clock.sleep(0.035)  # a camera does not wait: frames due meanwhile are skipped
        assert cam.grab() and (cam.index, clock.now - t0) == (5, pytest.approx(0.050))
        assert cam.grab() and (cam.index, clock.now - t0) == (6, pytest.approx(0.060))
        assert cam.retrieve()[1].shape == (48, 64, 3)
    monkeypatch.undo()
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
    taken, dropped, behind = 0, 0, []
    t_end = time.monotonic() + 1.5
    while time.monotonic() < t_end:
        f = cap.get(0.5)
        assert f is not None
        taken += 1
        dropped += f.dropped
        behind.append(cap.captured - 1 - f.seq)  # newer frames captured when it was taken
        time.sleep(0.02)  # inference: 50 fps against a 400 fps camera
    cap.stop()
    # Roughly one conversion per frame taken, not one per frame captured...
    assert cam.retrieves < 0.5 * cam.grabs and cam.retrieves < 2.5 * taken
    # ...every frame captured is either taken or counted as dropped...
    assert cap.captured - (taken + cap.dropped) in (0, 1)  # one may wait in the slot
    assert dropped <= cap.dropped  # the rest came after the last frame taken
    # ...and the frame handed over is still fresh: a few camera frames behind the newest
    # (counted in frames, not milliseconds, so that a loaded machine does not fail it).
    assert sorted(behind)[len(behind) // 2] <= 4, behind


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


# -- damaged files -----------------------------------------------------------------------

def damaged_video(tmp_path, frames: int = 60):
    """An MJPG AVI whose second half (bytes) is overwritten with noise."""
    from benchmarks.pipeline import make_video

    path = make_video(tmp_path / "damaged.avi", frames=frames, size=(64, 48))
    data = bytearray(path.read_bytes())
    half = len(data) // 2
    data[half:] = np.random.default_rng(0).integers(0, 256, len(data) - half, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_damaged_file_counts_and_reports_unreadable_frames(tmp_path, caplog):
    path = damaged_video(tmp_path)
    cap = Capture(parse_source(str(path)), CameraSettings(), FAST).start()
    got = 0
    deadline = time.monotonic() + 20
    with caplog.at_level("WARNING", logger="edge_runtime.capture"):
        while not cap.finished and time.monotonic() < deadline:
            got += cap.get(0.05) is not None
        cap.stop()
    assert cap.finished and cap.error is None
    assert 10 < got < 60 and cap.unreadable == 60 - got  # every frame read or counted
    assert cap.bad_frames == cap.unreadable
    assert f"{60 - got} of 60 frames could not be read" in caplog.text
    assert f"{60 - got} of 60 frames" in cap.last_error
    from edge_runtime.metrics import Metrics

    m = Metrics()
    m.capture = cap
    text = m.render()
    assert re.search(rf"^edgekit_bad_frames_total {60 - got}(\.0)?$", text, re.M)
    assert re.search(rf"^edgekit_frames_unreadable_total {60 - got}(\.0)?$", text, re.M)


def test_intact_file_has_no_unreadable_frames(tmp_path):
    from benchmarks.pipeline import make_video

    path = make_video(tmp_path / "ok.avi", frames=20, size=(64, 48))
    cap = Capture(parse_source(str(path)), CameraSettings(loop=False), FAST).start()
    got = 0
    deadline = time.monotonic() + 20
    while not cap.finished and time.monotonic() < deadline:
        got += cap.get(0.05) is not None
    cap.stop()
    assert got == 20 and cap.unreadable == 0 and cap.last_error is None


def test_daemon_final_line_says_frames_were_unreadable(tmp_path, coral):

    path = damaged_video(tmp_path)
    r = run_cli("edge_runtime", "run", "--model",
                str(coral / "mobilenet_v2_1.0_224_quant.tflite"), "--source", str(path),
                "--output", str(tmp_path / "r.jsonl"), timeout=120)
    assert r.returncode == 0, r.stderr
    done = [ln for ln in r.stderr.splitlines() if ln.startswith("done:")]
    classified = int(done[0].split()[1])
    assert done[0].endswith(f"; {60 - classified} frames could not be read (damaged or "
                            "truncated file)"), done
    assert f"{60 - classified} of 60 frames could not be read" in r.stderr  # the warning


def test_looped_damaged_file_counts_every_play_and_warns_once(tmp_path, caplog):
    path = damaged_video(tmp_path)
    with caplog.at_level("WARNING", logger="edge_runtime.capture"):
        cap = Capture(parse_source(str(path)), CameraSettings(loop=True), FAST).start()
        deadline = time.monotonic() + 20
        plays = 0
        while time.monotonic() < deadline and plays < 3:
            cap.get(0.05)
            m = re.search(r"(\d+) of 60 frames", cap.last_error or "")
            plays = cap.unreadable // int(m.group(1)) if m else 0
        cap.stop()
    missing = int(m.group(1))
    assert plays >= 3 and cap.unreadable % missing == 0  # each play counted in full
    assert caplog.text.count("frames could not be read") == 1  # said once, not per play
