"""Latency and accuracy measurement over edge_runtime; runs on a device without TensorFlow."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from edge_runtime.classify import Classifier
from edge_runtime.preprocess import ImageError, load_image


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """mean, std, min, p50, p90, p99 and max of a list of milliseconds."""
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def measure_latency(model: str | Path, threads: int, image: np.ndarray, runs: int = 100,
                    warmup: int = 10, min_seconds: float = 0.0) -> dict:
    """Times ``invoke()`` on a real preprocessed image; warm-up runs are excluded.

    Also times the whole per-image path (resize + quantize + invoke + dequantize) as
    ``pipeline_ms``, since that is what a camera loop pays.

    Returns:
        A row: load_ms, first_ms, latency_ms {mean, std, min, p50, p90, p99, max},
        pipeline_ms {...}, runs, throughput_fps.
    """
    clf = Classifier(model, threads=threads)
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
            "throughput_fps": 1000.0 / lat["mean"] if lat["mean"] > 0 else 0.0,
            "backend": f"{clf.backend.name} {clf.backend.version}"}


def measure_accuracy(model: str | Path, files: list[tuple[Path, int]], threads: int | None = None
                     ) -> dict:
    """Top-1 (and top-5 when >= 5 classes) through the runtime's own preprocessing."""
    clf = Classifier(model, threads=threads)
    hits1 = hits5 = n = 0
    for path, label in files:
        try:
            scores = clf.scores(load_image(path))
        except ImageError:
            continue
        order = np.argsort(-scores)
        hits1 += int(order[0] == label)
        hits5 += int(label in order[:5])
        n += 1
    out = {"top1": hits1 / n if n else 0.0, "images": n}
    if clf.num_classes >= 5:
        out["top5"] = hits5 / n if n else 0.0
    return out


def environment() -> dict:
    """What the numbers were measured on (read where readable, else null)."""
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text(errors="replace").strip("\x00\n ")
        except OSError:
            return None

    cpu = None
    info = read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            cpu = line.split(":", 1)[1].strip()
            break
    temp = read("/sys/class/thermal/thermal_zone0/temp")
    from edge_runtime.backend import backend

    b = backend()
    return {
        "machine": platform.machine(), "os": platform.platform(),
        "python": platform.python_version(), "cpu": cpu or platform.processor() or None,
        "cores": os.cpu_count(),
        "governor": read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "board": read("/proc/device-tree/model"),
        "temperature_c": round(int(temp) / 1000, 1) if temp and temp.isdigit() else None,
        "interpreter": f"{b.name} {b.version}",
    }
