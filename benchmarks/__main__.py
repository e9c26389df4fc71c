"""Measure latency and accuracy of every exported variant of a run.

Usage:
    python -m benchmarks runs/NAME [--variants float32,int8] [--threads 1,4] [--runs N]
                                   [--warmup N] [--min-seconds S]
    python -m benchmarks video-check CAMERA.jsonl FRAME_LABELS.txt

Writes runs/NAME/bench/results.json, results.csv, report.md and latency_vs_accuracy.png
(the plot needs matplotlib; the measuring part needs only the device extra).
"""

from __future__ import annotations

import argparse
import sys

from edge_runtime.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EdgekitError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for ``python -m benchmarks``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="training run folder with an export/ folder")
    p.add_argument("--variants", default=None, help="comma-separated (default: all exported)")
    p.add_argument("--threads", type=_int_list, default=None,
                   help="thread counts (default: 1 and all cores)")
    p.add_argument("--runs", type=int, default=100, help="timed runs per row")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs")
    p.add_argument("--min-seconds", type=float, default=0.0,
                   help="keep timing until at least this long has passed")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "video-check":
        from .video_check import main as video_check

        return video_check(argv[1:])
    args = build_parser().parse_args(argv)
    from .core import run

    try:
        if args.runs < 1 or args.warmup < 0:
            raise EdgekitError(f"--runs must be >= 1 and --warmup >= 0, got {args.runs} and "
                               f"{args.warmup}")
        variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
        report = run(args.run, variants, args.threads, args.runs, args.warmup, args.min_seconds)
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    print(report.read_text())
    print(f"wrote {report.parent}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
