"""The hand-off between the capture thread and inference: :class:`Frame` and the
one-frame :class:`FrameSlot` (newest-only for live sources, lossless for files)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

# Weight of the newest sample in the smoothed timings (frame intervals, conversion cost).
EMA_WEIGHT = 0.2


def ema(average: float | None, sample: float, weight: float = EMA_WEIGHT) -> float:
    """Exponential moving average: ``sample`` itself when there is no average yet."""
    return sample if average is None else (1.0 - weight) * average + weight * sample


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
        # Frames dropped before the frame in the slot (or since the last take, when empty),
        # and skipped frames newer than the one waiting in the slot: each is charged to
        # the frame taken right after it, so that consecutive results' sequence numbers
        # differ by exactly 1 + dropped.
        self._drops_before = 0
        self._drops_after = 0
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
            if self._frame is not None:  # replaced: it and the frames skipped after it
                self._drops_before += 1 + self._drops_after
                self._drops_after = 0
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
            frame.dropped = self._drops_before
            self._drops_before, self._drops_after = self._drops_after, 0
            now = time.monotonic()
            if self.last_take_t is not None:
                self.take_interval = ema(self.take_interval, now - self.last_take_t)
            self.last_take_t = now
            self._cond.notify_all()
            return frame

    def skip(self) -> None:
        """Counts a frame captured but never handed over (not worth converting)."""
        with self._cond:
            if self._frame is None:
                self._drops_before += 1
            else:
                self._drops_after += 1
            self.dropped += 1

    def next_take(self) -> float | None:
        """When the consumer is expected to take its next frame (``time.monotonic()``), or
        None when it is waiting on an empty slot now or its pace is not known yet."""
        with self._cond:
            if self.take_interval is None:
                return None
            if self.waiting:
                # Woken for the frame in the slot but not yet running (the GIL): it takes
                # that one now, and the one after an interval later.
                return None if self._frame is None else time.monotonic() + self.take_interval
            if self.last_take_t is None:
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
