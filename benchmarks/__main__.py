"""Measure latency, memory, accuracy and the camera pipeline of every exported variant.

Usage:
    python -m benchmarks RUN [--variants float32,int8] [--threads 1,2,4]
                             [--runs N | --min-seconds S] [--warmup N]
                             [--video auto|none|SOURCE] [--video-frames N] [--video-fps F]
                             [--device-name NAME] [--compare OLD.json [--strict]]
    python -m benchmarks report DIR... [--out DIR]
    python -m benchmarks compare NEW.json OLD.json [--strict]
    python -m benchmarks validate MODEL [--threads N] [--runs N] [--rounds N]
    python -m benchmarks video-check CAMERA.jsonl FRAME_LABELS.txt

Measuring writes RUN/bench/results.json (schema: benchmarks/SCHEMA.md), results.csv,
report.md and, where matplotlib is installed, the plots. The measuring part needs only the
device extra. Exit status: 0 ok, 1 error, 2 usage, 3 regression (--strict) or validation
outside tolerance, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from edge_runtime.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, EdgekitError

EXIT_REGRESSION = 3


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``) like every other edgekit CLI."""

    def error(self, message: str) -> NoReturn:
        """Prints ``error: MESSAGE`` on one line and exits with status 2."""
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _int_list(text: str) -> list[int]:
    """Parses ``1,2,4`` into positive integers (an argparse type)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _parser(prog: str, description: str) -> _Parser:
    """A parser with one-line errors and defaults in the help."""
    return _Parser(prog=prog, description=description,
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def _add_tolerances(p: argparse.ArgumentParser) -> None:
    """Adds --tolerance, --accuracy-tolerance and --strict."""
    p.add_argument("--tolerance", type=float, default=0.10,
                   help="relative tolerance for p50 latency and end-to-end fps")
    p.add_argument("--accuracy-tolerance", type=float, default=0.01,
                   help="absolute tolerance for top-1")
    p.add_argument("--strict", action="store_true",
                   help=f"exit {EXIT_REGRESSION} when a regression is found")


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``python -m benchmarks RUN``."""
    p = _parser("python -m benchmarks", __doc__.split("\n")[0])
    p.epilog = ("Other commands (each with --help): report DIR... | compare NEW OLD | "
                "validate MODEL | video-check LOG LABELS. Schema: benchmarks/SCHEMA.md.")
    p.add_argument("run", help="training run folder with an export/ folder")
    p.add_argument("--variants", default=None, help="comma-separated (default: all exported)")
    p.add_argument("--threads", type=_int_list, default=None,
                   help="thread counts (default: 1 and all cores)")
    p.add_argument("--runs", type=int, default=100, help="timed runs per row")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs")
    p.add_argument("--min-seconds", type=float, default=0.0,
                   help="keep timing each row until at least this long has passed")
    p.add_argument("--video", default="auto",
                   help="end-to-end source (file, camera index, URL); auto: the video beside "
                        "the run's data; none: skip")
    p.add_argument("--video-frames", type=int, default=60, help="frames to use (0: all)")
    p.add_argument("--video-fps", type=float, default=None,
                   help="pace a file at this rate (default: its own; 0: unpaced)")
    p.add_argument("--device-name", default=None, help="label for this machine in reports")
    p.add_argument("--edgetpu", default=None, metavar="DEVICE",
                   help="Edge TPU device for Edge TPU-compiled variants (usb, usb:0, pci:0)")
    p.add_argument("--no-isolate", action="store_true",
                   help="measure in this process (faster; peak RSS then accumulates)")
    p.add_argument("--compare", default=None, metavar="OLD.json",
                   help="reference results (e.g. device_configs/reference/NAME.json)")
    _add_tolerances(p)
    return p


def _measure(argv: list[str]) -> int:
    """``python -m benchmarks RUN ...``: measure, write, compare."""
    args = build_parser().parse_args(argv)
    from .core import benchmark

    variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    report, results = benchmark(
        args.run, variants, args.threads, args.runs, args.warmup, args.min_seconds,
        video=args.video, video_frames=args.video_frames, video_fps=args.video_fps,
        isolate=not args.no_isolate, device_name=args.device_name,
        edgetpu_device=args.edgetpu, compare_to=args.compare, tolerance=args.tolerance,
        accuracy_tolerance=args.accuracy_tolerance)
    print(report.read_text())
    print(f"wrote {report.parent}")
    return _verdict(results.get("comparison"), args.strict)


