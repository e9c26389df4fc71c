"""Fine-tunes MobileNetV2 on an image folder and writes a complete, reproducible run folder."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import atomic_path, write_json, write_text
from edge_runtime.labels import write_labels
from edge_runtime.manifest import Manifest, Normalization

from . import checkpoint as ckpt
from .config import TrainConfig, warn
from .data import Split, load_arrays
from .prepare import class_weights, prepare
from .report import evaluate_predictions, plot_confusion, plot_history

__all__ = ["TrainConfig", "fine_tune", "evaluate_predictions", "build_and_compile"]


def _numbered(out: Path) -> Path:
    n = 2
    while (candidate := out.with_name(f"{out.name}-{n}")).exists():
        n += 1
    return candidate


def prepare_out(out: Path, force: bool, resume: bool) -> tuple[Path, bool]:
    """The run folder to write: ``out``, or ``out-N`` when ``out`` holds an earlier run.

    An existing run is never overwritten unless ``force``; ``resume`` continues it.

    Returns:
        (folder, created): ``created`` when this call made it.
    """
    if out.exists() and not out.is_dir():
        raise EdgekitError(f"run folder path is a file: {out}")
    if resume:
        if not out.is_dir():
            raise EdgekitError(f"nothing to resume: run folder not found: {out}")
        return out, False
    if out.is_dir() and any(out.iterdir()):
        if force:
            marks = ("manifest.json", "train_config.json", "data_report.json", "checkpoints")
            if not any((out / m).exists() for m in marks):
                raise EdgekitError(f"{out} is not empty and not a run folder; refusing to "
                                   "overwrite it with --force (choose another --out)")
            shutil.rmtree(out)
        else:
            new = _numbered(out)
            print(f"{out} already exists; writing a new run to {new} (--force overwrites, "
                  f"--resume continues it)", file=sys.stderr)
            out = new
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    return out, created


def _data(cfg: TrainConfig, out: Path, resume: bool):
    if resume:
        return ckpt.read_data(out)
    classes, split, root, report = prepare(
        cfg.data, out, cfg.min_per_class, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    ckpt.write_data(out, classes, split, root, report)
    return classes, split, root, report


def fine_tune(cfg: TrainConfig, resume: bool = False) -> Path:
    """Trains a MobileNetV2 classifier and writes the run folder.

    Writes ``model.keras`` (the best checkpoint on validation accuracy), ``labels.txt``,
    ``manifest.json``, ``metrics.json`` (held-out results), ``history.csv``, the curves and
    confusion-matrix PNGs, ``data_report.json``, ``train_config.json``, TensorBoard logs
    and ``checkpoints/``.

    Args:
        cfg: settings. With ``resume``, only ``cfg.out`` is used: the run's own
            ``train_config.json`` supplies the rest.
        resume: continue an interrupted run from its last finished epoch.

    Returns:
        The run folder (``cfg.out``, or a new numbered folder beside it).

    Raises:
        EdgekitError: bad data, bad settings, unusable weights, nothing to resume.
    """
    if not resume:
        if not Path(cfg.data).exists():
            raise EdgekitError(f"data folder not found: {cfg.data}")
        if cfg.weights.lower() not in ("none", "imagenet") and not Path(cfg.weights).is_file():
            raise EdgekitError(f"weights file not found: {cfg.weights}")
    out, created = prepare_out(Path(cfg.out), cfg.force, resume)
    try:
        return _fine_tune(cfg, out, resume)
    except (EdgekitError, KeyboardInterrupt) as e:
        cleanup(out, created, isinstance(e, KeyboardInterrupt))
        raise


def cleanup(out: Path, created: bool, interrupted: bool) -> None:
    """After a failure: removes a run folder this call made if no epoch finished in it,
    and tells an interrupted user how to continue."""
    resumable = (ckpt.folder(out) / "last.keras").is_file()
    if created and not resumable:
        shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping or resuming
    if interrupted:
        print(f"continue with: python -m train --out {out} --resume" if resumable else
              "no epoch had finished; nothing kept", file=sys.stderr)


def datasets(cfg: TrainConfig, root: Path, split: Split, k: int, out: Path,
             x_va: np.ndarray, y_va: np.ndarray):
    """The training dataset (decoded from the files, augmented, cached as ``cfg`` says)
    and the validation dataset (from the decoded arrays); one-hot labels with label
    smoothing. Shared by training and the hyperparameter search."""
    import tensorflow as tf

    from .augment import build_augmenter
    from .pipeline import file_dataset, memory_dataset

    augmenter = build_augmenter(cfg.augment, cfg.seed) if cfg.augment else None
    size = (cfg.img_size, cfg.img_size)
    train_ds = file_dataset(root, split.train, size, cfg.resize, cfg.batch_size, cfg.seed,
                            train=True, augmenter=augmenter, cache=cfg.cache,
                            cache_dir=out / "data_cache", interpolation=cfg.interpolation)
    val_ds = memory_dataset(x_va, y_va, cfg.batch_size, cfg.seed, train=False)
    if cfg.label_smoothing:
        train_ds, val_ds = (d.map(lambda x, y: (x, tf.one_hot(y, k)))
                            for d in (train_ds, val_ds))
    return train_ds, val_ds


def _fine_tune(cfg: TrainConfig, out: Path, resume: bool) -> Path:
    if resume:
        state = ckpt.load_state(out)
        cfg = replace(TrainConfig.load(out / "train_config.json"), out=str(out))
        print(f"resuming {out}: {state.phase} phase after epoch {state.epoch}, best val "
              f"score so far {state.best:.4f}", file=sys.stderr)
    else:
        cfg = replace(cfg, out=str(out))
        state = ckpt.State()
    warn(cfg)
    classes, split, root, data_report = _data(cfg, out, resume)
    cfg.save(out / "train_config.json")
    size = (cfg.img_size, cfg.img_size)
    t0 = time.time()
    x_va, y_va, skip_va = load_arrays(root, split.val, size, cfg.resize, cfg.interpolation)
    x_te, y_te, skip_te = load_arrays(root, split.test, size, cfg.resize, cfg.interpolation)
    skipped = skip_va + skip_te
    for line in skipped:
        print(f"warning: skipped {line}", file=sys.stderr)
    if not split.train or len(x_va) == 0 or len(x_te) == 0:
        raise EdgekitError(f"no decodable images left in a split of {cfg.data}")
    print(f"data ({data_report['layout']}): {len(classes)} classes, train {len(split.train)}, "
          f"val {len(x_va)}, test {len(x_te)} images; {len(data_report['rejected'])} files "
          f"rejected, imbalance {data_report['imbalance_ratio']} ({time.time() - t0:.1f} s)")

    import keras
    import tensorflow as tf

    from .pipeline import file_dataset

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()  # same seed, same model
    weights = None if cfg.weights.lower() == "none" else cfg.weights
    k = len(classes)
    steps = max(1, -(-len(split.train) // cfg.batch_size))
    train_ds, val_ds = datasets(cfg, root, split, k, out, x_va, y_va)
    cw = class_weights(split, k) if cfg.class_weights else None
    verbose = 1 if sys.stdout.isatty() else 2
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")  # our dataset is shuffled
    # Epoch 1 learns the length of a dataset that drops undecodable files; not an error.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    (out / "checkpoints").mkdir(exist_ok=True)

    def callbacks(phase_epochs: int) -> list:
        cbs = [ckpt.score_callback(len(x_va)),
               keras.callbacks.EarlyStopping(monitor=ckpt.SCORE, mode="max",
                                             patience=cfg.patience, restore_best_weights=True),
               keras.callbacks.CSVLogger(str(out / "history.csv"),
                                         append=resume or state.phase != "head"),
               ckpt.best_checkpoint(out, state), ckpt.callback(out, state),
               keras.callbacks.TensorBoard(log_dir=str(out / "logs"), write_graph=False)]
        if cfg.lr_schedule == "plateau":
            cbs.append(keras.callbacks.ReduceLROnPlateau(
                monitor=ckpt.SCORE, mode="max", factor=0.2,
                patience=max(1, cfg.patience // 2), min_lr=cfg.learning_rate / 1000))
        return cbs

    t_train = time.time()
    strategy = distribution_strategy(cfg.strategy)
    with strategy.scope():
        if resume:
            model = ckpt.load_model(ckpt.folder(out) / "last.keras")
            base = _find_base(model)
        else:
            model, base = build_and_compile(cfg, k, weights, steps)
    if state.phase == "head" and not state.phase_done:
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs,
                  initial_epoch=state.epoch, callbacks=callbacks(cfg.epochs),
                  class_weight=cw, verbose=verbose)
        ckpt.finish_phase(out, state, model)
    if weights is not None and cfg.fine_tune_epochs > 0:
        if state.phase == "head":
            with strategy.scope():
                _unfreeze_top(base, cfg.unfreeze)
                lr = _learning_rate(cfg, steps, cfg.learning_rate / 10, cfg.fine_tune_epochs)
                model.compile(optimizer=keras.optimizers.Adam(lr), loss=_loss(cfg),
                              metrics=["accuracy"])
            ckpt.start_phase(out, state, "fine_tune")
        if not state.phase_done:
            model.fit(train_ds, validation_data=val_ds, epochs=cfg.fine_tune_epochs,
                      initial_epoch=state.epoch, callbacks=callbacks(cfg.fine_tune_epochs),
                      class_weight=cw, verbose=verbose)
            ckpt.finish_phase(out, state, model)
    best = ckpt.folder(out) / "best.keras"
    if best.is_file():  # the best epoch of all phases and resumes, not merely the last
        model = ckpt.load_model(best)
    if weights is None:
        from .model import recalibrate_batchnorm

        plain = file_dataset(root, split.train, size, cfg.resize, cfg.batch_size, cfg.seed,
                             train=False, cache="none", interpolation=cfg.interpolation)
        recalibrate_batchnorm(model, (x for x, _ in plain))
    train_seconds = time.time() - t_train
    hist = state.history

    probs = model.predict(x_te.astype(np.float32), batch_size=cfg.batch_size, verbose=0)
    test = evaluate_predictions(probs, y_te, classes)
    val = evaluate_predictions(model.predict(x_va.astype(np.float32), verbose=0), y_va, classes)

    with atomic_path(out / "model.keras") as tmp:
        model.save(tmp)
    write_labels(out / "labels.txt", classes)
    manifest = Manifest(
        labels=classes, input_size=size, color_order="RGB",
        normalization=Normalization(0.0, 1.0), resize=cfg.resize,
        interpolation=cfg.interpolation,
        extra={
            "model": {"architecture": "MobileNetV2", "alpha": cfg.alpha,
                      "input_range": "0-255 RGB; scaled to [-1, 1] inside the model",
                      "weights": cfg.weights},
            "data": {"root": str(root.resolve()), "split": Split.to_dict(split),
                     "skipped": skipped},
            "training": cfg.to_dict() | {"seconds": round(train_seconds, 1),
                                         "resumed": resume},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": _environment(),
        })
    manifest.save(out / "manifest.json")
    write_json(out / "metrics.json", {"test": test, "val": {"top1": val["top1"]},
                                      "epochs_run": len(hist.get("loss", [])),
                                      "best_val_score_during_training": state.best,
                                      "class_weights": cw,
                                      "train_seconds": round(train_seconds, 1)})
    write_text(out / "metrics_summary.txt",
               f"test top1 {test['top1']:.4f} on {test['count']} held-out images\n")
    plot_history(hist, out / "training_curves.png")
    plot_confusion(np.asarray(test["confusion_matrix"]), classes, out / "confusion_matrix.png")
    print(f"test top-1 {test['top1']:.4f} on {test['count']} held-out images; "
          f"trained in {train_seconds:.0f} s; wrote {out}")
    return out


def _loss(cfg: TrainConfig):
    import keras

    if cfg.label_smoothing:
        return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def _learning_rate(cfg: TrainConfig, steps_per_epoch: int, base_lr: float, epochs: int):
    import keras

    warmup = cfg.warmup_epochs * steps_per_epoch
    if cfg.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else base_lr, decay_steps=max(1, epochs * steps_per_epoch - warmup),
            warmup_target=base_lr if warmup else None, warmup_steps=warmup)
    if warmup and cfg.lr_schedule == "constant":
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=1, alpha=1.0, warmup_target=base_lr, warmup_steps=warmup)
    return base_lr  # "plateau" needs a plain rate for ReduceLROnPlateau to lower


def distribution_strategy(name: str):
    """The tf.distribute strategy for ``name``; enables mixed precision on a GPU."""
    import keras
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise EdgekitError("--strategy multiworker needs the TF_CONFIG environment variable "
                               "describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def build_and_compile(cfg: TrainConfig, num_classes: int, weights: str | None,
                      steps_per_epoch: int = 1):
    """Builds the model for ``cfg`` and compiles it for head training."""
    import keras

    from .model import build_model

    model, base = build_model(num_classes, cfg.alpha, cfg.img_size, weights, cfg.dropout,
                              cfg.l2)
    lr = _learning_rate(cfg, steps_per_epoch, cfg.learning_rate, cfg.epochs)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=_loss(cfg), metrics=["accuracy"])
    return model, base


def _find_base(model):
    """The MobileNetV2 base inside a loaded model (the nested functional model)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise EdgekitError("checkpoint has no MobileNetV2 base model inside")


def _unfreeze_top(base, n: int) -> None:
    import keras

    base.trainable = True
    for layer in base.layers[:-n] if n > 0 else base.layers:
        layer.trainable = False
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # keep BatchNorm statistics frozen while fine-tuning


def _environment() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "platform": platform.platform()}
