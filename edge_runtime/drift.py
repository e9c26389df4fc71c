"""Confidence drift: is the live stream's top-1 still distributed like the validation split?

Convert stores, per exported model file, a compact baseline of that model's own outputs
on the validation split (:func:`make_baseline`: 101 quantiles of the top-1 confidence and
the predicted-class counts). :class:`DriftMonitor` keeps the last ``window`` frames and
compares them with it on two components, each scaled so that 1.0 is its critical value:

* ``confidence``: the Kolmogorov-Smirnov distance between the window's top-1 confidences
  and the baseline's, over the two-sample critical value ``c(alpha) * sqrt(1/n_eff +
  1/n_base)`` (plus the quantile grid's 1/100 resolution). KS needs no binning choice, has
  a distribution-free critical value that is valid at small windows, and the ``1/n_base``
  term says honestly that a 36-image validation split can only show large shifts.
* ``classes``: the homogeneity chi-square of predicted-class frequencies against the
  baseline's (add-1/2 smoothed, so a class never seen in validation is not infinite), as
  ``sqrt(X2 / chi2_crit)`` so that both components grow linearly with the shift.

Video frames are not independent: a camera looking at one object gives hundreds of
near-equal answers, and counted as frames the looping sample video alone reaches twice the
alert line. The effective sample size ``n_eff`` is estimated from runs, as for a two-state
Markov chain: how often the predicted class changes (against ``1 - sum p^2`` of the
baseline's classes) and how often the confidence crosses the window's own median by more
than the noise (against 1/2); a run of equal answers is one scene, so the confidence side
uses the smaller of the two. A static scene counts about once, five 60-frame scenes about
five times, a model flickering between answers (as on unfamiliar images) nearly per frame.
``value`` (the ``edgekit_confidence_drift`` gauge) is the larger component: 0 means like
validation, 1.0 (the default threshold) the critical value. The alert needs ``PERSIST``
consecutive checks at or above the threshold and clears after as many below ``CLEAR``
times it: with ``alpha`` = 0.001 per component and check, that keeps a looping
in-distribution video from alerting over hours (multiple testing over time), while a
shifted stream alerts ``PERSIST - 1`` checks after the statistic first crosses the line.

A third component, ``input``, sees what the outputs cannot: a model *confidently wrong* on
other light or backgrounds (:mod:`edge_runtime.drift_input`). The model input of every
``INPUT_EVERY``-th frame gives three statistics (luminance, saturation, edges), each tested
like ``confidence`` against the quantiles of the training and validation images; ``input``
is the largest. Only ``n_eff`` is counted differently: these statistics follow the scene
(background, light), while per-frame camera jitter makes one scene cross its own median at
almost every frame (counted so, one background looked like 150 draws and the looping
sample video alerted at frame 80). So the window is cut into blocks of about
``INPUT_BLOCK`` frames (1 s at 15 fps), whose means average the jitter out, and ``n_eff``
is one plus the number of blocks whose mean moved from the previous one by more than
``INPUT_SIGMAS`` standard errors (the samples' spread within a block, the window's median)
and by at least ``INPUT_FLOOR`` of the baseline's 10-90 % spread: a new scene
(consecutive moves count once: a change inside a block moves it from both neighbours).
Jitter alone crosses that line about once in 400 block pairs, a static scene counts once,
a window is at most ``window / INPUT_BLOCK`` observations, and the line scales with the
stream, so scenes in dim light still count. With so few observations KS's asymptotic line
is needlessly strict: the input uses Stephens' small-sample form ``c / (sqrt(n) + 0.12 +
0.11 / sqrt(n))``, ``n = 1 / (1 / n_eff + 1 / n_base)``. Rejected on the way, measured on
these videos: the Markov estimate (it counts block-constant scenes half: a field video
wholly outside the baseline went unflagged for 390 frames) and a fixed share of the
baseline's spread (one scene in a dimmed stream). Objects passing over one background
count when they move a statistic beyond the noise: on synthetic streams of five
backgrounds per 300 frames the input reached 0.90 with one object each and 0.80 with four
(3000 frames, 4 seeds), on the looping sample videos 0.43-0.50. The three statistics share
the component's ``alpha`` (Bonferroni: ``alpha / 3`` each, ``c`` = 2.09 instead of 1.95):
per check each component (confidence, classes, input) keeps a false-alarm rate of at most
``alpha``, the value at most ``3 alpha``. A baseline without input statistics (an older
convert) leaves ``input`` None: the two output components work as before.

``update`` is O(1) on the inference thread: a write into the ring buffers under a lock,
plus, on every ``INPUT_EVERY``-th frame when given its model input and the baseline has
input statistics, those statistics on a 32x32 grid (15-35 µs on an idle x86-64 core).
Every ``CHECK_EVERY``-th call also recomputes the statistic, O(window log window) in numpy
(about 0.05 ms at 300 frames, 0.15 ms with the input component). ``snapshot`` returns the
last check's frozen state.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .drift_input import INPUT_STATS, check_input_baseline, input_stats, ks_coefficient
from .errors import EdgekitError

BASELINE_VERSION = 1
QUANTILES = 101
ALPHA = 1e-3
KS_C = math.sqrt(-0.5 * math.log(ALPHA / 2))  # two-sample KS coefficient c(alpha) ~ 1.95
Z_ALPHA = 3.090232  # one-sided standard normal quantile at ALPHA
CHECK_EVERY = 10
PERSIST = 3
CLEAR = 0.8
DEFAULT_THRESHOLD = 1.0
# Confidence moves smaller than this share of the baseline's 10-90 % spread (clipped to
# [HYSTERESIS_MIN, HYSTERESIS_MAX]) are noise, not a new observation (effective_confidence).
HYSTERESIS = 0.05
HYSTERESIS_MIN, HYSTERESIS_MAX = 0.002, 0.02
INPUT_EVERY = 2  # input statistics of every 2nd frame: half the cost, as many scenes
INPUT_BLOCK = 15  # frames averaged before counting the input statistics' scene changes
_BLOCK = INPUT_BLOCK // INPUT_EVERY  # ... in samples
INPUT_SIGMAS = 3.0  # a block mean this many standard errors from the last: a new scene
INPUT_FLOOR = 0.02  # ... and at least this share of the baseline's 10-90 % spread


@dataclass(frozen=True)
class DriftState:
    """The drift statistic at the last check.

    Attributes:
        value: the larger component; 0 = like validation, ``threshold`` = alert line.
        alert: the value stayed at or above ``threshold`` for ``PERSIST`` checks (and has
            not yet stayed below ``CLEAR * threshold`` as long).
        threshold: the alert line.
        window: frames in the window at the check.
        confidence: KS distance of top-1 confidence over its critical value.
        classes: predicted-class chi-square, as sqrt(X2 / critical value).
        effective_confidence: effective sample size used for ``confidence``.
        effective_classes: effective sample size used for ``classes``.
        input: the largest input statistic's KS distance over its critical value (None:
            the baseline has no input statistics, or no frame image came yet).
        input_luminance, input_saturation, input_edges: each statistic's (None: not
            measured).
        effective_input: the smallest effective sample size of the input statistics.
    """

    value: float
    alert: bool
    threshold: float
    window: int
    confidence: float
    classes: float
    effective_confidence: float = 0.0
    effective_classes: float = 0.0
    input: float | None = None
    input_luminance: float | None = None
    input_saturation: float | None = None
    input_edges: float | None = None
    effective_input: float = 0.0

    def components(self) -> dict[str, float]:
        """The measured components by name (``confidence``, ``classes``, ``input_...``),
        for /metrics and /healthz."""
        out = {"confidence": self.confidence, "classes": self.classes}
        for name in INPUT_STATS:
            v = getattr(self, f"input_{name}")
            if v is not None:
                out[f"input_{name}"] = v
        return out


def make_baseline(probs: np.ndarray) -> dict[str, Any]:
    """The baseline of one model from its probabilities on the validation split.

    Args:
        probs: (n, classes) array, the model's own outputs (not the Keras source's: an
            int8 model's confidences are coarser than float's).

    Returns:
        ``{"n", "confidence_quantiles" (101, sorted), "class_counts"}`` (JSON-ready).

    Raises:
        EdgekitError: no images, or not a 2-D array.
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise EdgekitError(f"drift baseline needs (images, classes) scores, got shape "
                           f"{probs.shape}")
    conf = probs.max(1)
    # inverted_cdf: every quantile is a real score, so ties (int8 steps) stay exact.
    q = np.quantile(conf, np.linspace(0, 1, QUANTILES), method="inverted_cdf")
    counts = np.bincount(probs.argmax(1), minlength=probs.shape[1])
    return {"n": int(len(probs)), "confidence_quantiles": [round(float(v), 6) for v in q],
            "class_counts": [int(c) for c in counts]}


