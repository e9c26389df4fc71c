"""Fine-tunes MobileNetV2 on an image folder and writes a complete, reproducible run folder."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import atomic_path, write_json, write_text
from edge_runtime.labels import write_labels
from edge_runtime.manifest import Manifest, Normalization

from .data import Split, load_arrays
from .prepare import class_weights, prepare


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (all recorded in the run's manifest).

    Attributes:
        data: folder with one subfolder of images per class.
        out: run folder to write.
        weights: "imagenet", "none" or a path to a local no-top ``.h5``.
        alpha: MobileNetV2 width multiplier.
        img_size: square input size.
        epochs: head-training epochs (early stopping may end sooner).
        fine_tune_epochs: extra epochs with the top ``unfreeze`` base layers trainable
            (transfer learning only).
        unfreeze: base layers to unfreeze for fine-tuning.
        batch_size: batch size.
        learning_rate: Adam learning rate (fine-tuning uses a tenth of it).
        dropout: dropout before the classifier.
        val_fraction: share of each class for validation (early stopping).
        test_fraction: share of each class held out, never seen in training.
        patience: early-stopping patience in epochs.
        augment: random flips, rotation, zoom and contrast in training only.
        resize: "center_crop" (keep the aspect ratio: crop the centre, then resize) or
            "stretch"; recorded in the manifest so the runtime does the same to frames.
        class_weights: weight the loss by inverse class frequency (imbalanced data).
        min_per_class: a class with fewer usable images is an error naming it.
        lr_schedule: "constant" or "cosine" (cosine decay to 0 over the run).
        warmup_epochs: linear learning-rate warm-up before the schedule.
        strategy: "default", "mirrored" (all local GPUs) or "multiworker" (TF_CONFIG);
            mixed precision is used whenever a GPU is present.
        seed: fixes the split, initialisation and shuffling.
        force: allow writing into an existing, non-empty run folder.
    """

    data: str
    out: str
    weights: str = "imagenet"
    alpha: float = 1.0
    img_size: int = 224
    epochs: int = 10
    fine_tune_epochs: int = 0
    unfreeze: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    dropout: float = 0.2
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    patience: int = 5
    augment: bool = True
    resize: str = "center_crop"
    class_weights: bool = True
    min_per_class: int = 5
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    strategy: str = "default"
    seed: int = 0
    force: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "img_size"):
            if getattr(self, name) < 1:
                raise EdgekitError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 0.5 or not 0 < self.test_fraction < 0.5:
            raise EdgekitError("val and test fractions must be in (0, 0.5), got "
                               f"{self.val_fraction} and {self.test_fraction}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise EdgekitError(f"lr_schedule {self.lr_schedule!r}, expected constant or cosine")
        if self.strategy not in ("default", "mirrored", "multiworker"):
            raise EdgekitError(f"strategy {self.strategy!r}, expected default, mirrored or "
                               "multiworker")
        if self.resize not in ("center_crop", "stretch"):
            raise EdgekitError(f"resize {self.resize!r}, expected center_crop or stretch")
        if self.img_size < 32:
            raise EdgekitError(f"img_size {self.img_size} is too small (minimum 32)")


def _augmenter(seed: int):
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.1, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom(0.15, fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomContrast(0.2, seed=seed + 3),
    ], name="augment")


