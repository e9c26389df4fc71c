"""Input drift: is the camera still showing pictures like the training images?

A model that meets other light or other backgrounds is often *confidently wrong*: its
top-1 scores and classes look like validation, so :mod:`edge_runtime.drift`'s output
components cannot see the shift. Three cheap statistics of the model's own input image
(after the runtime's preprocessing, before normalisation) can:

* ``luminance``: mean luma Y (BT.601, 0-255): exposure, low light.
* ``saturation``: mean chroma ``|Cr - 128| + |Cb - 128|`` over mean luma: colour casts and
  saturated backgrounds, independent of exposure.
* ``edges``: mean absolute luma step between neighbouring grid points: texture, stripes,
  sensor noise, blur.

They are read on a fixed 32x32 nearest-neighbour grid of the input (one resize, one colour
conversion, four reductions in OpenCV: 15-35 µs per frame on an idle x86-64 core, whatever
the input size).
The baseline (:func:`make_input_baseline`) holds their 101 quantiles over the training and
validation images: these statistics do not involve the model, so unlike its outputs they
carry no fitting bias on training images, and the wider sample shrinks the baseline's own
sampling noise (the ``1/n_base`` term of the test) from a 60-image validation split's to
that of a few hundred images, with no change to the distribution (no jitter added).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from .errors import EdgekitError

INPUT_STATS = ("luminance", "saturation", "edges")
GRID = 32
MAX_IMAGES = 2000  # baseline images: quantiles of more add nothing at 1/100 resolution
_NEUTRAL = np.zeros((GRID, GRID, 3), np.uint8)
_NEUTRAL[..., 1:] = 128  # Y 0, Cr and Cb neutral: the L1 distance is luma plus chroma


def input_stats(img: np.ndarray, bgr: bool = False) -> tuple[float, float, float] | None:
    """``(luminance, saturation, edges)`` of one model input image (H, W, 3 uint8, in the
    model's colour order), or None for anything else (a float input says nothing
    comparable)."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or \
            img.shape[2] != 3 or min(img.shape[:2]) < 2:
        return None
    # Nearest keeps pixel-scale texture and noise that an area average would smooth away.
    small = img if img.shape[:2] == (GRID, GRID) else cv2.resize(
        img, (GRID, GRID), interpolation=cv2.INTER_NEAREST)
    ycc = cv2.cvtColor(small, cv2.COLOR_BGR2YCrCb if bgr else cv2.COLOR_RGB2YCrCb)
    y = cv2.extractChannel(ycc, 0)
    y_sum = cv2.sumElems(y)[0]
    chroma = cv2.norm(ycc, _NEUTRAL, cv2.NORM_L1) - y_sum  # |Y| + |Cr-128| + |Cb-128|
    steps = cv2.norm(y[:, 1:], y[:, :-1], cv2.NORM_L1) + \
        cv2.norm(y[1:], y[:-1], cv2.NORM_L1)
    n = GRID * GRID
    return (y_sum / n, chroma / (y_sum + n), steps / (2 * GRID * (GRID - 1)))


def stats_array(images: np.ndarray | list, bgr: bool = False) -> np.ndarray:
    """(n, 3) statistics of a batch of images (rows of unusable images dropped)."""
    rows = [s for s in (input_stats(im, bgr) for im in images) if s is not None]
    return np.asarray(rows, np.float64).reshape(-1, len(INPUT_STATS))


def make_input_baseline(images: np.ndarray | list, split: str, seed: int = 0
                        ) -> dict[str, Any] | None:
    """The input baseline from RGB model inputs (at most :data:`MAX_IMAGES`, a seeded
    sample); None without usable images.

    Returns:
        ``{"n", "split", "grid", "quantiles": {stat: 101 sorted values}}`` (JSON-ready).
    """
    if len(images) > MAX_IMAGES:
        pick = np.random.default_rng(seed).choice(len(images), MAX_IMAGES, replace=False)
        images = [images[i] for i in sorted(pick)]
    s = stats_array(images)
    if not len(s):
        return None
    q = np.quantile(s, np.linspace(0, 1, 101), axis=0, method="inverted_cdf")
    return {"n": int(len(s)), "split": split, "grid": GRID,
            "quantiles": {name: [round(float(v), 4) for v in q[:, i]]
                          for i, name in enumerate(INPUT_STATS)}}


def check_input_baseline(b: Any) -> tuple[int, dict[str, np.ndarray]]:
    """``(n, {stat: quantiles})`` of an input baseline; a statistic this runtime does not
    know is ignored (a newer convert may add some)."""
    if not isinstance(b, dict):
        raise EdgekitError(f"drift baseline: input: expected an object, got "
                           f"{type(b).__name__}")
    try:
        n = int(b["n"])
        grid = int(b.get("grid", GRID))
        qs = {k: np.asarray([float(v) for v in b["quantiles"][k]], np.float64)
              for k in INPUT_STATS if k in b["quantiles"]}
    except KeyError as e:
        raise EdgekitError(f"drift baseline: input: missing field {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise EdgekitError(f"drift baseline: input: {e}") from None
    if grid != GRID:
        raise EdgekitError(f"drift baseline: input statistics on a {grid}-point grid, this "
                           f"runtime reads {GRID}")
    for k, q in qs.items():
        if len(q) < 2 or not np.all(np.isfinite(q)) or np.any(np.diff(q) < 0):
            raise EdgekitError(f"drift baseline: input {k}: expected >= 2 sorted numbers")
    if n < 1 or not qs:
        raise EdgekitError(f"drift baseline: input: n {n} and at least one of "
                           f"{', '.join(INPUT_STATS)} needed")
    return n, qs


def ks_coefficient(alpha: float) -> float:
    """c(alpha) of the two-sample Kolmogorov-Smirnov critical value."""
    return math.sqrt(-0.5 * math.log(alpha / 2))


__all__ = ["INPUT_STATS", "input_stats", "make_input_baseline", "stats_array"]
