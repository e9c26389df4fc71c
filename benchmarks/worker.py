"""One latency measurement in a fresh process, so each row's peak RSS is its own.

``python -m benchmarks.worker SPEC.json OUT.json`` loads one model with one thread
count, times it (:func:`benchmarks.measure.measure_latency`) and writes the row plus its
memory to ``OUT.json``. The parent (:func:`measure_row`) starts one worker per row.

Memory: ``rss_baseline_bytes`` is the process's peak RSS after Python, numpy, OpenCV and
the interpreter package are imported and the test image is decoded, just before the model
is loaded; ``rss_peak_bytes`` is the peak at the end (model loaded, all runs done).
Their difference, ``rss_model_bytes``, is what loading and running the model added.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgekitError

ROOT = Path(__file__).resolve().parents[1]


def _image(spec: dict[str, Any]) -> Any:
    """The spec's image, or a fixed random image at the model's input size."""
    import numpy as np

    from edge_runtime.backend import make_interpreter
    from edge_runtime.preprocess import load_image

    if spec.get("image"):
        return load_image(spec["image"])
    if spec.get("edgetpu"):
        h, w = 224, 224  # any size works: the classifier resizes
    else:
        shape = make_interpreter(spec["model"]).get_input_details()[0]["shape"]
        h, w = int(shape[1]), int(shape[2])
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Measures one row in this process; returns the row with its memory fields.

    Raises:
        EdgekitError: the model cannot be loaded or the delegate does not load.
    """
    from edge_runtime.backend import backend

    from .measure import measure_latency, peak_rss_bytes

    backend()  # import the interpreter package now: load_ms is the model's load, not this
    image = _image(spec)
    before = peak_rss_bytes()
    row = measure_latency(spec["model"], spec.get("threads"), image, spec.get("runs", 100),
                          spec.get("warmup", 10), spec.get("min_seconds", 0.0),
                          edgetpu=spec.get("edgetpu") or False)
    peak = peak_rss_bytes()
    row.update({"rss_baseline_bytes": before, "rss_peak_bytes": peak,
                "rss_model_bytes": (peak - before) if peak is not None and before is not None
                else None})
    row.update(_selftest(spec))  # after the memory reading: it loads the model again
    return row


def _selftest(spec: dict[str, Any]) -> dict[str, Any]:
    """The model's own self-test on this machine: a row measured on a model that no longer
    gives its desktop answers here is flagged, not silently reported."""
    from edge_runtime.errors import EdgekitError
    from edge_runtime.selftest import run_selftest

    try:
        report = run_selftest(spec["model"], threads=spec.get("threads"),
                              edgetpu=spec.get("edgetpu") or False)
    except EdgekitError as e:
        return {"selftest": "error", "selftest_problems": [str(e)]}
    return {"selftest": report.status, "selftest_problems": report.failure_lines()[:5]}


def measure_row(spec: dict[str, Any], isolate: bool = True) -> dict[str, Any]:
    """Measures one row, in a fresh worker process unless ``isolate`` is False.

    Without isolation the RSS fields are the benchmark process's own high-water mark,
    which only grows from row to row (``rss_scope`` says which).

    Raises:
        EdgekitError: the worker reported an error or died.
    """
    if not isolate:
        row = run_spec(spec)
        row["rss_scope"] = "shared process (cumulative)"
        return row
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", str(spec_path),
                               str(out_path)], capture_output=True, text=True, env=env)
        try:
            out = json.loads(out_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit status {proc.returncode}"
            raise EdgekitError(f"benchmark worker for {Path(spec['model']).name} failed: "
                               f"{last}") from None
    if "error" in out:
        raise EdgekitError(out["error"])
    out["rss_scope"] = "process per row"
    return out


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: ``SPEC.json OUT.json``; the result or ``{"error"}`` goes to OUT."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m benchmarks.worker SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        result = run_spec(spec)
        status = 0
    except EdgekitError as e:
        result, status = {"error": str(e)}, 1
    Path(argv[1]).write_text(json.dumps(result), encoding="utf-8")
    return status


if __name__ == "__main__":
    sys.exit(main())
