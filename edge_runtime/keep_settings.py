"""Profile sections of the field loop: ``keep:`` (frames worth labelling) and ``drift:``.

Kept apart from :mod:`edge_runtime.config` (which loads them like every other section)
only to keep that file short; the same rules apply: typed, documented, validated.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import brief

REASONS = ("low_confidence", "near_threshold", "disagreement", "class", "random")


@dataclass(frozen=True)
class KeepSettings:
    """Keeping frames worth labelling on the device (off unless ``dir`` is set).

    A frame is kept for every reason that applies (the sidecar lists them; ``reason`` is
    the first in :data:`REASONS` order); each reason is switched off by its zero value.
    Limits count kept frames on the source's own clock (a file: frame number / fps, so a
    replay keeps what the camera would have; a live camera: its monotonic time).

    Attributes:
        dir: the keep folder, ``~`` expanded (None: keeping is off).
        device: the name written in each sidecar (None: the hostname).
        low_confidence: keep when the model's top-1 score is below this (0: off).
        near_threshold: keep when the reported (smoothed) score is within this of
            ``classify.threshold`` (0: off; also off while the threshold is 0).
        disagreement: keep when the model's raw top-1 differs from the smoothed label.
        classes: keep every frame whose raw top-1 or reported label is one of these.
        random: the share of frames kept at random, whatever their scores (0: off); the
            unbiased sample that finds confidently wrong answers.
        drift_boost: ``random`` is multiplied by this while drift is flagged.
        max_per_minute: kept frames per source minute at most (0: no limit).
        max_per_hour: per source hour at most (0: no limit).
        max_per_day: per source day at most (0: no limit).
        quota_mb: the keep folder's size at most, MiB; the oldest pairs are removed first.
        duplicate_diff: a frame whose 16x16 grayscale thumbnail differs from the last
            kept one's by less than this mean absolute difference (0..255 levels) is a
            near duplicate of a static scene and not kept (0: off).
        jpeg_quality: JPEG quality of kept frames, 1..100.
        queue: frames waiting for the writer thread at most; more are dropped
            (``queue_full``) rather than slowing inference.
    """

    dir: str | None = None
    device: str | None = None
    low_confidence: float = 0.5
    near_threshold: float = 0.05
    disagreement: bool = True
    classes: tuple[str, ...] = ()
    random: float = 0.01
    drift_boost: float = 5.0
    max_per_minute: int = 6
    max_per_hour: int = 120
    max_per_day: int = 1000
    quota_mb: float = 500.0
    duplicate_diff: float = 3.0
    jpeg_quality: int = 90
    queue: int = 16

    def __post_init__(self) -> None:
        for name in ("low_confidence", "near_threshold", "random"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} {brief(v)}, expected 0..1")
        if self.drift_boost < 1.0:
            raise ValueError(f"drift_boost {brief(self.drift_boost)}, expected >= 1")
        for name in ("max_per_minute", "max_per_hour", "max_per_day"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {brief(getattr(self, name))}, expected >= 0 "
                                 "(0: no limit)")
        if self.quota_mb <= 0:
            raise ValueError(f"quota_mb {brief(self.quota_mb)}, expected > 0")
        if not 0.0 <= self.duplicate_diff <= 255.0:
            raise ValueError(f"duplicate_diff {brief(self.duplicate_diff)}, expected 0..255")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality {brief(self.jpeg_quality)}, expected 1..100")
        if self.queue < 1:
            raise ValueError(f"queue {brief(self.queue)}, expected >= 1")
        if self.dir is not None and not self.dir.strip():
            raise ValueError("dir is empty; expected a folder (or null: keeping off)")

    @property
    def enabled(self) -> bool:
        """True when a keep folder is set."""
        return self.dir is not None

    @property
    def quota_bytes(self) -> int:
        """``quota_mb`` in bytes."""
        return int(self.quota_mb * 1024 * 1024)


@dataclass(frozen=True)
class DriftSettings:
    """Confidence drift: the live window of top-1 scores and classes against the
    validation split's baseline stored in the model (``drift_baseline``).

    Attributes:
        enabled: watch drift (nothing happens for a model without a baseline).
        window: frames in the live window.
        threshold: the drift value that raises the alert (None: the monitor's default,
            1.0, the statistic's critical value).
    """

    enabled: bool = True
    window: int = 300
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.window < 10:
            raise ValueError(f"window {brief(self.window)}, expected >= 10")
        if self.threshold is not None and self.threshold <= 0:
            raise ValueError(f"threshold {brief(self.threshold)}, expected > 0 (or null: "
                             "the default, 1.0)")
