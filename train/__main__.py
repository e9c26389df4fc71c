"""Fine-tune MobileNetV2 on a folder of images.

Usage:
    python -m train --data DIR --out runs/NAME [--weights imagenet|none|PATH] [--alpha A]
                    [--img-size N] [--epochs N] [--fine-tune-epochs N] [--seed S] [--tune]
                    [--augment auto|none|light|classic] [--verbose]
    python -m train --out runs/NAME --resume

DIR has one subfolder of images per class (or train/val[/test] folders, a CSV, a pixel
CSV, a JSON Lines file). The run folder receives model.keras (the best checkpoint),
labels.txt, manifest.json, metrics.json (held-out results), history.csv, the curves and
the confusion matrix as PNGs, data_report.json, train_config.json, checkpoints/ and logs/,
augment_preview.png and (with --augment auto, the default) augment_pilot.json.

Exit status: 0 done; 1 an error (one line on stderr); 2 bad usage; 130 after SIGINT
(Ctrl-C) and 0 after SIGTERM, at any moment, start-up included: one line, and at most the
epoch under way is lost (``--resume`` continues).
"""

from __future__ import annotations

import argparse

from edge_runtime.errors import EXIT_OK, EdgekitError, Parser, cli_main, int_at_least


def _brightness(text: str) -> tuple[float, float]:
    from .augment import parse_brightness

    try:
        return parse_brightness(text)
    except EdgekitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for ``python -m train``."""
    p = Parser(prog="python -m train", description=__doc__.split("\n")[0])
    p.add_argument("--data",
                   help="class folders, train/val[/test] folders, a path,label CSV, a pixel "
                        "CSV or a JSON Lines file (not needed with --resume)")
    p.add_argument("--out", required=True, help="run folder to write, e.g. runs/NAME")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its last finished epoch, "
                        "with its recorded settings")
    p.add_argument("--force", action="store_true",
                   help="replace an existing run folder (default: write to NAME-2, NAME-3...)")
    p.add_argument("--verbose", action="store_true",
                   help="also show TensorFlow's own log lines (hidden by default)")
    for add in (_model_args, _training_args, _data_args, _augment_args, _tune_args):
        add(p)
    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    from .model import ALPHAS

    m = p.add_argument_group("model")
    m.add_argument("--weights", default="imagenet",
                   help="'imagenet' (downloads), 'none' (from scratch), or a local no-top .h5")
    m.add_argument("--alpha", type=float, choices=ALPHAS, default=1.0,
                   help="MobileNetV2 width multiplier")
    m.add_argument("--img-size", type=int_at_least(32), default=224,
                   help="input size (px); ImageNet weights exist for 96, 128, 160, 192, 224")
    m.add_argument("--dropout", type=float, default=0.2, help="dropout before the classifier")
    m.add_argument("--l2", type=float, default=0.0, help="L2 penalty on the classifier")


def _training_args(p: argparse.ArgumentParser) -> None:
    from .config import SCHEDULES, STRATEGIES

    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int_at_least(1), default=10, help="head-training epochs")
    t.add_argument("--fine-tune-epochs", type=int_at_least(0), default=0,
                   help="then fine-tune the top --unfreeze base layers for this many epochs")
    t.add_argument("--unfreeze", type=int_at_least(0), default=30,
                   help="base layers to unfreeze when fine-tuning")
    t.add_argument("--batch-size", type=int_at_least(1), default=32, help="batch size")
    t.add_argument("--learning-rate", type=float, default=1e-3,
                   help="Adam learning rate for the head (fine-tuning uses a tenth)")
    t.add_argument("--lr-schedule", choices=SCHEDULES,
                   default="constant", help="learning-rate schedule")
    t.add_argument("--warmup-epochs", type=int_at_least(0), default=0,
                   help="linear learning-rate warm-up epochs")
    t.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing")
    t.add_argument("--patience", type=int_at_least(1), default=5, help="early-stopping patience")
    t.add_argument("--no-class-weights", action="store_true",
                   help="do not weight the loss by inverse class frequency")
    t.add_argument("--strategy", choices=STRATEGIES,
                   default="default", help="tf.distribute strategy (multiworker reads TF_CONFIG)")
    t.add_argument("--seed", type=int, default=0,
                   help="fixes split, initialisation, shuffling and augmentation")


def _data_args(p: argparse.ArgumentParser) -> None:
    from edge_runtime.preprocess import DEFAULT_INTERPOLATION, INTERPOLATIONS

    from .config import CACHE_CHOICES

    d = p.add_argument_group("data")
    d.add_argument("--resize", choices=("center_crop", "stretch"), default="center_crop",
                   help="how images (and later camera frames) are fitted to the input")
    d.add_argument("--interpolation", choices=INTERPOLATIONS, default=DEFAULT_INTERPOLATION,
                   help="how images (and later camera frames) are shrunk: bilinear (fast "
                        "on every camera frame; a box reduction first beyond 4x) or "
                        "OpenCV's exact INTER_AREA (about 10x slower)")
    d.add_argument("--min-per-class", type=int_at_least(2), default=5,
                   help="a class with fewer usable images is an error")
    d.add_argument("--field-test-fraction", type=float, default=0.3,
                   help="share of the field images (images with a device sidecar) held out "
                        "as the field test split, by whole device/time groups")
    d.add_argument("--field-block-seconds", type=float, default=600.0,
                   help="field images are grouped by device and blocks of this many seconds "
                        "of the source's clock; neighbouring frames never straddle splits "
                        "within a block")
    d.add_argument("--cache", choices=CACHE_CHOICES, default="memory",
                   help="keep decoded images after the first epoch: in memory, in a file in "
                        "the run folder (large datasets), or not at all")


def _augment_args(p: argparse.ArgumentParser) -> None:
    from .augment import FLIPS
    from .config import AUGMENT_CHOICES

    a = p.add_argument_group("augmentation (training only; 0 turns one off; a flag given "
                             "here overrides the --augment policy's value)")
    a.add_argument("--augment", choices=AUGMENT_CHOICES, default="auto",
                   help="auto: a short pilot scored on the validation split picks none, "
                        "light or classic, flip on or off (augment_pilot.json); light: "
                        "rotation 15, shift 0.1, zoom 0.1, brightness 0.8-1.25, contrast "
                        "0.1; classic: rotation 40, shift, shear, zoom 0.2, brightness "
                        "0.4-1.5 (both without flips unless --flip)")
    a.add_argument("--no-augment", action="store_true", help="same as --augment none")
    a.add_argument("--rotation", type=float, help="max rotation, degrees (classic: 40)")
    a.add_argument("--shift", type=float, help="max shift, fraction of the size (classic: 0.2)")
    a.add_argument("--shear", type=float, help="max shear intensity (classic: 0.2)")
    a.add_argument("--zoom", type=float, help="max zoom in/out, fraction (classic: 0.2)")
    a.add_argument("--flip", choices=FLIPS, help="random flips (presets: none)")
    a.add_argument("--brightness", type=_brightness,
                   help="brightness factor range LOW,HIGH, 1 = off (classic: 0.4,1.5)")
    a.add_argument("--contrast", type=float, help="max contrast change, fraction (classic: 0)")


def _tune_args(p: argparse.ArgumentParser) -> None:
    h = p.add_argument_group("hyperparameter search (KerasTuner)")
    h.add_argument("--tune", action="store_true",
                   help="search learning rate, dropout, unfreeze depth and alpha first, then "
                        "train with the best configuration")
    h.add_argument("--max-trials", type=int_at_least(1), default=10, help="trial budget")
    h.add_argument("--tune-epochs", type=int_at_least(1), default=5,
                   help="head-training epochs per trial (fine-tuning trials get as many)")


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the parsed arguments describe."""
    from dataclasses import replace

    from .augment import Augment
    from .config import TrainConfig
    from .policy import preset

    policy = "none" if args.no_augment else args.augment
    names = ("rotation", "shift", "shear", "zoom", "flip", "brightness", "contrast")
    given = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if policy == "none":
        augment = None  # --no-augment / --augment none win over single flags
    else:
        # Single flags start from the named preset (auto: the classic recipe they document).
        augment = preset("classic" if policy == "auto" else policy)
        if given:
            augment = replace(augment or Augment(), **given)
            policy = "custom"
    return TrainConfig(
        data=args.data or "", out=args.out, weights=args.weights, alpha=args.alpha,
        img_size=args.img_size, epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs,
        unfreeze=args.unfreeze, batch_size=args.batch_size, learning_rate=args.learning_rate,
        dropout=args.dropout, l2=args.l2, label_smoothing=args.label_smoothing,
        patience=args.patience, augment=augment, augment_policy=policy, resize=args.resize,
        interpolation=args.interpolation,
        class_weights=not args.no_class_weights, min_per_class=args.min_per_class,
        lr_schedule=args.lr_schedule, warmup_epochs=args.warmup_epochs, cache=args.cache,
        strategy=args.strategy, seed=args.seed, force=args.force,
        field_test_fraction=args.field_test_fraction,
        field_block_seconds=args.field_block_seconds)


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.resume and not args.data:
        parser.error("--data is required (unless --resume)")
    from edge_runtime.quiet import quiet_tensorflow

    with quiet_tensorflow(verbose=args.verbose):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Trains (or tunes, then trains) as ``args`` say; returns the exit status."""
    cfg = config_from_args(args)
    if args.tune:
        if args.resume:
            raise EdgekitError("--tune and --resume cannot be combined")
        from .tune import tune_then_train

        tune_then_train(cfg, args.max_trials, args.tune_epochs)
    else:
        from .core import fine_tune

        fine_tune(cfg, resume=args.resume)
    return EXIT_OK


if __name__ == "__main__":
    from edge_runtime.errors import exit_with, install_signal_handlers

    install_signal_handlers()  # before TensorFlow and the data pipeline load
    exit_with(main)
