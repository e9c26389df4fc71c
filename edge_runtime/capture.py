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
from .frameslot import Frame, FrameSlot, ema
from .redact import redact

log = logging.getLogger(__name__)

# A live source failing this many reads in a row is treated as gone and reopened.
MAX_READ_FAILURES = 50

def valid_frame(img: Any) -> bool:
    """True for a non-empty uint8 image with 1, 3 or 4 channels."""
    return (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.size > 0
            and (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3, 4))))


def backoff_delay(attempt: int, initial: float, maximum: float, jitter: float,
                  rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with +-``jitter`` (a fraction): ``initial * 2**attempt``, capped."""
    base = min(maximum, initial * (2.0 ** min(attempt, 30)))
    return max(0.0, base * (1.0 + jitter * (2.0 * rand() - 1.0)))


@dataclass
class _Pass:
    """One reader's state over one opening of the source (for a looped file: one play)."""

    pace: float  # seconds between frames for a realtime file (0: as fast as read)
    expected: int  # frames the file says it has (0: unknown, or a live source)
    next_t: float = 0.0
    reads: int = 0  # frames read in this play of the file
    failures: int = 0  # failed reads in a row (live sources)


class Capture:
    """Reads a source on a background thread and keeps the newest frame for inference.

    A supervisor thread watches the reader: a live source that delivers no new frame for
    ``stall_s`` (or that ends, or fails :data:`MAX_READ_FAILURES` reads in a row) is
    abandoned and reopened after an exponential backoff with jitter, forever, until
    :meth:`stop`. A bad frame (empty, wrong type) is counted in ``bad_frames`` and skipped.
    A file that ends before the frame count its header declares (a damaged or truncated
    file) has the missing frames counted in ``unreadable`` (and in ``bad_frames``), with a
    warning. A reader stuck inside ``read()`` is left behind (it releases its capture if
    it ever returns), so a wedged driver cannot block recovery.

    Args:
        source: the parsed source.
        camera: :class:`edge_runtime.settings.CameraSettings` (size, fps, flip, loop, realtime).
        watchdog: :class:`edge_runtime.settings.WatchdogSettings` (stall and backoff timings).
        opener: opens a capture (injectable for tests): ``opener(source, camera)``.

    Attributes:
        prepare: optional ``prepare(bgr) -> model input``, run on the capture thread for
            every frame as it arrives, so the resize overlaps the previous ``invoke()``
            instead of following it; a frame it rejects (``cv2.error``, ``ValueError``)
            is counted in ``bad_frames``. Set it before :meth:`start` or at any time.
        last_error: the last problem with the source, credentials redacted (it is shown
            on ``/healthz``); None before the first.
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
        self.unreadable = 0
        self.reconnects = 0
        self.stalls = 0
        self.last_frame_t = time.monotonic()
        self.heartbeat_t = time.monotonic()
        self.state = "starting"
        self._last_error: str | None = None
        self.ended = False
        self.error: EdgekitError | None = None
        self.prepare: Callable[[np.ndarray], np.ndarray] | None = None
        self._grab_t: float | None = None
        self._grab_interval: float | None = None  # smoothed, seconds
        self._convert_s: float | None = None  # smoothed retrieve + prepare time, seconds

    @property
    def last_error(self) -> str | None:
        """The last problem with the source (credentials redacted), or None."""
        return self._last_error

    @last_error.setter
    def last_error(self, text: str | None) -> None:
        # Redacted when stored: /healthz, /latest and /metrics read it as it is.
        self._last_error = None if text is None else redact(text)

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

    # -- supervisor --------------------------------------------------------------------

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
                                              f"{self.source.display}; is it a video?")
                self.slot.close()
                return
            if why == "stalled":
                self.stalls += 1
                log.warning("video source %s: no new frame for %.1f s; reopening",
                            self.source.display, self.watchdog.stall_s)
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
            log.warning("reopening video source %s in %.2f s (attempt %d)",
                        self.source.display, delay, attempt + 1)
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
            except Exception as e:  # a driver error must not end the daemon
                self.last_error = f"{type(e).__name__}: {e}"
                attempt += 1
                continue
            self.reconnects += 1
            self.state = "running"
            log.warning("video source %s reopened", self.source.display)
            return cap
        return None

    # -- reader ------------------------------------------------------------------------

    def _read(self, cap: Any, gen: int, done: threading.Event) -> None:
        """The reader thread: frames from ``cap`` into the slot until the source ends,
        fails, is abandoned (``gen`` is no longer current) or we stop."""
        # Newest-only sources with grab()/retrieve() (OpenCV's): grab every frame, but
        # convert (retrieve + prepare) only the ones inference may take.
        lazy = not self.lossless and callable(getattr(cap, "grab", None)) and \
            callable(getattr(cap, "retrieve", None))
        p = _Pass(self._pace_interval(cap), self._frame_count(cap), next_t=time.monotonic())
        self._grab_t = self._grab_interval = self._convert_s = None
        try:
            while self._current(gen):
                ok, img = (bool(cap.grab()), None) if lazy else cap.read()
                if not self._current(gen):
                    break
                if not ok or (img is None and not lazy):
                    if self._failed_read(cap, p):
                        continue
                    break
                p.failures = 0
                p.reads += 1
                self._wait_pace(p)
                frame = self._convert(cap, img, time.monotonic(), lazy)
                if frame is not None and not self.slot.put(frame):
                    break
        except Exception as e:  # reported, and the source is reopened
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("video source %s: %s", self.source.display, self.last_error)
        finally:
            try:
                cap.release()
            except Exception:  # releasing a broken capture
                pass
            done.set()

    def _current(self, gen: int) -> bool:
        """True while the reader of generation ``gen`` should go on."""
        return gen == self._gen and not self._stop.is_set()

    def _failed_read(self, cap: Any, p: _Pass) -> bool:
        """Handles a read that returned no frame; True to read again, False to end.

        A file has ended (a looped one is rewound when it can be); a live source is given
        :data:`MAX_READ_FAILURES` tries in a row before it is reopened.
        """
        if not self.source.live:
            self._end_of_play(p)
            if self.camera.loop and self._session_frames > 0 and \
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                p.reads = 0
                return True
            return False  # end of file (a loop that cannot rewind: reopened)
        p.failures += 1
        if p.failures >= MAX_READ_FAILURES:
            self.last_error = f"{p.failures} failed reads in a row"
            return False
        time.sleep(0.01)
        return True

    def _end_of_play(self, p: _Pass) -> None:
        """Counts the frames a file declared but never delivered (damaged or truncated)."""
        missing = p.expected - p.reads
        if p.expected <= 0 or missing <= 0:
            return
        first = self.unreadable == 0
        self.unreadable += missing
        self.bad_frames += missing
        self.last_error = (f"{missing} of {p.expected} frames of {self.source.display} "
                           "could not be read (damaged or truncated file)")
        if first:  # a looped file would say it again on every play
            log.warning("video source %s: %d of %d frames could not be read (damaged or "
                        "truncated file); %d read", self.source.display, missing,
                        p.expected, p.reads)

    def _wait_pace(self, p: _Pass) -> None:
        """Holds a ``realtime`` file's frame until it is due (a late one resets the clock)."""
        if not p.pace:
            return
        p.next_t += p.pace
        delay = p.next_t - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)
        else:
            p.next_t = time.monotonic()

    def _convert(self, cap: Any, img: Any, t: float, lazy: bool) -> Frame | None:
        """The frame read at ``t``, flipped and prepared; None when it is skipped (not
        worth converting: counted as dropped) or bad (counted in ``bad_frames``)."""
        if lazy:
            self._note_grab(t)
            if not self._worth_converting(t):
                self._count(t)
                self.slot.skip()
                return None
            ok, img = cap.retrieve()
            if not ok:
                img = None
        if not valid_frame(img):
            self.bad_frames += 1
            return None
        if self._flip is not None:
            img = cv2.flip(img, self._flip)
        prepared = None
        prepare = self.prepare
        if prepare is not None:
            try:
                prepared = prepare(img)
            except (cv2.error, ValueError):
                self.bad_frames += 1
                return None
        self._count(t)
        if lazy:
            self._convert_s = ema(self._convert_s, time.monotonic() - t)
        return Frame(self._seq - 1, img, t, input=prepared)

    def _count(self, t: float) -> None:
        """Counts one frame captured at ``t``."""
        self._seq += 1
        self._session_frames += 1
        self.captured += 1
        self.last_frame_t = t

    def _note_grab(self, t: float) -> None:
        """Tracks the smoothed interval between grabbed frames."""
        if self._grab_t is not None:
            self._grab_interval = ema(self._grab_interval, t - self._grab_t)
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
        return now + 1.5 * period + (self._convert_s or 0.0) >= take

    def _pace_interval(self, cap: Any) -> float:
        """Seconds between frames for a ``realtime`` file (0: read as fast as possible)."""
        if self.source.live or not self.camera.realtime:
            return 0.0
        fps = self.camera.fps or _cap_property(cap, cv2.CAP_PROP_FPS)
        return 1.0 / fps if fps and fps > 0 else 1.0 / 25.0

    def _frame_count(self, cap: Any) -> int:
        """The frame count a file's header declares (0: unknown, or a live source)."""
        if self.source.live:
            return 0
        n = _cap_property(cap, cv2.CAP_PROP_FRAME_COUNT)
        return int(n) if 0 < n < 2**31 else 0


def _cap_property(cap: Any, prop: int) -> float:
    """``cap.get(prop)``, 0 when the capture cannot say."""
    try:
        return float(cap.get(prop))
    except Exception:  # unknown property or a broken capture
        return 0.0


def _default_opener(source: Source, camera: Any) -> Any:
    return open_capture(source, camera.width, camera.height, camera.fps,
                        camera.open_timeout_s, camera.read_timeout_s)
