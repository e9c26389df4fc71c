"""Fine-tune MobileNetV2 on a folder of images.

Usage:
    python -m train --data DIR --out runs/NAME [--weights imagenet|none|PATH] [--alpha A]
                    [--img-size N] [--epochs N] [--batch-size N] [--seed S] [--force]

DIR has one subfolder of images per class. The run folder receives model.keras,
labels.txt, manifest.json, metrics.json (held-out test top-1), history.csv and
training_curves.png.
"""

from __future__ import annotations

import argparse
import os
import sys

from edge_runtime.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EdgekitError


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for ``python -m train``."""
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True,
                   help="class folders, train/val[/test] folders, a path,label CSV, a pixel "
                        "CSV or a JSON Lines file")
    p.add_argument("--out", required=True, help="run folder to write, e.g. runs/NAME")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (downloads), 'none' (from scratch), or a local no-top .h5")
    p.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
    p.add_argument("--img-size", type=_int_at_least(32), default=224, help="input size (px)")
    p.add_argument("--epochs", type=_int_at_least(1), default=10, help="head-training epochs")
    p.add_argument("--fine-tune-epochs", type=_int_at_least(0), default=0,
                   help="then fine-tune the top --unfreeze base layers for this many epochs")
    p.add_argument("--unfreeze", type=_int_at_least(0), default=30,
                   help="base layers to unfreeze when fine-tuning")
    p.add_argument("--batch-size", type=_int_at_least(1), default=32, help="batch size")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout before the classifier")
    p.add_argument("--patience", type=_int_at_least(1), default=5, help="early-stopping patience")
    p.add_argument("--no-augment", action="store_true", help="disable training augmentation")
    p.add_argument("--resize", choices=("center_crop", "stretch"), default="center_crop",
                   help="how images (and later camera frames) are fitted to the input")
    p.add_argument("--no-class-weights", action="store_true",
                   help="do not weight the loss by inverse class frequency")
    p.add_argument("--min-per-class", type=_int_at_least(2), default=5,
                   help="a class with fewer usable images is an error")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="learning-rate schedule")
    p.add_argument("--warmup-epochs", type=_int_at_least(0), default=0,
                   help="linear learning-rate warm-up epochs")
    p.add_argument("--strategy", choices=("default", "mirrored", "multiworker"),
                   default="default", help="tf.distribute strategy (multiworker reads TF_CONFIG)")
    p.add_argument("--seed", type=int, default=0, help="fixes split, init and shuffling")
    p.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .core import TrainConfig, fine_tune

    try:
        cfg = TrainConfig(
            data=args.data, out=args.out, weights=args.weights, alpha=args.alpha,
            img_size=args.img_size, epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs,
            unfreeze=args.unfreeze, batch_size=args.batch_size,
            learning_rate=args.learning_rate, dropout=args.dropout, patience=args.patience,
            augment=not args.no_augment, resize=args.resize,
            class_weights=not args.no_class_weights, min_per_class=args.min_per_class,
            lr_schedule=args.lr_schedule, warmup_epochs=args.warmup_epochs,
            strategy=args.strategy, seed=args.seed, force=args.force)
        fine_tune(cfg)
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted; the run folder may be incomplete", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