def _verdict(comparison: dict | None, strict: bool) -> int:
    """Prints regressions; the exit status for ``--strict``."""
    if not comparison:
        return EXIT_OK
    from .analysis import describe

    for c in comparison["checks"]:
        if c["status"] == "regression":
            print(f"regression: {describe(c)}", file=sys.stderr)
    n = comparison["regressions"]
    if n and strict:
        print(f"error: {n} regression(s) beyond tolerance vs {comparison['reference']}",
              file=sys.stderr)
        return EXIT_REGRESSION
    print(f"{n} regression(s) vs {comparison['reference']}"
          + (" (not failing: no --strict)" if n else ""), file=sys.stderr)
    return EXIT_OK


def _report(argv: list[str]) -> int:
    """``report DIR...``: redraw one results folder or merge several."""
    p = _parser("python -m benchmarks report",
                "Re-draw one results folder's report, or merge several devices' results.")
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="bench folders, run folders or results.json files")
    p.add_argument("--out", default=None,
                   help="output folder (default: DIR itself for one, ./bench-merged for several)")
    args = p.parse_args(argv)
    from datetime import datetime, timezone

    from .analysis import load_results, merge
    from .report import write_all, write_report

    loaded = [load_results(d) for d in args.dirs]
    if len(loaded) == 1 and loaded[0].get("kind") != "merged":
        src = Path(loaded[0]["source_path"]).parent
        out = Path(args.out) if args.out else src
        report = (write_report(loaded[0], out) if out.resolve() == src.resolve()
                  else write_all(loaded[0], out))
    else:
        merged = merge(loaded)
        merged["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        report = write_all(merged, Path(args.out or "bench-merged"))
    print(f"wrote {report}")
    return EXIT_OK


def _compare(argv: list[str]) -> int:
    """``compare NEW OLD``: regression check without measuring."""
    p = _parser("python -m benchmarks compare", "Compare results against a reference.")
    p.add_argument("new", help="results.json (or its folder) to check")
    p.add_argument("old", help="reference results.json")
    _add_tolerances(p)
    args = p.parse_args(argv)
    from .analysis import compare, load_results

    cmp = compare(load_results(args.new), load_results(args.old), args.tolerance,
                  args.accuracy_tolerance)
    for n in cmp["notes"]:
        print(f"note: {n}", file=sys.stderr)
    ok = sum(c["status"] == "ok" for c in cmp["checks"])
    print(f"{len(cmp['checks'])} check(s): {ok} within tolerance, {cmp['regressions']} "
          f"regression(s), {len(cmp['checks']) - ok - cmp['regressions']} improvement(s)")
    return _verdict(cmp, args.strict)


def _validate(argv: list[str]) -> int:
    """``validate MODEL``: harness vs ai-edge-litert's benchmark tool."""
    p = _parser("python -m benchmarks validate",
                "Compare the harness's median with ai-edge-litert's benchmark tool.")
    p.add_argument("model", help=".tflite model (CPU)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=200, help="timed runs per round, each side")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed relative difference")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the result")
    args = p.parse_args(argv)
    from edge_runtime.fileio import write_json

    from .validate import format_result, validate

    r = validate(args.model, args.threads, args.runs, args.warmup, args.rounds, args.tolerance)
    print(format_result(r))
    if args.json:
        write_json(args.json, r)
    if not r["within_tolerance"]:
        print(f"error: harness median is {abs(r['ratio'] - 1) * 100:.1f}% from the tool's, "
              f"more than {args.tolerance * 100:.0f}%", file=sys.stderr)
        return EXIT_REGRESSION
    return EXIT_OK


def _video_check(argv: list[str]) -> int:
    """``video-check LOG LABELS``: camera-log accuracy."""
    from .video_check import main as video_check

    return video_check(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    commands: dict[str, Callable[[list[str]], int]] = {
        "report": _report, "compare": _compare, "validate": _validate,
        "video-check": _video_check}
    command = commands.get(argv[0]) if argv else None
    try:
        return command(argv[1:]) if command else _measure(argv)
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
