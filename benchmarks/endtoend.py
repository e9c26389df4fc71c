"""End-to-end: the camera pipeline over a video source, as a live camera would feed it.

A capture thread opens the source with edge_runtime's camera code and publishes each to a
one-slot buffer (a file is paced at its frame rate, like a camera; live sources pace
themselves). The classifier always takes the newest frame, so when inference is slower
than the camera, frames are overwritten unseen: those are *dropped*. Per classified frame:

- ``latency_ms``: frame captured (read by OpenCV) -> scores available;
- ``frame_age_ms``: frame captured -> classification starts (time spent waiting);
- ``fps``: classified frames per second of wall time.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.camera import open_capture, parse_source
from edge_runtime.classify import Classifier
from edge_runtime.errors import EdgekitError
from edge_runtime.preprocess import bgr_to_rgb

from .measure import percentiles


class _Slot:
    """The newest captured frame; overwriting an unconsumed frame counts a drop."""

    def __init__(self) -> None:
        """An empty slot."""
        self.cond = threading.Condition()
        self.frame: tuple[int, float, np.ndarray] | None = None
        self.captured = 0
        self.dropped = 0
        self.done = False
        self.error: BaseException | None = None

    def put(self, item: tuple[int, float, np.ndarray]) -> None:
        """Publishes a frame, replacing (and counting as dropped) one not yet taken."""
        with self.cond:
            if self.frame is not None:
                self.dropped += 1
            self.frame = item
            self.captured += 1
            self.cond.notify()

    def take(self) -> tuple[int, float, np.ndarray] | None:
        """The newest frame, waiting for one; None once the source has ended."""
        with self.cond:
            while self.frame is None and not self.done:
                self.cond.wait(0.5)
            item, self.frame = self.frame, None
            return item


def source_fps(source: str) -> float | None:
    """The frame rate a video file declares, or None."""
    import cv2

    cap = open_capture(parse_source(source))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()
    return fps if 0.0 < fps < 1000.0 else None


def measure_end_to_end(model: str | Path, source: str, threads: int | None = None,
                       max_frames: int | None = 60, fps: float | None = None,
                       edgetpu: bool | str = False) -> dict[str, Any]:
    """Runs the camera pipeline on ``source`` and measures what a live deployment sees.

    Args:
        model: the ``.tflite`` file.
        source: anything ``edge_runtime run --source`` takes (file, camera index, URL).
        threads: interpreter threads.
        max_frames: stop after this many captured frames (None or 0: the whole source).
        fps: pace a file at this rate; None: the file's own rate (30 when it has none);
            0: unpaced, as fast as frames decode.
        edgetpu: run on the Edge TPU delegate.

    Returns:
        source, paced_fps, frames_captured, frames_processed, frames_dropped, seconds,
        fps, latency_ms {...}, frame_age_ms {...}, inference_ms {...}.

    Raises:
        EdgekitError: the source cannot be opened or yields no frame.
    """
    src = parse_source(source)
    clf = Classifier(model, threads=threads, edgetpu=edgetpu)
    pace = None
    if not src.live:
        pace = (source_fps(source) or 30.0) if fps is None else (fps or None)
    limit = max_frames or None
    slot = _Slot()

    def capture() -> None:
        """Capture thread: reads, paces and publishes frames until the end."""
        cap = None
        try:
            cap = open_capture(src)
            t0 = time.perf_counter()
            n = failures = 0
            while limit is None or n < limit:
                ok, frame = cap.read()
                if not ok or frame is None:
                    failures += 1
                    if not src.live or failures >= 30:
                        break
                    continue
                failures = 0
                if pace:
                    delay = t0 + n / pace - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                slot.put((n, time.perf_counter(), frame))
                n += 1
        except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
            slot.error = e
        finally:
            if cap is not None:
                cap.release()
            with slot.cond:
                slot.done = True
                slot.cond.notify()

    reader = threading.Thread(target=capture, name="edgekit-e2e-capture", daemon=True)
    # One untimed inference so the first frame does not pay for lazy initialisation.
    clf.scores(np.zeros((*clf.input_size, 3), np.uint8))
    reader.start()
    latency: list[float] = []
    age: list[float] = []
    infer: list[float] = []
    first = last = None  # completion times of the first and last classified frames
    while True:
        item = slot.take()
        if item is None:
            break
        _, captured, frame = item
        started = time.perf_counter()
        clf.scores(bgr_to_rgb(frame))
        done = time.perf_counter()
        first = done if first is None else first
        last = done
        age.append((started - captured) * 1000.0)
        latency.append((done - captured) * 1000.0)
        infer.append(clf.last_invoke_ms)
    reader.join()
    if slot.error is not None:
        if isinstance(slot.error, EdgekitError):
            raise slot.error
        raise EdgekitError(f"video source {source!r} failed: {slot.error}")
    if not latency:
        raise EdgekitError(f"no frame could be read from {source!r}")
    # n results span n - 1 intervals between the first and the last result.
    seconds = (last - first) if first is not None and last is not None else 0.0
    return {"source": str(source), "paced_fps": pace, "threads": threads,
            "frames_captured": slot.captured, "frames_processed": len(latency),
            "frames_dropped": slot.dropped, "seconds": round(seconds, 3),
            "fps": (len(latency) - 1) / seconds if seconds > 0 else 0.0,
            "latency_ms": percentiles(latency), "frame_age_ms": percentiles(age),
            "inference_ms": percentiles(infer)}
