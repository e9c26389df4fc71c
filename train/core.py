"""Fine-tunes MobileNetV2 on an image folder and writes a complete, reproducible run folder."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
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
from .field import evaluate_field, field_record, summary
from .model import (
    check_imagenet_weights,
    find_base,
    make_learning_rate,
    make_loss,
    unfreeze_top,
)
from .prepare import class_weights, prepare
from .report import evaluate_predictions, plot_confusion, plot_history

__all__ = ["TrainConfig", "fine_tune", "evaluate_predictions"]


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
        cfg.data, out, cfg.min_per_class, cfg.val_fraction, cfg.test_fraction, cfg.seed,
        cfg.field_test_fraction, cfg.field_block_seconds)
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
        if cfg.weights == "imagenet":  # offline: say so now, not after the data scan
            check_imagenet_weights(cfg.alpha, cfg.img_size)
    out, created = prepare_out(Path(cfg.out), cfg.force, resume)
    try:
        return train_into(cfg, out, resume)
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


@dataclass(frozen=True)
class _Data:
    """The prepared data: classes, split and the decoded validation and test images."""

    classes: list[str]
    split: Split
    root: Path
    report: dict
    x_va: np.ndarray
    y_va: np.ndarray
    x_te: np.ndarray
    y_te: np.ndarray
    skipped: list[str]


@dataclass
class _Run:
    """One training run in progress: its settings, folder, checkpoint state and data."""

    cfg: TrainConfig
    out: Path
    resume: bool
    state: ckpt.State
    data: _Data
    cache: dict = field(default_factory=dict)  # decoded training images, when decoded

    @property
    def weights(self) -> str | None:
        """The base's starting weights; None trains from scratch."""
        return None if self.cfg.weights.lower() == "none" else self.cfg.weights

    @property
    def steps(self) -> int:
        """Training batches per epoch."""
        return max(1, -(-len(self.data.split.train) // self.cfg.batch_size))


def train_into(cfg: TrainConfig, out: Path, resume: bool) -> Path:
    """Trains into the prepared folder ``out``: settings, data, training, outputs."""
    run = _start(cfg, out, resume)
    with training_context(run.cfg) as strategy:
        _choose_augmentation(run)
        t0 = time.time()
        model = _train(run, strategy)
        train_seconds = time.time() - t0
        _write_outputs(run, model, train_seconds)
    from .policy import diagnose

    note = diagnose(run.state.history, run.cfg.augment is not None, run.cfg.patience)
    if note:
        print(note, file=sys.stderr)
    return out


def _choose_augmentation(run: _Run) -> None:
    """``--augment auto``: the pilot picks the augmentation (once; a resumed run keeps the
    recorded choice); then ``augment_preview.png`` shows what the model will see."""
    from .policy import choose_augmentation, describe, write_preview

    if run.cfg.augment_policy == "auto" and not run.resume:
        run.cfg, _ = choose_augmentation(run.cfg, run.data, run.weights, run.steps,
                                         run.cache)
        run.cfg.save(run.out / "train_config.json")
    else:
        print(f"augmentation: {run.cfg.augment_policy} ({describe(run.cfg.augment)})")
    write_preview(run.cfg, run.data.root, run.data.split.train,
                  run.out / "augment_preview.png", classes=run.data.classes)


def _start(cfg: TrainConfig, out: Path, resume: bool) -> _Run:
    """The settings (the recorded ones when resuming), checkpoint state and data."""
    if resume:
        state = ckpt.load_state(out)
        cfg = replace(TrainConfig.load(out / "train_config.json"), out=str(out))
        print(f"resuming {out}: {state.phase} phase after epoch {state.epoch}, best "
              f"{ckpt.SCORE} so far {state.best:.4f} ({ckpt.SCORE_MEANING})", file=sys.stderr)
    else:
        cfg = replace(cfg, out=str(out))
        state = ckpt.State()
    warn(cfg)
    data = _load_data(cfg, out, resume)
    cfg.save(out / "train_config.json")
    return _Run(cfg, out, resume, state, data)


def _load_data(cfg: TrainConfig, out: Path, resume: bool) -> _Data:
    """Prepares (or, resuming, re-reads) the split and decodes validation and test images."""
    classes, split, root, report = _data(cfg, out, resume)
    size = (cfg.img_size, cfg.img_size)
    t0 = time.time()
    x_va, y_va, skip_va = load_arrays(root, split.val, size, cfg.resize, cfg.interpolation)
    x_te, y_te, skip_te = load_arrays(root, split.test, size, cfg.resize, cfg.interpolation)
    skipped = skip_va + skip_te
    for line in skipped:
        print(f"warning: skipped {line}", file=sys.stderr)
    if not split.train or len(x_va) == 0 or len(x_te) == 0:
        raise EdgekitError(f"no decodable images left in a split of {cfg.data}")
    print(f"data ({report['layout']}): {len(classes)} classes, train {len(split.train)}, "
          f"val {len(x_va)}, test {len(x_te)} images; {len(report['rejected'])} files "
          f"rejected, imbalance {report['imbalance_ratio']} ({time.time() - t0:.1f} s)")
    return _Data(classes, split, root, report, x_va, y_va, x_te, y_te, skipped)


@contextlib.contextmanager
def training_context(cfg: TrainConfig) -> Iterator:
    """Seeds, op determinism, mixed precision on a GPU and the warning filters training
    needs; yields the distribution strategy. The warning filters, the global Keras
    dtype policy and op determinism are restored on exit, so a caller (a notebook, the
    tuner, a test) is left as it was; the seeds are not (re-seeding is the caller's)."""
    import keras
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    keras.utils.set_random_seed(cfg.seed)
    was_deterministic = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()  # same seed, same model
    policy = keras.mixed_precision.global_policy()
    gpu = bool(tf.config.list_physical_devices("GPU"))
    if gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        gpu_hint()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*shuffle=True.*")  # ours shuffles
            # Epoch 1 learns the length of a dataset that drops undecodable files.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            # Loading best.keras for its weights: the fresh optimizer has no state yet.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            yield distribution_strategy(cfg.strategy)
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if not was_deterministic:
            tf_config.disable_op_determinism()


def gpu_hint() -> str | None:
    """When TensorFlow sees no GPU but an NVIDIA one seems present, prints (and returns)
    one line saying how to use it; None otherwise."""
    if not (shutil.which("nvidia-smi") or Path("/dev/nvidia0").exists()):
        return None
    line = ("note: training on the CPU, but this machine seems to have an NVIDIA GPU "
            "(nvidia-smi or /dev/nvidia0 found) that TensorFlow cannot use: "
            "pip install -e '.[gpu]' in the edgekit checkout (TensorFlow with CUDA) "
            "to train on it")
    print(line, file=sys.stderr)
    return line


def _callbacks(run: _Run) -> list:
    """The callbacks of every training phase (the score first: the others monitor it)."""
    import keras

    cfg, out = run.cfg, run.out
    cbs = [ckpt.score_callback(len(run.data.x_va)),
           keras.callbacks.EarlyStopping(monitor=ckpt.SCORE, mode="max",
                                         patience=cfg.patience, restore_best_weights=True),
           keras.callbacks.CSVLogger(str(out / "history.csv"),
                                     append=run.resume or run.state.phase != "head"),
           ckpt.best_checkpoint(out, run.state), ckpt.callback(out, run.state),
           keras.callbacks.TensorBoard(log_dir=str(out / "logs"), write_graph=False)]
    if cfg.lr_schedule == "plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(
            monitor=ckpt.SCORE, mode="max", factor=0.2,
            patience=max(1, cfg.patience // 2), min_lr=cfg.learning_rate / 1000))
    return cbs


def _train(run: _Run, strategy):
    """Runs the phases still to run (head, then fine-tuning) and returns the best model."""
    from .model import build_and_compile

    cfg, d = run.cfg, run.data
    train_ds, val_ds = datasets(cfg, d.root, d.split, len(d.classes), run.out, d.x_va, d.y_va)
    (run.out / "checkpoints").mkdir(exist_ok=True)
    print(f"{ckpt.SCORE} (picks the best epoch): {ckpt.SCORE_MEANING}", file=sys.stderr)
    with strategy.scope():
        if run.resume:
            model = ckpt.load_model(ckpt.folder(run.out) / "last.keras")
            base = find_base(model)
        else:
            model, base = build_and_compile(cfg, len(d.classes), run.weights, run.steps)
    if run.state.phase == "head" and not run.state.phase_done:
        if _head_on_features(run, strategy):
            _fit_head_on_features(run, model)
        else:
            _fit(run, model, cfg.epochs, train_ds, val_ds)
    if run.weights is not None and cfg.fine_tune_epochs > 0:
        if run.state.phase == "head":
            _start_fine_tuning(run, model, base, strategy)
        if not run.state.phase_done:
            _fit(run, model, cfg.fine_tune_epochs, train_ds, val_ds)
    return _best_model(run, model)


def _fit(run: _Run, model, epochs: int, train_ds, val_ds) -> None:
    """Trains the current phase from its recorded epoch to ``epochs`` and records it done."""
    cw = class_weights(run.data.split, len(run.data.classes)) if run.cfg.class_weights else None
    model.fit(train_ds, validation_data=val_ds, epochs=epochs,
              initial_epoch=run.state.epoch, callbacks=_callbacks(run), class_weight=cw,
              verbose=1 if sys.stdout.isatty() else 2)
    ckpt.finish_phase(run.out, run.state, model)


def _head_on_features(run: _Run, strategy) -> bool:
    """A frozen base and no augmentation: every epoch would compute the same features."""
    import tensorflow as tf

    return (run.weights is not None and run.cfg.augment is None and run.state.epoch == 0
            and not run.resume and strategy is tf.distribute.get_strategy())


def _fit_head_on_features(run: _Run, model) -> None:
    """The frozen phase on base features computed once (see :mod:`train.policy`)."""
    from .data import load_arrays
    from .policy import fit_head_on_features

    cfg, d = run.cfg, run.data
    if "x_tr" not in run.cache:
        x, y, _ = load_arrays(d.root, d.split.train, (cfg.img_size, cfg.img_size),
                              cfg.resize, cfg.interpolation)
        run.cache.update(x_tr=x, y_tr=y)
    cw = class_weights(d.split, len(d.classes)) if cfg.class_weights else None
    lr = make_learning_rate(cfg, run.steps, cfg.learning_rate, cfg.epochs)
    _, t_feat, t_fit = fit_head_on_features(
        model, cfg, lr, run.cache["x_tr"], run.cache["y_tr"], d.x_va, d.y_va, cfg.epochs,
        callbacks=_callbacks(run), class_weight=cw,
        verbose=1 if sys.stdout.isatty() else 2)
    print(f"frozen phase on cached base features: {t_feat:.1f} s computing them once, "
          f"{t_fit:.1f} s training the head", file=sys.stderr)
    ckpt.finish_phase(run.out, run.state, model)


def _start_fine_tuning(run: _Run, model, base, strategy) -> None:
    """Unfreezes the top of the base and recompiles at a tenth of the learning rate."""
    import keras

    cfg = run.cfg
    with strategy.scope():
        unfreeze_top(base, cfg.unfreeze)
        lr = make_learning_rate(cfg, run.steps, cfg.learning_rate / 10, cfg.fine_tune_epochs)
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=make_loss(cfg),
                      metrics=["accuracy"])
    ckpt.start_phase(run.out, run.state, "fine_tune")


def _best_model(run: _Run, model):
    """The best epoch of all phases and resumes, not merely the last; trained from
    scratch, with its BatchNorm statistics re-estimated on the training images."""
    best = ckpt.folder(run.out) / "best.keras"
    if best.is_file():
        model = ckpt.load_model(best)
    if run.weights is None:
        from .model import recalibrate_batchnorm
        from .pipeline import file_dataset

        cfg, d = run.cfg, run.data
        plain = file_dataset(d.root, d.split.train, (cfg.img_size, cfg.img_size), cfg.resize,
                             cfg.batch_size, cfg.seed, train=False, cache="none",
                             interpolation=cfg.interpolation)
        recalibrate_batchnorm(model, (x for x, _ in plain))
    return model


def _write_outputs(run: _Run, model, train_seconds: float) -> None:
    """Evaluates on the held-out split and writes the model, labels, manifest, metrics
    and plots."""
    cfg, out, d = run.cfg, run.out, run.data
    probs = model.predict(d.x_te.astype(np.float32), batch_size=cfg.batch_size, verbose=0)
    test = evaluate_predictions(probs, d.y_te, d.classes)
    val = evaluate_predictions(model.predict(d.x_va.astype(np.float32), verbose=0), d.y_va,
                               d.classes)
    field = evaluate_field(model, d.root, d.report, d.classes, cfg)  # None: no field images
    with atomic_path(out / "model.keras") as tmp:
        model.save(tmp)
    write_labels(out / "labels.txt", d.classes)
    manifest = Manifest(
        labels=d.classes, input_size=(cfg.img_size, cfg.img_size), color_order="RGB",
        normalization=Normalization(0.0, 1.0), resize=cfg.resize,
        interpolation=cfg.interpolation,
        extra={
            "model": {"architecture": "MobileNetV2", "alpha": cfg.alpha,
                      "input_range": "0-255 RGB; scaled to [-1, 1] inside the model",
                      "weights": cfg.weights},
            "data": {"root": str(d.root.resolve()), "split": Split.to_dict(d.split),
                     "skipped": d.skipped} | field_record(d.report),
            "training": cfg.to_dict() | {"seconds": round(train_seconds, 1),
                                         "resumed": run.resume},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": _environment(),
        })
    manifest.save(out / "manifest.json")
    hist = run.state.history
    cw = class_weights(d.split, len(d.classes)) if cfg.class_weights else None
    write_json(out / "metrics.json", {"test": test, "val": {"top1": val["top1"]},
                                      "epochs_run": len(hist.get("loss", [])),
                                      "best_val_score_during_training": run.state.best,
                                      "val_score_meaning": ckpt.SCORE_MEANING,
                                      "class_weights": cw,
                                      "train_seconds": round(train_seconds, 1)}
               | ({"field_test": field} if field else {}))
    write_text(out / "metrics_summary.txt", summary(test, field))
    plot_history(hist, out / "training_curves.png")
    plot_confusion(np.asarray(test["confusion_matrix"]), d.classes,
                   out / "confusion_matrix.png")
    print(f"{summary(test, field).strip().replace(chr(10), '; ')}; trained in "
          f"{train_seconds:.0f} s; wrote {out}")


def distribution_strategy(name: str):
    """The tf.distribute strategy for ``name`` (mixed precision: see
    :func:`training_context`)."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise EdgekitError("--strategy multiworker needs the TF_CONFIG environment variable "
                               "describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _environment() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "platform": platform.platform()}