def _dataset(x: np.ndarray, y: np.ndarray, batch: int, seed: int, train: bool, augment: bool):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if train:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch).map(lambda a, b: (tf.cast(a, tf.float32), b),
                             num_parallel_calls=tf.data.AUTOTUNE)
    if train and augment:
        aug = _augmenter(seed)
        ds = ds.map(lambda a, b: (tf.clip_by_value(aug(a, training=True), 0.0, 255.0), b),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def evaluate_predictions(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """Top-1 (top-5 where >= 5 classes), per-class accuracy and confusion matrix."""
    pred = probs.argmax(axis=1)
    k = len(classes)
    cm = np.zeros((k, k), np.int64)
    for t, p in zip(y, pred):
        cm[t, p] += 1
    out = {"top1": float((pred == y).mean()) if len(y) else 0.0, "count": int(len(y))}
    if k >= 5:
        top5 = np.argsort(-probs, axis=1)[:, :5]
        out["top5"] = float(np.mean([t in row for t, row in zip(y, top5)]))
    out["per_class"] = {c: float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None
                        for i, c in enumerate(classes)}
    prf = {}
    for i, c in enumerate(classes):
        tp, pred_n, true_n = cm[i, i], cm[:, i].sum(), cm[i].sum()
        p = float(tp / pred_n) if pred_n else 0.0
        r = float(tp / true_n) if true_n else 0.0
        prf[c] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                  "support": int(true_n)}
    out["per_class_metrics"] = prf
    out["confusion_matrix"] = cm.tolist()
    return out


def _plot_history(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("accuracy", "loss")):
        ax.plot(history.get(key, []), label=f"train {key}")
        ax.plot(history.get(f"val_{key}", []), label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _plot_confusion(cm: np.ndarray, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * k + 2), max(3.5, 0.5 * k + 1.5)))
    ax.imshow(cm, cmap="Blues")
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Held-out confusion matrix")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _save_keras(model, path: Path) -> None:
    with atomic_path(path) as tmp:
        model.save(tmp)


