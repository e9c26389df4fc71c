"""Convert a training run to TFLite and check every variant on the held-out split.

Usage:
    python -m convert runs/NAME [--variants float32,int8] [--calib N] [--io uint8|int8|float]

Writes runs/NAME/export/model_<variant>.tflite, labels.txt, manifest.json and
convert_report.json, and prints a table (top-1, agreement with Keras, size).
"""

from __future__ import annotations

import argparse
import os
import sys

from edge_runtime.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EdgekitError


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for ``python -m convert``."""
    p = argparse.ArgumentParser(prog="python -m convert", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="training run folder (runs/NAME)")
    p.add_argument("--variants", default="float32,int8",
                   help="comma-separated: float32, float16, dynamic, int8")
    p.add_argument("--calib", type=int, default=300, help="int8 calibration images")
    p.add_argument("--io", choices=("uint8", "int8", "float"), default="uint8",
                   help="int8 model input/output type")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .export import export, format_table
    from .quantization import parse_variants

    try:
        if args.calib < 1:
            raise EdgekitError(f"--calib must be >= 1, got {args.calib}")
        result = export(args.run, parse_variants(args.variants), args.calib, args.io)
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted; finished models are intact, none is partial", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_table(result.report))
    print(f"wrote {result.export_dir}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
