"""Keeping the frames worth labelling: cheap decisions on the inference thread, the disk
work on a writer thread behind a bounded queue.

Per classified frame, :meth:`Keeper.offer` (inference thread) decides the reasons (see
:class:`KeepPolicy`), checks the source-clock limits and the near-duplicate thumbnail,
and puts the frame's reference on the queue without waiting; everything that touches the
disk (JPEG encoding, the atomic pair, the quota, the model's sha256) happens on the
writer thread. A full queue, a full disk or a failing write drops the frame, counted by
reason and cause; inference never waits for the disk. The capture thread hands over a
fresh image per frame and never writes into it again (see
:class:`edge_runtime.frameslot.Frame`), so the reference is kept without a copy.

Near duplicates: a 16x16 grayscale thumbnail (each pixel the mean of 16 samples, so sensor
noise mostly cancels out; ~0.1 ms at any frame size) of every candidate is compared with
the last kept frame's; a mean absolute difference below ``keep.duplicate_diff`` levels is a
static scene, not a new example. It is made only for a frame about to be kept, and once a
frame was a duplicate, at most every :data:`DUPLICATE_RECHECK_S` of source time: an unsure
answer on a static scene would otherwise pay for a thumbnail on every frame.
"""

from __future__ import annotations

import collections
import errno
import logging
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .classify import top_k
from .errors import EdgekitError
from .fileio import file_sha256
from .keep_settings import REASONS, KeepSettings
from .keepstore import KeepStore, stem_for

log = logging.getLogger(__name__)

CAUSES = ("rate_limit", "duplicate", "queue_full", "disk_full", "write_error")
THUMB = 16  # thumbnail side, pixels
RESCAN_S = 300.0  # an idle writer re-reads the folder (collect may have removed pairs)
DUPLICATE_RECHECK_S = 0.5  # after a duplicate, frames this close are duplicates unchecked
SIDECAR_TOP = 3  # classes in a sidecar's ``top``, as ``classify --json`` prints by default
_WINDOWS = ((60.0, "max_per_minute"), (3600.0, "max_per_hour"), (86400.0, "max_per_day"))


class RateLimiter:
    """Kept frames per minute, hour and day, on the source's clock (seconds)."""

    def __init__(self, settings: KeepSettings) -> None:
        self.windows = [(span, getattr(settings, name), collections.deque())
                        for span, name in _WINDOWS if getattr(settings, name) > 0]

    def allows(self, t: float) -> bool:
        """True when one more frame at source time ``t`` fits every limit."""
        for span, limit, times in self.windows:
            while times and times[0] <= t - span:
                times.popleft()
            if len(times) >= limit:
                return False
        return True

    def record(self, t: float) -> None:
        """Counts a frame kept at ``t``."""
        for _, _, times in self.windows:
            times.append(t)


