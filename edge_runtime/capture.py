"""Capture thread: reads frames, hands the newest to inference, reopens a stalled source."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .camera import Source, flip_code, open_capture
from .errors import EdgekitError

log = logging.getLogger(__name__)

# A live source failing this many reads in a row is treated as gone and reopened.
MAX_READ_FAILURES = 50


@dataclass
class Frame:
    """One captured frame.

    Attributes:
        seq: capture sequence number (for a file: the frame's position, counting on
            across loops); gaps between classified frames are frames dropped.
        image: the BGR image (never reused by the capture thread: safe to keep).
        t: ``time.monotonic()`` when the read returned.
        dropped: frames captured and replaced by a newer one since the previous hand-off.
        input: the frame already preprocessed for the model by the capture thread (see
            :attr:`Capture.prepare`), or None.
    """

    seq: int
    image: np.ndarray
    t: float
    dropped: int = 0
    input: np.ndarray | None = None


class FrameSlot:
    """Hand-off between the capture thread and inference.

    Newest-only (live sources): ``put`` replaces a frame not yet taken and counts it as
    dropped, so inference always gets the latest frame and never waits for a backlog.
    Lossless (files): ``put`` waits until the previous frame is taken, so every frame is
    classified in order, while the next one is decoded in parallel with inference.
    """

    def __init__(self, lossless: bool) -> None:
        self.lossless = lossless
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._pending_drops = 0
        self._closed = False
        self.dropped = 0
        self.waiting = False  # a get() is waiting on an empty slot
        self.last_take_t: float | None = None
        self.take_interval: float | None = None  # smoothed time between takes, seconds

    def put(self, frame: Frame) -> bool:
        """Offers a frame; returns False when the slot is closed."""
        with self._cond:
            if self.lossless:
                while self._frame is not None and not self._closed:
                    self._cond.wait(0.1)
            if self._closed:
                return False
            if self._frame is not None:
                self._pending_drops += 1
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Frame | None:
        """The newest frame not yet taken, waiting up to ``timeout`` s; None if none came."""
        with self._cond:
            if self._frame is None:
                self.waiting = True
                try:
                    self._cond.wait_for(lambda: self._frame is not None or self._closed,
                                        timeout)
                finally:
                    self.waiting = False
            frame = self._frame
            if frame is None:
                return None
            self._frame = None
            frame.dropped, self._pending_drops = self._pending_drops, 0
            now = time.monotonic()
            if self.last_take_t is not None:
                gap = now - self.last_take_t
                self.take_interval = gap if self.take_interval is None else \
                    0.8 * self.take_interval + 0.2 * gap
            self.last_take_t = now
            self._cond.notify_all()
            return frame

    def skip(self) -> None:
        """Counts a frame captured but never handed over (not worth converting)."""
        with self._cond:
            self._pending_drops += 1
            self.dropped += 1

    def next_take(self) -> float | None:
        """When the consumer is expected to take its next frame (``time.monotonic()``), or
        None when it is waiting now or its pace is not known yet."""
        with self._cond:
            if self.waiting or self.last_take_t is None or self.take_interval is None:
                return None
            return self.last_take_t + self.take_interval

    @property
    def pending(self) -> bool:
        """True while a frame waits to be taken."""
        return self._frame is not None

    def close(self) -> None:
        """Wakes every waiter; later puts are refused (a frame already in stays gettable)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def valid_frame(img: Any) -> bool:
    """True for a non-empty uint8 image with 1, 3 or 4 channels."""
    return (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.size > 0
            and (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3, 4))))