def _prepare_out(cfg: TrainConfig) -> tuple[Path, bool]:
    out = Path(cfg.out)
    created = not out.exists()
    if out.exists() and not out.is_dir():
        raise EdgekitError(f"run folder path is a file: {out}")
    if out.is_dir() and any(out.iterdir()) and not cfg.force:
        raise EdgekitError(f"run folder already exists and is not empty: {out} "
                           "(choose another --out, or pass --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    return out, created


def fine_tune(cfg: TrainConfig) -> Path:
    """Trains a MobileNetV2 classifier and writes the run folder.

    Writes ``model.keras``, ``labels.txt``, ``manifest.json`` (labels, input size, colour
    order, normalisation, split file lists, settings), ``metrics.json`` (held-out test
    results), ``history.csv`` and ``training_curves.png``.

    Returns:
        The run folder.

    Raises:
        EdgekitError: bad data, bad settings, or unusable weights.
    """
    if not Path(cfg.data).exists():
        raise EdgekitError(f"data folder not found: {cfg.data}")
    out, created = _prepare_out(cfg)
    try:
        classes, split, root, data_report = prepare(
            cfg.data, out, cfg.min_per_class, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    except EdgekitError:
        if created:
            shutil.rmtree(out, ignore_errors=True)  # leave no half-made run folder behind
        raise
    size = (cfg.img_size, cfg.img_size)
    t0 = time.time()
    x_tr, y_tr, skip_tr = load_arrays(root, split.train, size, cfg.resize)
    x_va, y_va, skip_va = load_arrays(root, split.val, size, cfg.resize)
    x_te, y_te, skip_te = load_arrays(root, split.test, size, cfg.resize)
    skipped = skip_tr + skip_va + skip_te
    for line in skipped:
        print(f"warning: skipped {line}", file=sys.stderr)
    if len(x_tr) == 0 or len(x_va) == 0 or len(x_te) == 0:
        raise EdgekitError(f"no decodable images left in a split of {cfg.data}")
    print(f"data ({data_report['layout']}): {len(classes)} classes, train {len(x_tr)}, "
          f"val {len(x_va)}, test {len(x_te)} images; {len(data_report['rejected'])} files "
          f"rejected, imbalance {data_report['imbalance_ratio']} ({time.time() - t0:.1f} s)")

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()  # same seed, same model
    weights = None if cfg.weights.lower() == "none" else cfg.weights
    steps = max(1, -(-len(x_tr) // cfg.batch_size))
    with distribution_strategy(cfg.strategy).scope():
        model, base = build_and_compile(cfg, len(classes), weights, steps)
    verbose = 1 if sys.stdout.isatty() else 2
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=cfg.patience,
                                      restore_best_weights=True),
        keras.callbacks.CSVLogger(str(out / "history.csv")),
        keras.callbacks.ModelCheckpoint(str(out / "checkpoints" / "best.keras"),
                                        monitor="val_accuracy", save_best_only=True),
        keras.callbacks.TensorBoard(log_dir=str(out / "logs"), write_graph=False),
    ]
    (out / "checkpoints").mkdir(exist_ok=True)
    cw = class_weights(split, len(classes)) if cfg.class_weights else None
    train_ds = _dataset(x_tr, y_tr, cfg.batch_size, cfg.seed, True, cfg.augment)
    val_ds = _dataset(x_va, y_va, cfg.batch_size, cfg.seed, False, False)
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")  # our dataset is shuffled
    t_train = time.time()
    hist = model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks,
                     class_weight=cw, verbose=verbose).history
    if weights is not None and cfg.fine_tune_epochs > 0:
        _unfreeze_top(base, cfg.unfreeze)
        lr = _learning_rate(cfg, steps, cfg.learning_rate / 10, cfg.fine_tune_epochs)
        model.compile(optimizer=keras.optimizers.Adam(lr),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        callbacks[1] = keras.callbacks.CSVLogger(str(out / "history.csv"), append=True)
        more = model.fit(train_ds, validation_data=val_ds, epochs=cfg.fine_tune_epochs,
                         callbacks=callbacks, class_weight=cw, verbose=verbose).history
        hist = {k: hist.get(k, []) + more.get(k, []) for k in set(hist) | set(more)}
    if weights is None:
        from .model import recalibrate_batchnorm

        recalibrate_batchnorm(model, x_tr, cfg.batch_size)
    train_seconds = time.time() - t_train

    probs = model.predict(x_te.astype(np.float32), batch_size=cfg.batch_size, verbose=0)
    test = evaluate_predictions(probs, y_te, classes)
    val = evaluate_predictions(model.predict(x_va.astype(np.float32), verbose=0), y_va, classes)

    _save_keras(model, out / "model.keras")
    write_labels(out / "labels.txt", classes)
    manifest = Manifest(
        labels=classes, input_size=size, color_order="RGB",
        normalization=Normalization(0.0, 1.0), resize=cfg.resize,
        extra={
            "model": {"architecture": "MobileNetV2", "alpha": cfg.alpha,
                      "input_range": "0-255 RGB; scaled to [-1, 1] inside the model",
                      "weights": cfg.weights},
            "data": {"root": str(root.resolve()), "split": Split.to_dict(split),
                     "skipped": skipped},
            "training": asdict(cfg) | {"seconds": round(train_seconds, 1)},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": _environment(),
        })
    manifest.save(out / "manifest.json")
    write_json(out / "metrics.json", {"test": test, "val": {"top1": val["top1"]},
                                      "epochs_run": len(hist.get("loss", [])),
                                      "class_weights": cw,
                                      "train_seconds": round(train_seconds, 1)})
    write_text(out / "metrics_summary.txt",
               f"test top1 {test['top1']:.4f} on {test['count']} held-out images\n")
    _plot_history(hist, out / "training_curves.png")
    _plot_confusion(np.asarray(test["confusion_matrix"]), classes, out / "confusion_matrix.png")
    print(f"test top-1 {test['top1']:.4f} on {test['count']} held-out images; "
          f"trained in {train_seconds:.0f} s; wrote {out}")
    return out


def _learning_rate(cfg: TrainConfig, steps_per_epoch: int, base_lr: float, epochs: int):
    import keras

    warmup = cfg.warmup_epochs * steps_per_epoch
    if cfg.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else base_lr, decay_steps=max(1, epochs * steps_per_epoch - warmup),
            warmup_target=base_lr if warmup else None, warmup_steps=warmup)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=1, alpha=1.0, warmup_target=base_lr, warmup_steps=warmup)
    return base_lr


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

    model, base = build_model(num_classes, cfg.alpha, cfg.img_size, weights, cfg.dropout)
    lr = _learning_rate(cfg, steps_per_epoch, cfg.learning_rate, cfg.epochs)
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, base


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