class KeepPolicy:
    """Which reasons apply to one frame's result.

    Args:
        settings: the ``keep:`` section.
        threshold: ``classify.threshold`` (the decision threshold).
        labels: the model's ``{index: label}``.
        rng: random numbers for the random sample (seedable for tests).

    Raises:
        EdgekitError: ``keep.classes`` names a label the model does not have.
    """

    def __init__(self, settings: KeepSettings, threshold: float, labels: dict[int, str],
                 rng: random.Random | None = None) -> None:
        self.s = settings
        self.threshold = threshold
        self.rng = rng or random.Random()
        names = set(labels.values())
        unknown = [c for c in settings.classes if c not in names and not c.isdigit()]
        if unknown:
            known = ", ".join(sorted(names)[:10]) + (" ..." if len(names) > 10 else "")
            raise EdgekitError(f"keep.classes: unknown label {unknown[0]!r} (the model's "
                               f"labels: {known or 'none; use class numbers'})")
        by_name = {v: k for k, v in labels.items()}
        self.classes = {by_name[c] if c in by_name else int(c) for c in settings.classes}

    def reasons(self, result: Any, drift_alert: bool = False) -> list[str]:
        """The reasons that apply, in :data:`REASONS` order (empty: not kept).

        ``result`` is a :class:`edge_runtime.smoothing.Result` (``raw`` is the model's
        top-1, ``index``/``score`` the smoothed report). The random draw happens on every
        frame, whatever else applies, so ``random`` in a sidecar's reasons marks an
        unbiased sample.
        """
        s, raw, out = self.s, result.raw, []
        if raw is not None and raw.score < s.low_confidence:
            out.append("low_confidence")
        if s.near_threshold > 0 and self.threshold > 0 and \
                abs(result.score - self.threshold) <= s.near_threshold:
            out.append("near_threshold")
        if s.disagreement and raw is not None and result.index is not None and \
                raw.index != result.index:
            out.append("disagreement")
        if self.classes and ((raw is not None and raw.index in self.classes)
                             or result.index in self.classes):
            out.append("class")
        if s.random > 0:
            rate = min(1.0, s.random * (s.drift_boost if drift_alert else 1.0))
            if self.rng.random() < rate:
                out.append("random")
        return out


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A THUMBxTHUMB grayscale float32 thumbnail of a BGR (or gray, BGRA) frame, cheap at
    any size: 4x4 pixels sampled per thumbnail pixel (nearest), then averaged."""
    side = THUMB * 4
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_NEAREST)
    small = cv2.resize(small, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    if small.ndim == 3 and small.shape[2] >= 3:
        small = cv2.cvtColor(small, cv2.COLOR_BGRA2GRAY if small.shape[2] == 4
                             else cv2.COLOR_BGR2GRAY)
    return small.reshape(THUMB, THUMB).astype(np.float32)


@dataclass(frozen=True)
class Job:
    """One frame on its way to the disk (references only; nothing copied)."""

    image: np.ndarray
    scores: np.ndarray
    result: Any
    reasons: tuple[str, ...]
    frame: int
    source_time_s: float
    when: datetime
    drift: float | None
    model_path: Path
    labels: dict[int, str]


class Keeper:
    """Keeps frames worth labelling under ``settings.dir`` (see the module docstring).

    Args:
        settings: the ``keep:`` section (``dir`` set).
        threshold: ``classify.threshold``.
        labels: the model's labels.
        model_path: the model file (its name and sha256 go into each sidecar).
        source: the source as shown everywhere (credentials redacted).
        source_fps: a file's frame rate (its frames are timed frame / fps); None for a
            live source (timed by the capture's monotonic clock).
        store: the :class:`KeepStore` (made from ``settings`` when None; tests inject one).
        rng: random numbers for the random sample.
    """

    def __init__(self, settings: KeepSettings, threshold: float, labels: dict[int, str],
                 model_path: str | Path, source: str, source_fps: float | None,
                 store: KeepStore | None = None, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.policy = KeepPolicy(settings, threshold, labels, rng)
        self.labels = labels
        self.model_path = Path(model_path)
        self.source = source
        self.source_fps = source_fps
        self.device = settings.device or socket.gethostname()
        self.store = store or KeepStore(settings.dir, settings.quota_bytes)
        self.limiter = RateLimiter(settings)
        self._queue: queue.Queue[Job] = queue.Queue(settings.queue)
        self._last_thumb: np.ndarray | None = None
        self._duplicate_until = float("-inf")  # source time
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self.kept: collections.Counter[str] = collections.Counter()
        self.dropped: collections.Counter[tuple[str, str]] = collections.Counter()
        self.failing: str | None = None  # the cause while writes fail (one warning each)
        self._sha: dict[tuple[str, int, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._writer, name="edgekit-keep", daemon=True)

    # -- inference thread --------------------------------------------------------------

    def set_model(self, model_path: str | Path, labels: dict[int, str],
                  threshold: float, settings: KeepSettings | None = None) -> None:
        """A hot reload swapped the model (and maybe the keep policy; ``dir`` stays)."""
        s = settings or self.settings
        self.policy = KeepPolicy(s, threshold, labels, self.policy.rng)
        self.labels, self.model_path = labels, Path(model_path)
        if s != self.settings:
            self.settings, self.limiter = s, RateLimiter(s)

    def source_time(self, frame: Any) -> float:
        """Seconds on the source's clock: a file's frame number / fps (a replay counts as
        the camera saw it), a live frame's capture time."""
        if self.source_fps:
            return frame.seq / self.source_fps
        return frame.t - self._t0

    def offer(self, frame: Any, scores: np.ndarray, result: Any,
              drift: Any = None) -> str | None:
        """Decides whether to keep a classified frame; queues it without waiting.

        Args:
            frame: the :class:`edge_runtime.frameslot.Frame` (``image``, ``seq``, ``t``).
            scores: the model's scores for it (a fresh array, not reused).
            result: its :class:`edge_runtime.smoothing.Result`.
            drift: the latest :class:`edge_runtime.drift.DriftState`, or None.

        Returns:
            The primary reason when queued; None when not kept or dropped.
        """
        reasons = self.policy.reasons(result, bool(drift is not None and drift.alert))
        if not reasons:
            return None
        t = self.source_time(frame)
        if not self.limiter.allows(t):
            return self._drop(reasons[0], "rate_limit")
        thumb = None
        if self.settings.duplicate_diff > 0:
            if t < self._duplicate_until:
                return self._drop(reasons[0], "duplicate")
            thumb = thumbnail(frame.image)
            last = self._last_thumb
            if last is not None and float(np.abs(thumb - last).mean()) < \
                    self.settings.duplicate_diff:
                self._duplicate_until = t + DUPLICATE_RECHECK_S
                return self._drop(reasons[0], "duplicate")
        job = Job(frame.image, scores, result, tuple(reasons), frame.seq, t,
                  datetime.now(timezone.utc), None if drift is None else float(drift.value),
                  self.model_path, self.labels)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return self._drop(reasons[0], "queue_full")
        self.limiter.record(t)
        self._last_thumb = thumb
        return reasons[0]

    def _drop(self, reason: str, cause: str) -> None:
        with self._lock:
            self.dropped[(reason, cause)] += 1
        return None

    # -- writer thread -----------------------------------------------------------------

    def start(self) -> Keeper:
        """Starts the writer thread (it first indexes what the folder already holds)."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Writes what is queued (for at most ``timeout`` s: a stalled disk must not hold
        up a SIGTERM, which stops the daemon within 2 s), then stops the writer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def counts(self) -> dict[str, Any]:
        """Kept and dropped totals, bytes and quota (for /metrics)."""
        with self._lock:
            return {"kept": dict(self.kept), "dropped": dict(self.dropped),
                    "bytes": self.store.bytes, "quota_bytes": self.store.quota_bytes}

    def _scan(self, clean: bool = False) -> None:
        try:
            self.store.scan(clean)
            self.store.enforce()
        except OSError as e:
            log.warning("keep: cannot read %s: %s", self.store.root, e.strerror or e)

    def _writer(self) -> None:
        self._scan(clean=True)
        scanned = time.monotonic()
        while True:
            try:
                job = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                if time.monotonic() - scanned > RESCAN_S:
                    self._scan()
                    scanned = time.monotonic()
                continue
            self._write(job)

    def _write(self, job: Job) -> None:
        """Encodes and writes one pair; a failure is counted, and said once per episode."""
        reason = job.reasons[0]
        try:
            ok, buf = cv2.imencode(".jpg", _bgr(job.image),
                                   [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
            if not ok:
                raise OSError(errno.EIO, "JPEG encoding failed")
            day, stem = stem_for(job.when, job.frame)
            size = self.store.write_pair(day, stem, buf.tobytes(), self._sidecar(job))
        except OSError as e:
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            cause = "disk_full" if full else "write_error"
            with self._lock:
                self.dropped[(reason, cause)] += 1
                first = self.failing != cause
                self.failing = cause
            if first:
                what = "disk full" if full else f"cannot write ({e.strerror or e})"
                log.warning("keep: %s in %s: kept frames are dropped until writes succeed "
                            "(inference goes on)", what, self.store.root)
            return
        removed = self.store.add(f"{day}/{stem}.jpg", size)
        with self._lock:
            self.kept[reason] += 1
            recovered, self.failing = self.failing, None
        if recovered:
            log.info("keep: writing to %s again", self.store.root)
        if removed:
            log.debug("keep: quota: removed %d oldest pairs", len(removed))

    def _sidecar(self, job: Job) -> dict[str, Any]:
        """The JSON sidecar of a kept frame (the field-loop contract's fields)."""
        raw = job.result.raw
        top = top_k(job.scores, min(SIDECAR_TOP, job.scores.shape[-1]), job.labels)
        h, w = job.image.shape[:2]
        return {
            "time": job.when.isoformat(timespec="milliseconds"),
            "source_time_s": round(job.source_time_s, 3),
            "device": self.device,
            "model": job.model_path.name,
            "model_sha256": self._model_sha256(job.model_path),
            "top": [{"index": c.index, "label": c.label, "score": round(c.score, 6)}
                    for c in top],
            "label": job.result.label,
            "raw": None if raw is None else {"index": raw.index, "label": raw.label,
                                             "score": round(raw.score, 6)},
            "reason": job.reasons[0],
            "reasons": list(job.reasons),
            "frame": job.frame,
            "source": self.source,
            "width": int(w),
            "height": int(h),
            "drift": None if job.drift is None else round(job.drift, 6),
        }

    def _model_sha256(self, path: Path) -> str | None:
        """The model file's sha256, computed once per file version (writer thread)."""
        try:
            st = path.stat()
        except OSError:
            return None
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._sha:
            try:
                self._sha[key] = file_sha256(path)
            except OSError:
                return None
        return self._sha[key]


def _bgr(image: np.ndarray) -> np.ndarray:
    """A frame JPEG can hold: BGRA loses its alpha; gray and BGR stay as they are."""
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    return image


def file_fps(path: str, camera_fps: float | None,
             opener: Callable[[str], Any] = cv2.VideoCapture) -> float:
    """A video file's frame rate for the source clock: ``camera.fps`` when set (as a
    realtime replay uses it), else the file's own, else 25."""
    if camera_fps:
        return float(camera_fps)
    cap = opener(path)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()
    return fps if 0 < fps < 10000 else 25.0


__all__ = ["CAUSES", "REASONS", "KeepPolicy", "Keeper", "RateLimiter", "file_fps",
           "thumbnail"]