def backoff_delay(attempt: int, initial: float, maximum: float, jitter: float,
                  rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with +-``jitter`` (a fraction): ``initial * 2**attempt``, capped."""
    base = min(maximum, initial * (2.0 ** min(attempt, 30)))
    return max(0.0, base * (1.0 + jitter * (2.0 * rand() - 1.0)))


class Capture:
    """Reads a source on a background thread and keeps the newest frame for inference.

    A supervisor thread watches the reader: a live source that delivers no new frame for
    ``stall_s`` (or that ends, or fails :data:`MAX_READ_FAILURES` reads in a row) is
    abandoned and reopened after an exponential backoff with jitter, forever, until
    :meth:`stop`. A bad frame (empty, wrong type) is counted in ``bad_frames`` and skipped.
    A reader stuck inside ``read()`` is left behind (it releases its capture if it ever
    returns), so a wedged driver cannot block recovery.

    Args:
        source: the parsed source.
        camera: :class:`edge_runtime.config.CameraSettings` (size, fps, flip, loop, realtime).
        watchdog: :class:`edge_runtime.config.WatchdogSettings` (stall and backoff timings).
        opener: opens a capture (injectable for tests): ``opener(source, camera)``.

    Attributes:
        prepare: optional ``prepare(bgr) -> model input``, run on the capture thread for
            every frame as it arrives, so the resize overlaps the previous ``invoke()``
            instead of following it; a frame it rejects (``cv2.error``, ``ValueError``)
            is counted in ``bad_frames``. Set it before :meth:`start` or at any time.
    """

    def __init__(self, source: Source, camera: Any, watchdog: Any,
                 opener: Callable[[Source, Any], Any] | None = None) -> None:
        self.source = source
        self.camera = camera
        self.watchdog = watchdog
        self._opener = opener or _default_opener
        self.lossless = not source.live and not camera.realtime
        self.slot = FrameSlot(self.lossless)
        self._stop = threading.Event()
        self._gen = 0
        self._flip = flip_code(camera.flip)
        self._seq = 0
        self._session_frames = 0
        self._supervisor: threading.Thread | None = None
        self.captured = 0
        self.bad_frames = 0
        self.reconnects = 0
        self.stalls = 0
        self.last_frame_t = time.monotonic()
        self.heartbeat_t = time.monotonic()
        self.state = "starting"
        self.last_error: str | None = None
        self.ended = False
        self.error: EdgekitError | None = None
        self.prepare: Callable[[np.ndarray], np.ndarray] | None = None
        self._grab_t: float | None = None
        self._grab_interval: float | None = None  # smoothed, seconds
        self._convert_s = 0.0  # smoothed retrieve + prepare time, seconds

    @property
    def dropped(self) -> int:
        """Frames replaced by a newer one before inference took them."""
        return self.slot.dropped

    def start(self) -> Capture:
        """Opens the source (raising on failure) and starts the capture thread.

        Raises:
            EdgekitError: the source cannot be opened.
        """
        cap = self._opener(self.source, self.camera)
        self.state = "running"
        self._supervisor = threading.Thread(target=self._supervise, args=(cap,),
                                            name="edgekit-capture", daemon=True)
        self._supervisor.start()
        return self

    def get(self, timeout: float = 0.25) -> Frame | None:
        """The newest frame, or None after ``timeout`` s (check :attr:`finished`)."""
        return self.slot.get(timeout)

    @property
    def finished(self) -> bool:
        """True when a file has ended (or failed) and its last frame was taken."""
        return (self.ended or self.error is not None) and not self.slot.pending

    def stop(self, timeout: float = 1.0) -> None:
        """Stops the threads and releases the capture (waits up to ``timeout`` s)."""
        self._stop.set()
        self.slot.close()
        if self._supervisor is not None:
            self._supervisor.join(timeout)

    # -- threads ---------------------------------------------------------------------

    def _supervise(self, cap: Any) -> None:
        attempt = 0
        while not self._stop.is_set():
            done = threading.Event()
            self._gen += 1
            self._session_frames = 0
            self.last_frame_t = time.monotonic()
            reader = threading.Thread(target=self._read, args=(cap, self._gen, done),
                                      name=f"edgekit-reader-{self._gen}", daemon=True)
            reader.start()
            why = self._watch(done)
            if why == "stop":
                self._gen += 1
                done.wait(0.5)
                return
            self._gen += 1  # abandon the reader; it releases its capture when it returns
            if self._session_frames:
                attempt = 0
            if not self.source.live and not self.camera.loop and why == "ended":
                self.ended = True
                if self.captured == 0:
                    self.error = EdgekitError(f"no frame could be read from "
                                              f"{self.source.target!r}; is it a video?")
                self.slot.close()
                return
            if why == "stalled":
                self.stalls += 1
                log.warning("video source %r: no new frame for %.1f s; reopening",
                            self.source.target, self.watchdog.stall_s)
            cap = self._reopen(attempt)
            attempt += 1
            if cap is None:
                return

    def _watch(self, done: threading.Event) -> str:
        """Waits until the reader ends ("ended"), stalls ("stalled") or we stop ("stop")."""
        while not self._stop.is_set():
            self.heartbeat_t = time.monotonic()
            if done.wait(0.1):
                return "stop" if self._stop.is_set() else "ended"
            if not self.lossless and \
                    time.monotonic() - self.last_frame_t > self.watchdog.stall_s:
                return "stalled"
        return "stop"

    def _reopen(self, attempt: int) -> Any:
        """Opens the source again after a backoff; None when stopped first."""
        w = self.watchdog
        self.state = "reconnecting"
        while not self._stop.is_set():
            delay = backoff_delay(attempt, w.backoff_initial_s, w.backoff_max_s, w.jitter)
            log.warning("reopening video source %r in %.2f s (attempt %d)",
                        self.source.target, delay, attempt + 1)
            end = time.monotonic() + delay
            while not self._stop.is_set() and time.monotonic() < end:
                self.heartbeat_t = time.monotonic()
                self._stop.wait(min(0.1, max(0.0, end - time.monotonic())))
            if self._stop.is_set():
                return None
            try:
                cap = self._opener(self.source, self.camera)
            except EdgekitError as e:
                self.last_error = str(e)
                attempt += 1
                continue
            except Exception as e:  # noqa: BLE001 - a driver error must not end the daemon
                self.last_error = f"{type(e).__name__}: {e}"
                attempt += 1
                continue
            self.reconnects += 1
            self.state = "running"
            log.warning("video source %r reopened", self.source.target)
            return cap
        return None

    def _read(self, cap: Any, gen: int, done: threading.Event) -> None:
        failures = 0
        pace = self._pace_interval(cap)
        next_t = time.monotonic()
        # Newest-only sources with grab()/retrieve() (OpenCV's): grab every frame, but
        # convert (retrieve + prepare) only the ones inference may take.
        lazy = not self.lossless and callable(getattr(cap, "grab", None)) and \
            callable(getattr(cap, "retrieve", None))
        self._grab_t, self._grab_interval, self._convert_s = None, None, 0.0
        try:
            while not self._stop.is_set() and gen == self._gen:
                if lazy:
                    ok, img = bool(cap.grab()), None
                else:
                    ok, img = cap.read()
                if gen != self._gen or self._stop.is_set():
                    break
                if not ok or (img is None and not lazy):
                    if not self.source.live:
                        if self.camera.loop and self._session_frames > 0:
                            if cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                                continue
                        break  # end of file (a loop that cannot rewind: reopened)
                    failures += 1
                    if failures >= MAX_READ_FAILURES:
                        self.last_error = f"{failures} failed reads in a row"
                        break
                    time.sleep(0.01)
                    continue
                failures = 0
                if pace:
                    next_t += pace
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                    else:
                        next_t = time.monotonic()
                t = time.monotonic()
                if lazy:
                    self._note_grab(t)
                    if not self._worth_converting(t):
                        self._count(t)
                        self.slot.skip()
                        continue
                    ok, img = cap.retrieve()
                    if not ok:
                        img = None
                if not valid_frame(img):
                    self.bad_frames += 1
                    continue
                if self._flip is not None:
                    img = cv2.flip(img, self._flip)
                prepared = None
                prepare = self.prepare
                if prepare is not None:
                    try:
                        prepared = prepare(img)
                    except (cv2.error, ValueError):
                        self.bad_frames += 1
                        continue
                frame = Frame(self._seq, img, t, input=prepared)
                self._count(t)
                if lazy:
                    spent = time.monotonic() - t
                    self._convert_s = spent if not self._convert_s else \
                        0.8 * self._convert_s + 0.2 * spent
                if not self.slot.put(frame):
                    break
        except Exception as e:  # noqa: BLE001 - reported, and the source is reopened
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("video source %r: %s", self.source.target, self.last_error)
        finally:
            try:
                cap.release()
            except Exception:  # noqa: BLE001, S110 - releasing a broken capture
                pass
            done.set()

    def _count(self, t: float) -> None:
        """Counts one frame captured at ``t``."""
        self._seq += 1
        self._session_frames += 1
        self.captured += 1
        self.last_frame_t = t

    def _note_grab(self, t: float) -> None:
        """Tracks the smoothed interval between grabbed frames."""
        if self._grab_t is not None:
            gap = t - self._grab_t
            self._grab_interval = gap if self._grab_interval is None else \
                0.8 * self._grab_interval + 0.2 * gap
        self._grab_t = t

    def _worth_converting(self, now: float) -> bool:
        """False when a newer frame is expected, converted, before inference takes the
        next one: this one would only be replaced, so its conversion would be wasted.

        True whenever inference is waiting or the timings are not known yet; the margin
        of half a frame interval keeps a late frame from making inference wait.
        """
        take = self.slot.next_take()
        period = self._grab_interval
        if take is None or period is None:
            return True
        return now + 1.5 * period + self._convert_s >= take

    def _pace_interval(self, cap: Any) -> float:
        """Seconds between frames for a ``realtime`` file (0: read as fast as possible)."""
        if self.source.live or not self.camera.realtime:
            return 0.0
        fps = self.camera.fps
        if not fps:
            try:
                fps = float(cap.get(cv2.CAP_PROP_FPS))
            except Exception:  # noqa: BLE001 - unknown rate
                fps = 0.0
        return 1.0 / fps if fps and fps > 0 else 1.0 / 25.0


def _default_opener(source: Source, camera: Any) -> Any:
    return open_capture(source, camera.width, camera.height, camera.fps,
                        camera.open_timeout_s, camera.read_timeout_s)
