"""Convert a model to TFLite variants and check every variant on the held-out split.

Usage:
    python -m convert [export] runs/NAME [--variants float32,int8,edgetpu] [--calib N]
                      [--io uint8|int8|float] [--max-drop PTS] [--float-layers NAME,...]
                      [--allow-cpu-fallback] [--verbose]
    python -m convert [export] MODEL.keras|SAVED_MODEL_DIR --labels L --img-size N [--data DIR]
    python -m convert lint MODEL.tflite [--json]

Writes export/model_<variant>.tflite (the manifest and a few golden self-test cases
embedded in each; ``onnx``: export/model.onnx, the same in its metadata), labels.txt,
manifest.json (with each model's sha256), convert_report.json and convert_report.md, and
prints a table (top-1, agreement with the source model, drop vs float32, size).

Exit status: 0 done; 1 when int8 or imx500 loses more than --max-drop points of top-1, an Edge TPU
model leaves ops on the CPU, or on bad input (one line on stderr); 2 bad usage; 0 after
SIGTERM and 130 after SIGINT (at any moment, start-up included: one line, finished models
intact, none partial).
"""

from __future__ import annotations

import argparse

from edge_runtime.errors import (
    EXIT_OK,
    EdgekitError,
    Parser,
    cli_main,
    int_at_least,
    run_subcommand,
)

_COMMANDS = ("export", "lint")


_positive = int_at_least(1)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for ``python -m convert``: ``export`` (the default) and ``lint``."""
    from .export import DEFAULT_VARIANTS
    from .quantization import IO_TYPES

    top = Parser(prog="python -m convert", description=__doc__.split("\n")[0],
                 epilog="A first argument that is not a command means 'export'.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("export", help="convert a run (or a Keras model) and check each variant")
    p.add_argument("run", help="training run folder (runs/NAME), .keras file or SavedModel")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="comma-separated: float32, float16, dynamic, int8, edgetpu, onnx, imx500 "
                   "(Raspberry Pi AI Camera; make imx500-env first)")
    p.add_argument("--calib", type=_positive, default=300, help="int8 calibration images")
    p.add_argument("--io", choices=IO_TYPES, default="uint8",
                   help="int8 model input/output type (the Edge TPU needs uint8 or int8)")
    p.add_argument("--max-drop", type=float, default=2.0,
                   help="fail when int8 (or imx500) top-1 is more than this many points "
                   "below float32")
    p.add_argument("--float-layers", default=None,
                   help="comma-separated tensors to keep in float in the int8 model")
    p.add_argument("--allow-cpu-fallback", action="store_true",
                   help="accept an Edge TPU model with some ops on the CPU")
    p.add_argument("--labels", default=None, help="label file (model not made by train)")
    p.add_argument("--img-size", type=_positive, default=None,
                   help="input size (model not from train)")
    p.add_argument("--data", default=None,
                   help="class folders to calibrate and check a model not made by train")
    p.add_argument("--out", default=None, help="export folder (default: RUN/export)")
    p.add_argument("--verbose", action="store_true",
                   help="also show TensorFlow's and the converter's own log lines (hidden "
                        "by default)")
    p.set_defaults(func=_export)
    # lint parses its own arguments (convert.lint.main_lint): everything after the word.
    lint = sub.add_parser("lint", add_help=False,
                          help="will a .tflite model map fully to the Edge TPU? (lint --help)")
    lint.set_defaults(func=_lint)
    return top


def _export(args: argparse.Namespace) -> int:
    from edge_runtime.quiet import quiet_tensorflow

    with quiet_tensorflow(verbose=args.verbose):
        from .evaluate import format_table
        from .export import export
        from .quantization import parse_variants

        layers = [s.strip() for s in args.float_layers.split(",")] if args.float_layers \
            else None
        result = export(args.run, parse_variants(args.variants), args.calib, args.io,
                        args.max_drop, layers, args.labels, args.img_size, args.data, args.out,
                        args.allow_cpu_fallback)
    print(format_table(result.report))
    print(f"wrote {result.export_dir} (report: convert_report.md)")
    if result.failed:
        raise EdgekitError(result.failed)
    return EXIT_OK


def _lint(argv: list[str]) -> int:
    from .lint import main_lint

    return main_lint(argv)


@cli_main(interrupted="finished models are intact, none is partial")
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    return run_subcommand(build_parser(), argv, _COMMANDS, "export", own_args=(_lint,))


if __name__ == "__main__":
    from edge_runtime.errors import exit_with, install_signal_handlers

    install_signal_handlers()  # before the heavy imports main() makes
    exit_with(main)
