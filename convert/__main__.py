"""Convert a model to TFLite variants and check every variant on the held-out split.

Usage:
    python -m convert runs/NAME [--variants float32,int8,edgetpu] [--calib N]
                      [--io uint8|int8|float] [--max-drop PTS] [--float-layers NAME,...]
                      [--allow-cpu-fallback]
    python -m convert MODEL.keras|SAVED_MODEL_DIR --labels L --img-size N [--data DIR]
    python -m convert lint MODEL.tflite [--json]

Writes export/model_<variant>.tflite (the manifest embedded in each), labels.txt,
manifest.json, convert_report.json and convert_report.md, and prints a table (top-1,
agreement with the source model, drop vs float32, size). Exits 1 when int8 loses more than
--max-drop points of top-1, or an Edge TPU model leaves ops on the CPU.
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
    p.add_argument("run", help="training run folder (runs/NAME), .keras file or SavedModel")
    p.add_argument("--variants", default="float32,int8,edgetpu",
                   help="comma-separated: float32, float16, dynamic, int8, edgetpu")
    p.add_argument("--calib", type=int, default=300, help="int8 calibration images")
    p.add_argument("--io", choices=("uint8", "int8", "float"), default="uint8",
                   help="int8 model input/output type (the Edge TPU needs uint8 or int8)")
    p.add_argument("--max-drop", type=float, default=2.0,
                   help="fail when int8 top-1 is more than this many points below float32")
    p.add_argument("--float-layers", default=None,
                   help="comma-separated tensors to keep in float in the int8 model")
    p.add_argument("--allow-cpu-fallback", action="store_true",
                   help="accept an Edge TPU model with some ops on the CPU")
    p.add_argument("--labels", default=None, help="label file (model not made by train)")
    p.add_argument("--img-size", type=int, default=None, help="input size (model not from train)")
    p.add_argument("--data", default=None,
                   help="class folders to calibrate and check a model not made by train")
    p.add_argument("--out", default=None, help="export folder (default: RUN/export)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "lint":
        from .edgetpu import main_lint

        return main_lint(argv[1:])
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .evaluate import format_table
    from .export import export
    from .quantization import parse_variants

    try:
        if args.calib < 1:
            raise EdgekitError(f"--calib must be >= 1, got {args.calib}")
        layers = [s.strip() for s in args.float_layers.split(",")] if args.float_layers else None
        result = export(args.run, parse_variants(args.variants), args.calib, args.io,
                        args.max_drop, layers, args.labels, args.img_size, args.data, args.out,
                        args.allow_cpu_fallback)
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted; finished models are intact, none is partial", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_table(result.report))
    print(f"wrote {result.export_dir} (report: convert_report.md)")
    if result.failed:
        print(f"error: {result.failed}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
