"""Benchmarks every exported variant of a run: latency per thread count and accuracy."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from edge_runtime.errors import EdgekitError
from edge_runtime.preprocess import load_image
from train.data import load_run

from .measure import environment, measure_accuracy, measure_latency
from .report import write_all

RESULTS_SCHEMA_VERSION = 1


def find_variants(export_dir: Path) -> dict[str, Path]:
    """``{variant: path}`` for every ``model_<variant>.tflite`` in the export folder."""
    return {p.stem.removeprefix("model_"): p for p in sorted(export_dir.glob("model_*.tflite"))}


def run(run_dir: str | Path, variants: list[str] | None = None,
        threads: list[int] | None = None, runs: int = 100, warmup: int = 10,
        min_seconds: float = 0.0) -> Path:
    """Measures each variant and writes ``run_dir/bench/``; returns the report path.

    Rows (``results.json``): variant, threads, backend, latency_ms {mean, std, min, p50,
    p90, p99, max}, pipeline_ms, load_ms, first_ms, throughput_fps, top1 (top5), size_bytes.

    Raises:
        EdgekitError: no exported models, unknown variant or unreadable run.
    """
    run_path = Path(run_dir)
    manifest, split, root = load_run(run_path)
    found = find_variants(run_path / "export")
    if not found:
        raise EdgekitError(f"no exported models in {run_path / 'export'}; run "
                           f"`python -m convert {run_path}` first")
    if variants:
        missing = [v for v in variants if v not in found]
        if missing:
            raise EdgekitError(f"variant(s) {missing} not exported; found {sorted(found)}")
        found = {v: found[v] for v in variants}
    cores = os.cpu_count() or 1
    threads = sorted(set(threads or [1, cores]))
    test_files = [(root / rel, ci) for rel, ci in split.test]
    image = load_image(test_files[0][0])
    env = environment()
    warnings = []
    if env.get("governor") and env["governor"] != "performance":
        warnings.append(f"CPU governor is '{env['governor']}', not 'performance': latency "
                        "may vary with frequency scaling")
    rows = []
    for name, path in found.items():
        print(f"{name}: accuracy on {len(test_files)} held-out images ...", file=sys.stderr)
        acc = measure_accuracy(path, test_files)
        for t in threads:
            print(f"{name}: latency with {t} thread(s), {runs} runs ...", file=sys.stderr)
            lat = measure_latency(path, t, image, runs, warmup, min_seconds)
            rows.append({"variant": name, "threads": t, **lat, **acc,
                         "size_bytes": path.stat().st_size})
    results = {"schema_version": RESULTS_SCHEMA_VERSION, "run": str(run_path),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "environment": env, "test_images": len(test_files),
               "settings": {"runs": runs, "warmup": warmup, "min_seconds": min_seconds,
                            "threads": threads},
               "warnings": warnings, "rows": rows}
    return write_all(results, run_path / "bench")
