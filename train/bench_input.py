"""Is the input pipeline the bottleneck? Training images/s from the folder vs from memory.

Usage:
    python -m train.bench_input --data DIR [--alpha A] [--img-size N] [--batch-size N]
                                [--steps N] [--repeats N] [--json OUT.json]

Trains the same MobileNetV2 (random init, so nothing is downloaded; a step costs the
same as with ImageNet weights; by default with the base frozen as in the head phase) on
the same images, with the same augmentation, fed
three ways, and reports training images/s for each:

* ``folder``: decoded from the files every step (``--cache none``; the worst case, and
  what the first epoch of every run sees);
* ``folder_cached``: the training default (decoded once, then from the cache);
* ``memory``: the images already decoded into one array (the upper bound).

The pipeline is not the bottleneck when ``folder / memory >= 0.9``. Steps are timed
after a warm-up (graph tracing) and each measurement is repeated; medians are reported.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from edge_runtime.errors import EXIT_ERROR, EXIT_OK, EdgekitError, Parser

TARGET_RATIO = 0.9


def measure(data: str, alpha: float, img_size: int, batch: int, steps: int,
            repeats: int, frozen: bool = True) -> dict:
    """Runs the comparison; returns the result dictionary (see the module docstring)."""
    import warnings

    with warnings.catch_warnings():  # restored after: no filter left on the process
        warnings.filterwarnings("ignore", message=".*shuffle=True.*")  # our datasets shuffle
        return _measure(data, alpha, img_size, batch, steps, repeats, frozen)


def _measure(data: str, alpha: float, img_size: int, batch: int, steps: int,
             repeats: int, frozen: bool) -> dict:
    import keras

    from .augment import Augment, build_augmenter
    from .config import TrainConfig
    from .data import load_arrays, scan, stratified_split
    from .model import build_and_compile
    from .pipeline import file_dataset, memory_dataset

    classes, files = scan(data)
    split = stratified_split(data, classes, files, 0.15, 0.15, 0)
    size = (img_size, img_size)
    cfg = TrainConfig(data=data, out="-", weights="none", alpha=alpha, img_size=img_size,
                      batch_size=batch)
    keras.utils.set_random_seed(0)
    model, base = build_and_compile(cfg, len(classes), None)
    if frozen:  # the default transfer-learning phase: frozen base, BatchNorm in inference
        base.trainable = False
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    aug = build_augmenter(Augment(), 0)
    t0 = time.perf_counter()
    x, y, _ = load_arrays(data, split.train, size, cfg.resize, cfg.interpolation)
    load_s = time.perf_counter() - t0
    sources = {
        "folder": file_dataset(data, split.train, size, cfg.resize, batch, 0, train=True,
                               augmenter=aug, cache="none", repeat=True,
                               interpolation=cfg.interpolation),
        "folder_cached": file_dataset(data, split.train, size, cfg.resize, batch, 0,
                                      train=True, augmenter=aug, cache="memory", repeat=True,
                                      interpolation=cfg.interpolation),
        "memory": memory_dataset(x, y, batch, 0, train=True, augmenter=aug, repeat=True),
    }
    rates: dict[str, list[float]] = {k: [] for k in sources}
    model.fit(sources["memory"], epochs=1, steps_per_epoch=3, verbose=0)  # trace the graph
    for ds in sources.values():  # warm each pipeline (and fill the cache)
        model.fit(ds, epochs=1, steps_per_epoch=max(2, -(-len(split.train) // batch)),
                  verbose=0)
    for r in range(repeats):
        for name, ds in sources.items():
            t = time.perf_counter()
            model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
            rates[name].append(steps * batch / (time.perf_counter() - t))
            print(f"  repeat {r + 1}/{repeats} {name:13s} {rates[name][-1]:7.1f} images/s",
                  file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "data": str(data), "train_images": len(split.train), "alpha": alpha,
        "img_size": img_size, "batch_size": batch, "frozen_base": frozen, "steps": steps,
        "repeats": repeats,
        "cpu_count": os.cpu_count(), "decode_all_to_memory_s": round(load_s, 2),
        "images_per_s": {k: round(v, 1) for k, v in med.items()},
        "images_per_s_all": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "ratio_folder_vs_memory": round(med["folder"] / med["memory"], 3),
        "ratio_cached_vs_memory": round(med["folder_cached"] / med["memory"], 3),
        "target_ratio": TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = Parser(prog="python -m train.bench_input",
               description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="one subfolder of images per class")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--phase", choices=("head", "full"), default="head",
                   help="head: frozen base, as in the default transfer-learning phase (the "
                        "fastest steps, so the hardest test for the pipeline); full: every "
                        "layer trains, as with --weights none")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        res = measure(args.data, args.alpha, args.img_size, args.batch_size, args.steps,
                      args.repeats, frozen=args.phase == "head")
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    r = res["images_per_s"]
    print(f"MobileNetV2 {args.alpha}/{args.img_size} ({args.phase}), batch {args.batch_size}, "
          f"{res['cpu_count']} CPUs: training images/s  folder {r['folder']:.1f}  "
          f"folder+cache {r['folder_cached']:.1f}  memory {r['memory']:.1f}")
    ok = res["ratio_folder_vs_memory"] >= TARGET_RATIO
    print(f"folder / memory = {res['ratio_folder_vs_memory']:.3f} (target >= {TARGET_RATIO}: "
          f"{'met' if ok else 'NOT met'}); cached / memory = "
          f"{res['ratio_cached_vs_memory']:.3f}")
    if args.json:
        from edge_runtime.fileio import write_json

        write_json(args.json, res)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
