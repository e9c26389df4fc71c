"""Checks the harness against the benchmark tool that ships with ai-edge-litert.

``python -m benchmarks validate MODEL --threads N`` times the same model with the same
thread count both ways, alternating (harness, tool, tool, harness, ...) so that drift in
machine load hits both, and compares the medians of the per-round medians:

- harness: :func:`benchmarks.measure.measure_latency` in a fresh worker process, exactly
  as a benchmark row is measured (``Interpreter.invoke()``);
- tool: ``python -m ai_edge_litert.tools.benchmark_litert_model --model M --num_threads N
  --num_runs R --warmup_runs W --result_json OUT`` (LiteRT's ``CompiledModel`` API on the
  CPU accelerator, random input), reading ``latency.median_ms`` from its JSON.

The tool rounds its figures to 0.01 ms, which limits the comparison's resolution for
sub-millisecond models; the result says so.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edge_runtime.backend import is_edgetpu_model
from edge_runtime.errors import EdgekitError

from .worker import measure_row

TOOL_MODULE = "ai_edge_litert.tools.benchmark_litert_model"
TOOL_RESOLUTION_MS = 0.01


def tool_available() -> bool:
    """True when ai-edge-litert's benchmark tool can be imported here."""
    try:
        return importlib.util.find_spec(TOOL_MODULE) is not None
    except (ImportError, ValueError):
        return False


def run_tool(model: str | Path, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """Runs LiteRT's benchmark tool once; returns its result JSON.

    Raises:
        EdgekitError: the tool failed or wrote no result.
    """
    with tempfile.TemporaryDirectory(prefix="edgekit-validate-") as tmp:
        out = Path(tmp) / "tool.json"
        proc = subprocess.run(
            [sys.executable, "-m", TOOL_MODULE, "--model", str(model), "--num_threads",
             str(threads), "--num_runs", str(runs), "--warmup_runs", str(warmup),
             "--result_json", str(out)], capture_output=True, text=True)
        try:
            return json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            raise EdgekitError(f"{TOOL_MODULE} failed on {model}: "
                               f"{lines[-1] if lines else f'exit {proc.returncode}'}") from None


def validate(model: str | Path, threads: int = 1, runs: int = 200, warmup: int = 20,
             rounds: int = 5, tolerance: float = 0.10) -> dict[str, Any]:
    """Compares harness and tool medians on one model and thread count.

    Returns:
        model, threads, runs, warmup, rounds, harness_p50_ms / tool_median_ms (medians of
        the per-round medians), the per-round lists, ratio (harness / tool), tolerance,
        within_tolerance, tool_resolution_ms, the tool's version and environment warnings.

    Raises:
        EdgekitError: missing or unusable model, Edge TPU model, or no tool installed.
    """
    path = Path(model)
    if not path.is_file():
        raise EdgekitError(f"model not found: {path}")
    if is_edgetpu_model(path):
        raise EdgekitError(f"{path.name} is compiled for the Edge TPU; validate the CPU model "
                           "it was compiled from")
    if threads < 1 or runs < 1 or warmup < 0 or rounds < 1:
        raise EdgekitError("threads, runs and rounds must be >= 1 and warmup >= 0")
    if not tool_available():
        raise EdgekitError(f"{TOOL_MODULE} not found: validate needs ai-edge-litert "
                           "(pip install ai-edge-litert)")
    from .environment import environment, environment_warnings

    warnings = environment_warnings(environment())
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    harness: list[float] = []
    tool: list[float] = []
    spec = {"model": str(path), "threads": threads, "runs": runs, "warmup": warmup,
            "image": None}
    for i in range(rounds):
        order = ("harness", "tool") if i % 2 == 0 else ("tool", "harness")
        for who in order:
            print(f"round {i + 1}/{rounds}: {who} ...", file=sys.stderr, flush=True)
            if who == "harness":
                harness.append(measure_row(spec)["latency_ms"]["p50"])
            else:
                tool.append(float(run_tool(path, threads, runs, warmup)["latency"]["median_ms"]))
    h, t = statistics.median(harness), statistics.median(tool)
    if t <= 0:
        raise EdgekitError(f"the tool reported a median of {t} ms (below its 0.01 ms "
                           "resolution); the model is too fast to compare")
    ratio = h / t
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool_version = f"ai-edge-litert {version('ai-edge-litert')}"
    except PackageNotFoundError:
        tool_version = "unknown"
    return {"model": str(path), "threads": threads, "runs": runs, "warmup": warmup,
            "rounds": rounds, "harness_p50_ms": h, "tool_median_ms": t,
            "harness_rounds_ms": harness, "tool_rounds_ms": tool, "ratio": ratio,
            "tolerance": tolerance, "within_tolerance": abs(ratio - 1.0) <= tolerance,
            "tool_resolution_ms": TOOL_RESOLUTION_MS,
            "resolution_relative": TOOL_RESOLUTION_MS / 2 / t, "tool": tool_version,
            "warnings": warnings}


def format_result(r: dict[str, Any]) -> str:
    """The lines printed by ``python -m benchmarks validate``."""
    lines = [
        f"model    {r['model']} ({r['threads']} thread(s), {r['runs']} runs after "
        f"{r['warmup']} warm-up, {r['rounds']} alternating rounds)",
        f"harness  p50 {r['harness_p50_ms']:.4f} ms   rounds: "
        + ", ".join(f"{v:.4f}" for v in r["harness_rounds_ms"]),
        f"tool     median {r['tool_median_ms']:.4f} ms   rounds: "
        + ", ".join(f"{v:.2f}" for v in r["tool_rounds_ms"]) + f"   ({r['tool']})",
        f"ratio    {r['ratio']:.3f} (harness / tool); allowed "
        f"{1 - r['tolerance']:.2f}..{1 + r['tolerance']:.2f}: "
        + ("PASS" if r["within_tolerance"] else "FAIL"),
    ]
    if r["resolution_relative"] > 0.01:
        lines.append(f"note     the tool rounds to {r['tool_resolution_ms']} ms, i.e. "
                     f"±{r['resolution_relative'] * 100:.1f}% of its median here")
    return "\n".join(lines)
