"""Latency, accuracy and memory measurement over edge_runtime; runs on a device without
TensorFlow or matplotlib."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.classify import Classifier
from edge_runtime.fileio import file_sha256
from edge_runtime.preprocess import ImageError, load_image

from .progress import progress


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """mean, std (population), min, p50, p90, p99 and max of a list of milliseconds.

    Percentiles interpolate linearly between the closest ranks (numpy's default).

    Raises:
        ValueError: an empty list.
    """
    if len(samples_ms) == 0:
        raise ValueError("percentiles of an empty sample")
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max())}


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size so far (``VmHWM``; ``ru_maxrss`` elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (identifies the exact model a row was measured with)."""
    return file_sha256(path)


def measure_latency(model: str | Path, threads: int | None, image: np.ndarray, runs: int = 100,
                    warmup: int = 10, min_seconds: float = 0.0,
                    edgetpu: bool | str = False) -> dict[str, Any]:
    """Times ``invoke()`` on a real preprocessed image; warm-up runs are excluded.

    The input tensor is written once (by the first inference) and every timed run is a
    bare ``invoke()``, as in LiteRT's own benchmark tool. The whole per-image path
    (resize + quantize + invoke + dequantize) is timed separately as ``pipeline_ms``,
    since that is what a camera loop pays.

    Args:
        model: the ``.tflite`` file.
        threads: interpreter threads.
        image: an RGB image of any size.
        runs: timed runs (at least).
        warmup: untimed runs after the first inference.
        min_seconds: keep timing until at least this long has passed.
        edgetpu: run on the Edge TPU delegate (True or a device string).

    Returns:
        A row: load_ms, first_ms, latency_ms {mean, std, min, p50, p90, p99, max},
        pipeline_ms {...}, runs, warmup, throughput_fps, backend.

    Raises:
        EdgekitError: the model cannot be loaded (or the Edge TPU delegate does not load).
    """
    clf = Classifier(model, threads=threads, edgetpu=edgetpu)
    interp = clf.interpreter
    t0 = time.perf_counter()
    clf.scores(image)
    first_ms = (time.perf_counter() - t0) * 1000.0
    for _ in range(warmup):
        interp.invoke()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < runs or (time.perf_counter() - start) < min_seconds:
        t = time.perf_counter()
        interp.invoke()
        samples.append((time.perf_counter() - t) * 1000.0)
    pipeline: list[float] = []
    for _ in range(max(10, min(runs, 50))):
        t = time.perf_counter()
        clf.scores(image)
        pipeline.append((time.perf_counter() - t) * 1000.0)
    lat = percentiles(samples)
    return {"load_ms": round(clf.load_ms, 3), "first_ms": round(first_ms, 3),
            "latency_ms": lat, "pipeline_ms": percentiles(pipeline), "runs": len(samples),
            "warmup": warmup,
            "throughput_fps": 1000.0 / lat["mean"] if lat["mean"] > 0 else 0.0,
            "backend": _backend_name(clf),
            **({"provider": clf.provider} if clf.provider else {})}


def _backend_name(clf: Classifier) -> str:
    """The interpreter package, or ONNX Runtime and its version for an ``.onnx`` model."""
    if clf.provider is None:
        return f"{clf.backend.name} {clf.backend.version}"
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def measure_accuracy(model: str | Path, files: list[tuple[Path, int]], threads: int | None = None,
                     edgetpu: bool | str = False, show_progress: bool = True,
                     desc: str = "accuracy") -> dict[str, Any]:
    """Top-1 (and top-5 when >= 5 classes) through the runtime's own preprocessing.

    Args:
        model: the ``.tflite`` file.
        files: ``(image path, true class index)`` pairs, e.g. the held-out split.
        threads: interpreter threads.
        edgetpu: run on the Edge TPU delegate.
        show_progress: draw a progress bar on stderr.
        desc: the progress bar's label.

    Returns:
        ``{"top1", "images"}`` plus ``"top5"`` for models with at least 5 classes, and
        ``"unreadable"`` when some images could not be decoded (they are not counted).
    """
    clf = Classifier(model, threads=threads, edgetpu=edgetpu)
    hits1 = hits5 = n = bad = 0
    items = progress(files, len(files), desc) if show_progress else files
    for path, label in items:
        try:
            scores = clf.scores(load_image(path))
        except ImageError:
            bad += 1
            continue
        order = np.argsort(-scores)
        hits1 += int(order[0] == label)
        hits5 += int(label in order[:5])
        n += 1
    out: dict[str, Any] = {"top1": hits1 / n if n else 0.0, "images": n}
    if clf.num_classes >= 5:
        out["top5"] = hits5 / n if n else 0.0
    if bad:
        out["unreadable"] = bad
    return out
