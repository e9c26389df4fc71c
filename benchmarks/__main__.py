"""Measure latency, memory, accuracy and the camera pipeline of every exported variant.

Usage:
    python -m benchmarks RUN [--variants float32,int8] [--threads 1,2,4]
                             [--runs N | --min-seconds S] [--warmup N]
                             [--video auto|none|SOURCE] [--video-frames N] [--video-fps F]
                             [--device-name NAME] [--compare OLD.json [--strict]] [--out DIR]
    python -m benchmarks ~/edgekit/current --out DIR ...   (a deployed release)
    python -m benchmarks report DIR... [--out DIR]
    python -m benchmarks compare NEW.json OLD.json [--strict]
    python -m benchmarks compare OLD_MODEL NEW_MODEL --data FOLDER [--json OUT] [--out DIR]
                                 [--strict [--accuracy-tolerance 0.01]]
    python -m benchmarks validate MODEL [--threads N] [--runs N] [--rounds N]
    python -m benchmarks video-check CAMERA.jsonl FRAME_LABELS.txt

Measuring writes RUN/bench/results.json (schema: benchmarks/SCHEMA.md), results.csv,
report.md and, where matplotlib is installed, the plots. The measuring part needs only the
device extra. Exit status: 0 ok (and after SIGTERM); 1 error (one line on stderr); 2 usage;
3 regression (--strict) or validation outside tolerance; 130 after SIGINT (Ctrl-C). A
signal at any moment, start-up included, ends in one line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_runtime.errors import (
    EXIT_OK,
    EdgekitError,
    Parser,
    cli_main,
    int_at_least,
    run_subcommand,
)

EXIT_REGRESSION = 3
_COMMANDS = ("measure", "report", "compare", "validate", "video-check")


def _threads(text: str) -> int:
    """One interpreter thread count within 1..4 x CPU cores (an argparse type)."""
    from edge_runtime.cli import threads_arg

    return threads_arg(text)


def _threads_list(text: str) -> list[int]:
    """Parses ``1,2,4`` into thread counts within 1..4 x CPU cores (an argparse type)."""
    values = [_threads(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,4, got {text[:40]!r}")
    return values


def _add_tolerances(p: argparse.ArgumentParser) -> None:
    """Adds --tolerance, --accuracy-tolerance and --strict."""
    p.add_argument("--tolerance", type=float, default=0.10,
                   help="relative tolerance for p50 latency and end-to-end fps")
    p.add_argument("--accuracy-tolerance", type=float, default=0.01,
                   help="absolute tolerance for top-1")
    p.add_argument("--strict", action="store_true",
                   help=f"exit {EXIT_REGRESSION} when a regression is found")


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``python -m benchmarks``: ``measure`` (the default: a first argument
    that is not a command is a run folder), ``report``, ``compare``, ``validate`` and
    ``video-check``; each sets ``func``."""
    top = Parser(prog="python -m benchmarks", description=__doc__.split("\n")[0],
                 epilog="A first argument that is not a command means 'measure'. Schema: "
                        "benchmarks/SCHEMA.md.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("measure", help="measure a run's exported variants (the default)")
    p.add_argument("run", help="training run folder with an export/ folder, or a deployed "
                               "release (~/edgekit/current: its models and held-out images)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the results go (default: RUN/bench)")
    p.add_argument("--variants", default=None, help="comma-separated (default: all exported)")
    p.add_argument("--threads", type=_threads_list, default=None,
                   help="thread counts, each up to 4 x the cores (default: 1 and all cores)")
    p.add_argument("--runs", type=int_at_least(1), default=100, help="timed runs per row")
    p.add_argument("--warmup", type=int_at_least(0), default=10, help="untimed warm-up runs")
    p.add_argument("--min-seconds", type=float, default=0.0,
                   help="keep timing each row until at least this long has passed")
    p.add_argument("--video", default="auto",
                   help="end-to-end source (file, camera index, URL); auto: the video beside "
                        "the run's data; none: skip")
    p.add_argument("--video-frames", type=int_at_least(0), default=60,
                   help="frames to use (0: all)")
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
    p.set_defaults(func=_measure)

    r = sub.add_parser("report", help="re-draw one results folder's report, or merge several "
                                      "devices' results")
    r.add_argument("dirs", nargs="+", metavar="DIR",
                   help="bench folders, run folders or results.json files")
    r.add_argument("--out", default=None,
                   help="output folder (default: DIR itself for one, ./bench-merged for several)")
    r.set_defaults(func=_report)

    c = sub.add_parser("compare", help="compare results against a reference, or two models "
                                       "on the same images (--data)")
    c.add_argument("first", metavar="A", help="results.json (or its folder) to check; with "
                                              "--data: the OLD model (.tflite or .onnx)")
    c.add_argument("second", metavar="B", help="reference results.json; with --data: the "
                                               "NEW model")
    c.add_argument("--data", default=None, metavar="FOLDER",
                   help="compare models A and B on these images (one subfolder per class)")
    c.add_argument("--json", default=None, metavar="OUT.json",
                   help="with --data: write the comparison here")
    c.add_argument("--out", default=None, metavar="DIR",
                   help="with --data: write compare.json, compare.md, differences.csv")
    _add_tolerances(c)
    c.set_defaults(func=_compare)

    v = sub.add_parser("validate", help="compare the harness's median with ai-edge-litert's "
                                        "benchmark tool")
    v.add_argument("model", help=".tflite model (CPU)")
    v.add_argument("--threads", type=_threads, default=1, help="interpreter threads")
    v.add_argument("--runs", type=int_at_least(1), default=200,
                   help="timed runs per round, each side")
    v.add_argument("--warmup", type=int_at_least(0), default=20, help="untimed warm-up runs")
    v.add_argument("--rounds", type=int_at_least(1), default=5, help="alternating rounds")
    v.add_argument("--tolerance", type=float, default=0.10, help="allowed relative difference")
    v.add_argument("--json", default=None, metavar="OUT.json", help="also write the result")
    v.set_defaults(func=_validate)

    # video-check parses its own arguments (benchmarks.video_check.main).
    k = sub.add_parser("video-check", add_help=False,
                       help="camera-log accuracy: video-check LOG LABELS (video-check --help)")
    k.set_defaults(func=_video_check)
    return top


def _measure(args: argparse.Namespace) -> int:
    """``python -m benchmarks [measure] RUN ...``: measure, write, compare."""
    from .core import BenchOptions, benchmark

    variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    report, results = benchmark(args.run, BenchOptions(
        variants=variants, threads=args.threads, runs=args.runs, warmup=args.warmup,
        min_seconds=args.min_seconds, video=args.video, video_frames=args.video_frames,
        video_fps=args.video_fps, isolate=not args.no_isolate, device_name=args.device_name,
        edgetpu_device=args.edgetpu, compare_to=args.compare, tolerance=args.tolerance,
        accuracy_tolerance=args.accuracy_tolerance, out_dir=args.out))
    from .report import summary

    print(summary(results))
    print(f"wrote {report.parent} (the full report: {report})")
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


def _report(args: argparse.Namespace) -> int:
    """``report DIR...``: redraw one results folder or merge several."""
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


def _compare(args: argparse.Namespace) -> int:
    """``compare NEW OLD``: regression check without measuring; ``compare OLD NEW --data``:
    two models on the same images (benchmarks.compare)."""
    if args.data is not None:
        from .compare import run

        r = run(args.first, args.second, args.data, args.json, args.out)
        drop = r["top1"]["old"] - r["top1"]["new"]
        if args.strict and drop > args.accuracy_tolerance:
            print(f"error: NEW top-1 is {100 * drop:.1f} points below OLD's (tolerance "
                  f"{100 * args.accuracy_tolerance:g})", file=sys.stderr)
            return EXIT_REGRESSION
        return EXIT_OK
    if args.json or args.out:
        raise EdgekitError("--json and --out go with --data (comparing two models)")
    if Path(args.first).suffix in (".tflite", ".onnx"):
        raise EdgekitError(f"comparing two models needs --data FOLDER (labelled images): "
                           f"{args.first}")
    from .analysis import compare, load_results

    cmp = compare(load_results(args.first), load_results(args.second), args.tolerance,
                  args.accuracy_tolerance)
    for n in cmp["notes"]:
        print(f"note: {n}", file=sys.stderr)
    ok = sum(c["status"] == "ok" for c in cmp["checks"])
    print(f"{len(cmp['checks'])} check(s): {ok} within tolerance, {cmp['regressions']} "
          f"regression(s), {len(cmp['checks']) - ok - cmp['regressions']} improvement(s)")
    return _verdict(cmp, args.strict)


def _validate(args: argparse.Namespace) -> int:
    """``validate MODEL``: harness vs ai-edge-litert's benchmark tool."""
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


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    return run_subcommand(build_parser(), argv, _COMMANDS, "measure",
                          own_args=(_video_check,))


if __name__ == "__main__":
    from edge_runtime.errors import exit_with, install_signal_handlers

    install_signal_handlers()  # before the heavy imports main() makes
    exit_with(main)
