"""Scores to a reported label: allow/deny lists, moving average, threshold with hysteresis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .classify import Class, top_k
from .errors import EdgekitError


@dataclass(frozen=True)
class Result:
    """What one frame reports.

    Attributes:
        index: the reported class (None below the threshold or when nothing is allowed).
        label: its label (None likewise).
        score: the reported class's (smoothed) score; when nothing is reported, the best
            allowed smoothed score.
        top: the best ``top_k`` allowed classes, smoothed scores.
        raw: the model's own top class on this frame, unsmoothed and unfiltered.
        changed: the reported label differs from the previous frame's.
    """

    index: int | None
    label: str | None
    score: float
    top: list[Class] = field(default_factory=list)
    raw: Class | None = None
    changed: bool = False


def class_mask(labels: dict[int, str], num_classes: int, allow: tuple[str, ...] = (),
               deny: tuple[str, ...] = ()) -> np.ndarray:
    """A boolean vector: True for classes that may be reported.

    ``allow`` and ``deny`` name labels (or class numbers, for a model with no labels).

    Raises:
        EdgekitError: a name that is not one of the model's labels.
    """
    by_name = {name: i for i, name in labels.items()}

    def lookup(name: str, which: str) -> int:
        if name in by_name:
            return by_name[name]
        if name.isdigit() and int(name) < num_classes:
            return int(name)
        known = ", ".join(list(by_name)[:10]) + (" ..." if len(by_name) > 10 else "")
        raise EdgekitError(f"classify.{which}: unknown label {name!r} (the model's labels: "
                           f"{known or 'none; use class numbers'})")

    mask = np.ones(num_classes, bool)
    if allow:
        mask[:] = False
        mask[[lookup(n, "allow") for n in allow]] = True
    if deny:
        mask[[lookup(n, "deny") for n in deny]] = False
    return mask


class Smoother:
    """Turns per-frame scores into a steady reported label.

    Scores of classes not allowed are zeroed; the rest are averaged over the last
    ``window`` frames. The reported label switches to a new class only when that class's
    average beats the current one's by ``hysteresis`` and reaches ``threshold``; the
    current label is dropped (null) only when its average falls below
    ``threshold - hysteresis``. With ``window=1`` and ``hysteresis=0`` this is the plain
    "best class if its score reaches the threshold".

    Args:
        labels: ``{index: label}``.
        num_classes: length of the score vector.
        classify: :class:`edge_runtime.settings.ClassifySettings` (top_k, threshold, lists).
        smoothing: :class:`edge_runtime.settings.SmoothingSettings` (window, hysteresis).
    """

    def __init__(self, labels: dict[int, str], num_classes: int, classify: Any,
                 smoothing: Any) -> None:
        self.labels = labels
        self.top_k = classify.top_k
        self.threshold = classify.threshold
        self.hysteresis = smoothing.hysteresis
        self.mask = class_mask(labels, num_classes, classify.allow, classify.deny)
        self._all_allowed = bool(self.mask.all())
        self._buf = np.zeros((smoothing.window, num_classes), np.float32)
        self._pos = 0
        self._count = 0
        self.current: int | None = None

    def label(self, i: int) -> str:
        """The label of class ``i`` (its number when the model has no labels)."""
        return self.labels.get(i, str(i))

    def __call__(self, scores: np.ndarray) -> Result:
        """Adds one frame's scores; returns what to report."""
        raw_i = int(scores.argmax())
        raw = Class(raw_i, self.label(raw_i), float(scores[raw_i]))
        masked = scores if self._all_allowed else np.where(self.mask, scores, 0.0)
        if len(self._buf) == 1:
            avg = masked
        else:
            self._buf[self._pos] = masked
            self._pos = (self._pos + 1) % len(self._buf)
            self._count = min(self._count + 1, len(self._buf))
            avg = self._buf[:self._count].mean(axis=0)
        # Per frame on the inference thread: no work the common case does not need.
        best = raw_i if avg is scores else int(avg.argmax())
        best_score = float(avg[best])
        cur = self.current
        if cur is not None and avg[cur] < self.threshold - self.hysteresis:
            cur = None
        if self.mask[best] and best_score >= self.threshold and best != cur:
            if cur is None or best_score >= float(avg[cur]) + self.hysteresis:
                cur = best
        changed = cur != self.current
        self.current = cur
        if self.top_k == 1 and self.mask[best]:
            top = [Class(best, self.label(best), best_score)]
        else:
            ranked = avg if self._all_allowed else np.where(self.mask, avg, -1.0)
            top = top_k(ranked, self.top_k, self.labels, 0.0)
        if cur is None:
            return Result(None, None, best_score, top, raw, changed)
        return Result(cur, self.label(cur), float(avg[cur]), top, raw, changed)