def _chi2_critical(df: int) -> float:
    """Upper ALPHA quantile of chi-square with ``df`` degrees (Wilson-Hilferty; within a
    few % above df 1, slightly conservative at df 1)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + Z_ALPHA * math.sqrt(a)) ** 3


def _check_baseline(b: Any) -> tuple[list[float], list[int], int]:
    if not isinstance(b, dict):
        raise EdgekitError(f"drift baseline: expected an object, got {type(b).__name__}")
    try:
        q = [float(v) for v in b["confidence_quantiles"]]
        counts = [int(c) for c in b["class_counts"]]
        n = int(b["n"])
    except KeyError as e:
        raise EdgekitError(f"drift baseline: missing field {e}") from None
    except (TypeError, ValueError) as e:
        raise EdgekitError(f"drift baseline: {e}") from None
    if len(q) < 2 or any(a > b_ for a, b_ in zip(q, q[1:])) or not 0 <= q[0] <= q[-1] <= 1:
        raise EdgekitError("drift baseline: confidence_quantiles must be >= 2 sorted values "
                           "in [0, 1]")
    if not counts or min(counts) < 0 or n < 1:
        raise EdgekitError(f"drift baseline: n {n} and class_counts must be positive")
    return q, counts, n


class DriftMonitor:
    """Compares a sliding window of top-1 answers with one model's validation baseline.

    Thread-safe: ``update`` on the inference thread, ``snapshot`` from any other.
    """

    def __init__(self, baseline: dict, window: int = 300, threshold: float | None = None,
                 bgr: bool = False) -> None:
        """Args:
            baseline: one model's entry (see :func:`make_baseline`; its optional
                ``input`` from :func:`edge_runtime.drift_input.make_input_baseline`).
            window: frames compared (>= 10).
            threshold: alert line for the value (default 1.0, the critical value).
            bgr: the frame images given to :meth:`update` are BGR (the model's colour
                order), not RGB.

        Raises:
            EdgekitError: a malformed baseline, window or threshold.
        """
        q, counts, n = _check_baseline(baseline)
        if not isinstance(window, int) or window < 10:
            raise EdgekitError(f"drift window {window!r}, expected an integer >= 10 frames")
        self.threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        if not self.threshold > 0:
            raise EdgekitError(f"drift threshold {threshold}, expected > 0")
        self.size = window
        self.min_frames = max(10, window // 10)
        self._n_base = n
        self._cdf = StepCDF(np.asarray(q, np.float64))
        self._resolution = 1.0 / len(q)
        spread = q[round(0.9 * (len(q) - 1))] - q[round(0.1 * (len(q) - 1))]
        self._hysteresis = min(HYSTERESIS_MAX, max(HYSTERESIS_MIN, HYSTERESIS * spread))
        smoothed = np.asarray([c + 0.5 for c in counts] + [0.5])  # last: unknown indices
        self._p_base = smoothed / smoothed.sum()
        self._spare = len(counts)
        self._conf = np.zeros(window, np.float64)
        self._cls = np.zeros(window, np.int64)
        self._count = 0  # frames seen; the ring's next slot is count % window
        self._lock = threading.Lock()
        self._above = self._below = 0
        self._alert = False
        self._state = DriftState(0.0, False, self.threshold, 0, 0.0, 0.0)
        self._bgr = bool(bgr)
        self._input = None if baseline.get("input") is None else InputComponent(
            baseline["input"], window)

    @classmethod
    def from_manifest(cls, manifest: Any, window: int = 300, threshold: float | None = None,
                      model: str | None = None) -> DriftMonitor | None:
        """The monitor for a model, or None when its manifest carries no baseline for it.

        Args:
            manifest: a :class:`edge_runtime.manifest.Manifest` or its dict form.
            model: the model's file name, to pick its entry from a ``manifest.json``
                shared by several variants (an embedded manifest holds just its own).
        """
        entry = baseline_for(manifest, model)
        order = getattr(manifest, "color_order", None)
        if order is None and isinstance(manifest, dict):
            order = manifest.get("color_order")
        return None if entry is None else cls(entry, window=window, threshold=threshold,
                                              bgr=order == "BGR")

    def update(self, index: int, score: float, image: np.ndarray | None = None) -> None:
        """Adds one frame's raw top-1 (class index and its score) and, for the input
        component, its model input ``image`` (H, W, 3 uint8 in the model's colour order,
        as preprocessed for it; None: this frame has none): O(1), and every
        ``CHECK_EVERY`` frames one O(window log window) check."""
        if not math.isfinite(score):
            return  # a broken model's NaN says nothing about the scene
        c = index if 0 <= index < self._spare else self._spare
        # The baseline's quantiles are stored to 6 decimals: an int8 model's 0.99609375
        # unrounded sits just below its own baseline value 0.996094 and read as a shift.
        score = round(score, 6)
        stats = None if self._input is None or image is None or \
            self._count % INPUT_EVERY else input_stats(image, self._bgr)
        with self._lock:
            if stats is not None:
                self._input.add(stats)
            slot = self._count % self.size
            self._conf[slot] = score
            self._cls[slot] = c
            self._count += 1
            if self._count % CHECK_EVERY == 0:
                self._state = self._check()

    def snapshot(self) -> DriftState:
        """The state at the last check (every ``CHECK_EVERY`` frames)."""
        with self._lock:
            return self._state

    def _window(self) -> tuple[np.ndarray, np.ndarray]:
        """The window's confidences and classes, oldest first."""
        if self._count <= self.size:
            return self._conf[:self._count], self._cls[:self._count]
        cut = self._count % self.size
        return (np.concatenate([self._conf[cut:], self._conf[:cut]]),
                np.concatenate([self._cls[cut:], self._cls[:cut]]))

    def _check(self) -> DriftState:
        conf, cls = self._window()
        m = len(conf)
        if m < self.min_frames:
            return DriftState(0.0, False, self.threshold, m, 0.0, 0.0)
        freq = np.bincount(cls, minlength=len(self._p_base)) / m
        n_cls = effective_classes(cls, self._p_base)
        # A run of equal answers is one scene: its scores jitter, but it is one draw.
        xs = np.sort(conf)
        median = 0.5 * float(xs[(m - 1) // 2] + xs[m // 2])
        n_conf = min(n_cls, effective_confidence(conf, self._hysteresis, median))
        d_conf = self._cdf.ks(xs, presorted=True) / (
            KS_C * math.sqrt(1 / n_conf + 1 / self._n_base) + self._resolution)
        d_cls = chi2_ratio(freq, self._p_base, n_cls, self._n_base,
                           df=len(self._p_base) - 2 + int(freq[-1] > 0))
        inputs, n_in = ({}, 0.0) if self._input is None else self._input.check(
            self.min_frames)
        d_in = max(inputs.values()) if inputs else None
        value = max(d_conf, d_cls, d_in or 0.0)
        self._update_alert(value)
        return DriftState(round(value, 4), self._alert, self.threshold, m,
                          round(d_conf, 4), round(d_cls, 4), round(n_conf, 1),
                          round(n_cls, 1), None if d_in is None else round(d_in, 4),
                          *(None if k not in inputs else round(inputs[k], 4)
                            for k in INPUT_STATS), round(n_in, 1))

    def _update_alert(self, value: float) -> None:
        if value >= self.threshold:
            self._above, self._below = self._above + 1, 0
        elif value < CLEAR * self.threshold:
            self._above, self._below = 0, self._below + 1
        else:
            self._above = self._below = 0
        if not self._alert and self._above >= PERSIST:
            self._alert = True
        elif self._alert and self._below >= PERSIST:
            self._alert = False


class InputComponent:
    """The input statistics' ring buffer and their tests (the caller holds the lock)."""

    def __init__(self, baseline: Any, window: int) -> None:
        self.n_base, quantiles = check_input_baseline(baseline)
        self.tests = []  # (column, name, cdf, floor, resolution)
        for col, name in enumerate(INPUT_STATS):
            q = quantiles.get(name)
            if q is None:
                continue
            spread = q[round(0.9 * (len(q) - 1))] - q[round(0.1 * (len(q) - 1))]
            # A constant statistic (all-grey training images) still needs a noise floor.
            floor = max(INPUT_FLOOR * spread, 1e-3 * (abs(float(q[len(q) // 2])) + 1.0))
            self.tests.append((col, name, StepCDF(q), floor, 1.0 / len(q)))
        # Bonferroni: the statistics share the component's ALPHA.
        self.c = ks_coefficient(ALPHA / len(self.tests))
        self.size = max(1, window // INPUT_EVERY)
        self.ring = np.zeros((self.size, len(INPUT_STATS)), np.float64)
        self.count = 0

    def add(self, stats: tuple[float, ...]) -> None:
        self.ring[self.count % self.size] = stats
        self.count += 1

    def check(self, min_frames: int) -> tuple[dict[str, float], float]:
        """Each statistic's KS distance over its critical value, and the smallest
        n_eff; nothing before ``min_frames`` frames with an image."""
        if self.count < max(min_frames // INPUT_EVERY, 2 * _BLOCK):
            return {}, 0.0
        if self.count <= self.size:
            rows = self.ring[:self.count]
        else:
            cut = self.count % self.size
            rows = np.concatenate([self.ring[cut:], self.ring[:cut]])
        blocks = len(rows) // _BLOCK
        cut = rows[len(rows) - blocks * _BLOCK:].reshape(blocks, _BLOCK, -1)
        moved = np.abs(np.diff(cut.mean(1), axis=0))
        noise = np.median(cut.std(1), axis=0) * math.sqrt(2 / _BLOCK) * INPUT_SIGMAS
        out, n_min = {}, float(blocks)
        for col, name, cdf, floor, resolution in self.tests:
            xs = np.sort(rows[:, col])
            line = max(float(noise[col]), floor)
            n_eff = 1.0 + scene_changes(moved[:, col] > line)
            n_min = min(n_min, n_eff)
            root = math.sqrt(1 / (1 / n_eff + 1 / self.n_base))
            # Stephens' small-sample form of the KS critical value (see the module).
            out[name] = cdf.ks(xs, presorted=True) / (
                self.c / (root + 0.12 + 0.11 / root) + resolution)
        return out, n_min


def scene_changes(moving: np.ndarray) -> int:
    """Runs of consecutive block-to-block moves: a scene change inside a block moves both
    its neighbours' pairs, and must count once."""
    if not len(moving):
        return 0
    return int(moving[0]) + int(np.count_nonzero(moving[1:] & ~moving[:-1]))


class StepCDF:
    """The baseline's CDF, a step function of its quantile points (each weighs 1/Q)."""

    def __init__(self, quantiles: np.ndarray) -> None:
        q = np.asarray(quantiles, np.float64)
        self.edges = np.unique(q)
        self.at = np.searchsorted(q, self.edges, "right") / len(q)
        self.below = np.searchsorted(q, self.edges, "left") / len(q)

    def ks(self, values: np.ndarray, presorted: bool = False) -> float:
        """sup |F_live - F_base| over all x.

        F_base is constant between its edges and F_live is monotone, so on each interval
        the largest gap is at an end: the supremum is at an edge or just below one.
        """
        xs = values if presorted else np.sort(values)
        m = len(xs)
        live_at = np.searchsorted(xs, self.edges, "right") / m
        live_below = np.searchsorted(xs, self.edges, "left") / m
        return float(max(np.abs(live_at - self.at).max(),
                         np.abs(live_below - self.below).max()))


def ks_distance(values: np.ndarray, quantiles: np.ndarray) -> float:
    """sup |F_live - F_base|, F_base the step function of the baseline quantile points."""
    return StepCDF(quantiles).ks(values)


def _markov_n_eff(changes: int, iid_rate: float, m: int) -> float:
    """Effective sample size of a two-state Markov chain with ``changes`` switches in
    ``m`` steps, against ``iid_rate`` (the switch rate of independent draws).

    With the switch rate ``s`` scaled so independence is 1/2, the lag-1 correlation is
    ``1 - 2s`` and ``n_eff = m (1 - rho) / (1 + rho) = m s / (1 - s)``: one static scene
    counts once, a block of ``k`` scenes about ``k`` times, independent frames ``m`` times.
    """
    if m < 2 or iid_rate <= 0:
        return 1.0
    s = min(0.5, 0.5 * (changes / (m - 1)) / iid_rate)
    return float(min(m, max(1.0, m * s / (1 - s))))


def effective_confidence(conf: np.ndarray, hysteresis: float, median: float | None = None
                         ) -> float:
    """n_eff of a confidence series from its crossings of its own median.

    A crossing counts only when the value moves from below ``median - hysteresis`` to
    above ``median + hysteresis`` or back: sensor noise around one static scene's score
    is not new evidence. The window's own median (not the baseline's) keeps a shifted stream,
    all on one side of the baseline, from looking like one long run.
    """
    med = float(np.median(conf)) if median is None else median
    up = conf > med + hysteresis
    known = up[up | (conf < med - hysteresis)]  # True above the band, False below
    changes = int(np.count_nonzero(known[1:] != known[:-1]))
    return _markov_n_eff(changes, 0.5, len(conf))


def effective_classes(cls: np.ndarray, freq: np.ndarray) -> float:
    """n_eff of a predicted-class series from its class changes, against the change rate
    ``1 - sum p^2`` of independent draws from ``freq``.

    Give it the baseline's frequencies, not the window's: with the window's, a class that
    has just appeared (two frames of sixty) makes independent draws expect almost no
    change, and its one arrival would count as nine independent observations.
    """
    changes = int(np.count_nonzero(cls[1:] != cls[:-1]))
    return _markov_n_eff(changes, float(1.0 - (freq ** 2).sum()), len(cls))


def chi2_ratio(live: np.ndarray, base: np.ndarray, n_live: float, n_base: int, df: int
               ) -> float:
    """``sqrt(X2 / critical)`` of the two-sample chi-square of class frequencies.

    The pooled frequency weighs each side by its (effective) size; the variance of the
    difference counts both samples' noise, so a small validation split widens the band.
    """
    pool = (n_live * live + n_base * base) / (n_live + n_base)
    x2 = float((((live - base) ** 2) / (pool * (1 / n_live + 1 / n_base))).sum())
    return math.sqrt(x2 / _chi2_critical(max(1, df)))


def baseline_for(manifest: Any, model: str | None = None) -> dict | None:
    """One model's baseline entry from a manifest (object or dict), or None.

    ``drift_baseline`` is ``{"version", "split", "models": {file name: entry}}``; with a
    ``model`` name its entry, else the only entry (an embedded manifest's own).
    """
    d = getattr(manifest, "drift_baseline", None)
    if d is None and isinstance(manifest, dict):
        d = manifest.get("drift_baseline")
    if not isinstance(d, dict) or not isinstance(d.get("models"), dict) or not d["models"]:
        return None
    models = d["models"]
    if model is not None:
        name = str(model).replace("\\", "/").rsplit("/", 1)[-1]
        if name in models:
            return models[name]
    return next(iter(models.values())) if len(models) == 1 else None


__all__ = ["DriftMonitor", "DriftState", "baseline_for", "make_baseline"]
