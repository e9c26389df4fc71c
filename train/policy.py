"""Chooses augmentation from the data: a short pilot of candidate policies scored on the
validation split (never the test split), the head trained on cached base features where
the base is frozen and nothing is augmented, a preview of what the model sees, and a
one-line diagnosis when training under augmentation cannot keep up.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.fileio import write_json

from .augment import Augment


def preset(name: str, flip: str = "none") -> Augment | None:
    """The augmentation of a named policy: "none", "light" or "classic" (``flip`` added).

    light: small rotation, shift and zoom, mild brightness and contrast: what a model
    trained in a short budget can still fit. classic: the ImageDataGenerator recipe.
    """
    if name == "none":
        return None
    if name == "light":
        return Augment(rotation=15, shift=0.1, shear=0.0, zoom=0.1, flip=flip,
                       brightness=(0.8, 1.25), contrast=0.1)
    if name == "classic":
        return replace(Augment(), flip=flip)
    raise ValueError(f"augmentation policy {name!r}, expected none, light or classic")


MIN_PILOT_STEPS = 30  # fewer optimizer steps leave every candidate near chance


def pilot_epochs(epochs: int, steps_per_epoch: int = 1000) -> int:
    """Epochs per pilot candidate: a sixth of the run's, between 2 and 5, but at least
    :data:`MIN_PILOT_STEPS` steps (tiny datasets), never more than the run itself."""
    at_least = -(-MIN_PILOT_STEPS // max(1, steps_per_epoch))
    return min(epochs, max(2, min(5, epochs // 6), at_least))


def _features(model, x: np.ndarray, batch: int) -> np.ndarray:
    """The frozen base's pooled features (the classifier's Dropout input) of ``x``."""
    import keras

    extractor = keras.Model(model.inputs, model.get_layer("dropout").input)
    return extractor.predict(x.astype(np.float32), batch_size=batch, verbose=0)


def head_model(model, cfg, lr):
    """A model of the head alone (Dropout + classifier) on base features, starting from
    ``model``'s classifier weights and compiled like it (learning rate ``lr``)."""
    import keras

    from .model import make_loss

    clf = model.get_layer("classifier")
    n_in = int(clf.kernel.shape[0])
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 else None
    inp = keras.Input((n_in,), name="features")
    x = keras.layers.Dropout(cfg.dropout, name="dropout")(inp)
    out = keras.layers.Dense(clf.units, activation="softmax", kernel_regularizer=reg,
                             dtype="float32", name="classifier")(x)
    head = keras.Model(inp, out, name="head")
    head.get_layer("classifier").set_weights(clf.get_weights())
    head.compile(optimizer=keras.optimizers.Adam(lr), loss=make_loss(cfg),
                 metrics=["accuracy"])
    return head


class _OnModel:
    """Runs a callback against another model (the full one) while the head trains."""

    @staticmethod
    def wrap(cb, full):
        import keras

        class Wrapped(keras.callbacks.Callback):
            def set_model(self, model):
                cb.set_model(full)

            def set_params(self, params):
                cb.set_params(params)

            def on_train_begin(self, logs=None):
                cb.on_train_begin(logs)

            def on_epoch_begin(self, epoch, logs=None):
                cb.on_epoch_begin(epoch, logs)

            def on_epoch_end(self, epoch, logs=None):
                cb.on_epoch_end(epoch, logs)

            def on_train_end(self, logs=None):
                cb.on_train_end(logs)

        return Wrapped()


def _copy_head(head, full) -> None:
    full.get_layer("classifier").set_weights(head.get_layer("classifier").get_weights())


def fit_head_on_features(model, cfg, lr, x_tr, y_tr, x_va, y_va, epochs: int, callbacks=(),
                         class_weight=None, initial_epoch: int = 0, verbose: int = 0):
    """Trains ``model``'s classifier on base features computed once (frozen base, no
    augmentation: every epoch would compute the same features again).

    Callbacks that save the model (checkpoints) see the full ``model``, its classifier
    updated before each save; the others (early stopping) act on the head.

    Returns:
        (history dict, seconds spent computing features, seconds spent training).
    """
    import keras

    t0 = time.time()
    f_tr, f_va = _features(model, x_tr, cfg.batch_size), _features(model, x_va, cfg.batch_size)
    t_feat = time.time() - t0
    head = head_model(model, cfg, lr)
    if cfg.label_smoothing:
        k = model.get_layer("classifier").units
        y_tr, y_va = np.eye(k, dtype=np.float32)[y_tr], np.eye(k, dtype=np.float32)[y_va]

    class Copy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            _copy_head(self.model, model)

    cbs = [Copy()]
    for cb in callbacks:
        saves = isinstance(cb, keras.callbacks.ModelCheckpoint) or \
            type(cb).__module__.endswith("checkpoint")
        cbs.append(_OnModel.wrap(cb, model) if saves else cb)
    t1 = time.time()
    hist = head.fit(f_tr, y_tr, validation_data=(f_va, y_va), epochs=epochs,
                    initial_epoch=initial_epoch, batch_size=cfg.batch_size, shuffle=True,
                    callbacks=cbs, class_weight=class_weight, verbose=verbose)
    _copy_head(head, model)  # early stopping may have restored the best weights
    return hist.history, t_feat, time.time() - t1


def _candidates(cfg) -> list[tuple[str, Augment | None]]:
    return [("none", None), ("light", preset("light")), ("classic", preset("classic"))]


def _score(history: dict, n_val: int) -> float:
    """Best epoch's val accuracy, ties to the lower val loss (as checkpoints score)."""
    acc, loss = history["val_accuracy"], history["val_loss"]
    return max(a + 1.0 / (1.0 + max(0.0, v)) / (n_val + 1) for a, v in zip(acc, loss))


def choose_augmentation(cfg, data, weights, steps: int, cached: dict | None = None):
    """Runs the pilot and returns the settings with the winning augmentation.

    Candidates: none, light and classic without flips, then the winner with a horizontal
    flip. Each trains a fresh model (same seed) for :func:`pilot_epochs` epochs and is
    scored on the validation split; on equal accuracy the lighter policy wins, and the
    flip must be more accurate to be kept. Writes ``augment_pilot.json`` in the run folder.

    Args:
        cfg: the run's settings (``augment_policy`` "auto").
        data: the prepared data (``root``, ``split``, ``classes``, ``x_va``, ``y_va``).
        weights: the base's starting weights (None: from scratch).
        steps: training batches per epoch.
        cached: filled with the decoded training arrays (reused by the caller).

    Returns:
        (settings with ``augment`` chosen, the pilot record).
    """
    import keras

    t_start = time.time()
    pilot = _Pilot.start(cfg, data, weights, steps)
    if cached is not None:
        cached.update(x_tr=pilot.x_tr, y_tr=pilot.y_tr)
    print(f"augmentation pilot: {pilot.epochs} epochs per candidate, scored on the "
          f"validation split ({len(data.y_va)} images)", file=sys.stderr)
    results = [_trial(pilot, name, aug) for name, aug in _candidates(cfg)]
    best = _winner(pilot, results)
    chosen = (None if best["augment"] is None else
              Augment(**(best["augment"] | {"brightness": tuple(best["augment"]["brightness"])})))
    record = {"epochs_per_candidate": pilot.epochs, "scored_on": "validation split",
              "candidates": results, "winner": best["policy"],
              "seconds": round(time.time() - t_start, 1)}
    write_json(Path(cfg.out) / "augment_pilot.json", record)
    print(f"augmentation: {best['policy']} ({describe(chosen)}; won the pilot on the "
          f"validation split in {record['seconds']:.0f} s, see augment_pilot.json; "
          "--augment none|light|classic overrides)")
    keras.utils.set_random_seed(cfg.seed)
    return replace(cfg, augment=chosen), record


@dataclass
class _Pilot:
    """What every candidate of one pilot shares."""

    cfg: Any
    data: Any
    weights: str | None
    steps: int
    epochs: int
    x_tr: np.ndarray
    y_tr: np.ndarray
    class_weight: dict | None

    @classmethod
    def start(cls, cfg, data, weights, steps: int) -> _Pilot:
        """Decodes the training images once for all candidates."""
        from .data import load_arrays
        from .prepare import class_weights

        x_tr, y_tr, _ = load_arrays(data.root, data.split.train, (cfg.img_size, cfg.img_size),
                                    cfg.resize, cfg.interpolation)
        cw = class_weights(data.split, len(data.classes)) if cfg.class_weights else None
        return cls(cfg, data, weights, steps, pilot_epochs(cfg.epochs, steps), x_tr, y_tr, cw)


def _winner(pilot: _Pilot, results: list[dict]) -> dict:
    """The best of ``results``, then tried with a horizontal flip (appended to ``results``)."""
    n_val = len(pilot.data.y_va)

    def correct(row: dict) -> int:  # validation images right at the best epoch
        return round(max(row["val_accuracy"]) * n_val)

    # Equally accurate candidates go to the lighter policy (listed first): a pilot this
    # short cannot tell them apart, and strong augmentation is what fails to fit.
    best = max(results, key=lambda r: (correct(r), -results.index(r)))
    if best["policy"] != "none":
        flipped = replace(preset(best["policy"]), flip="horizontal")
        row = _trial(pilot, best["policy"] + "+flip", flipped)
        results.append(row)
        if correct(row) > correct(best):  # flipping must earn its place
            best = row
    return best


def _trial(pilot: _Pilot, name: str, aug: Augment | None) -> dict:
    """Trains one candidate from the same seed and returns its pilot record row."""
    import keras

    from .model import build_and_compile, make_learning_rate

    t0, cfg = time.time(), pilot.cfg
    keras.utils.set_random_seed(cfg.seed)
    trial_cfg = replace(cfg, augment=aug, epochs=pilot.epochs, lr_schedule="constant"
                        if cfg.lr_schedule == "plateau" else cfg.lr_schedule)
    model, _ = build_and_compile(trial_cfg, len(pilot.data.classes), pilot.weights, pilot.steps)
    if pilot.weights is not None and aug is None:
        lr = make_learning_rate(trial_cfg, pilot.steps, cfg.learning_rate, pilot.epochs)
        hist, _, _ = fit_head_on_features(model, trial_cfg, lr, pilot.x_tr, pilot.y_tr,
                                          pilot.data.x_va, pilot.data.y_va, pilot.epochs,
                                          class_weight=pilot.class_weight)
        how = "cached features"
    else:
        hist, how = _fit_on_images(pilot, model, aug), "images"
    row = {"policy": name, "augment": aug.to_dict() if aug else None,
           "val_accuracy": [round(float(a), 4) for a in hist["val_accuracy"]],
           "train_accuracy": [round(float(a), 4) for a in hist["accuracy"]],
           "score": round(_score(hist, len(pilot.data.y_va)), 5), "trained_on": how,
           "seconds": round(time.time() - t0, 1)}
    print(f"  {name:14s} best val accuracy {max(hist['val_accuracy']):.3f} "
          f"({row['seconds']:.0f} s)", file=sys.stderr)
    keras.backend.clear_session(free_memory=True)
    return row


def _fit_on_images(pilot: _Pilot, model, aug: Augment | None) -> dict:
    """Trains ``model`` on the (augmented) decoded images; returns its history."""
    from .augment import build_augmenter
    from .model import recalibrate_batchnorm
    from .pipeline import memory_dataset

    cfg, k, y_va = pilot.cfg, len(pilot.data.classes), pilot.data.y_va
    x_tr, yt, yv = pilot.x_tr, pilot.y_tr, y_va
    if cfg.label_smoothing:
        yt, yv = np.eye(k, dtype=np.float32)[yt], np.eye(k, dtype=np.float32)[y_va]
    augmenter = build_augmenter(aug, cfg.seed) if aug else None
    tr = memory_dataset(x_tr, yt, cfg.batch_size, cfg.seed, train=True, augmenter=augmenter)
    va = memory_dataset(pilot.data.x_va, yv, cfg.batch_size, cfg.seed, train=False)
    if pilot.weights is not None:
        return model.fit(tr, validation_data=va, epochs=pilot.epochs,
                         class_weight=pilot.class_weight, verbose=0).history
    # From scratch, BatchNorm's moving statistics lag far behind a few epochs of training
    # (validation would sit at chance for every candidate): train, re-estimate them on the
    # training images as the run does, then score once.
    hist = model.fit(tr, epochs=pilot.epochs, class_weight=pilot.class_weight,
                     verbose=0).history
    recalibrate_batchnorm(model, (x_tr[i:i + cfg.batch_size].astype(np.float32)
                                  for i in range(0, len(x_tr), cfg.batch_size)))
    loss, acc = model.evaluate(va, verbose=0)
    return hist | {"val_accuracy": [acc], "val_loss": [loss]}


def write_preview(cfg, root: Path, items, path: Path, n: int = 24,
                  classes: list[str] | None = None) -> Path:
    """A grid of training images after augmentation, as the model sees them, each with its
    class (``classes`` by index; else the image's folder)."""
    from .augment import build_augmenter
    from .data import load_arrays
    from .report import plot_preview

    step = max(1, len(items) // n)
    picked = list(items)[::step][:n]
    x, y, _ = load_arrays(root, picked, (cfg.img_size, cfg.img_size), cfg.resize,
                          cfg.interpolation)
    augmenter = build_augmenter(cfg.augment, cfg.seed) if cfg.augment else None
    shown = x.astype(np.float32)
    if augmenter is not None:
        shown = np.asarray(augmenter(shown, training=True))
    folder = {ci: Path(rel).parent.name for rel, ci in picked}
    names = [classes[i] if classes else folder[i] for i in y.tolist()]
    plot_preview(shown, names, f"Training images as the model sees them "
                 f"({len(shown)} of {len(items)}): {describe(cfg.augment)}", path)
    return path


def describe(aug: Augment | None) -> str:
    """The augmentation in words, the settings that are on only."""
    if aug is None:
        return "no augmentation"
    parts = [f"rotation {aug.rotation:g}", f"shift {aug.shift:g}", f"shear {aug.shear:g}",
             f"zoom {aug.zoom:g}", f"flip {aug.flip}",
             f"brightness {aug.brightness[0]:g}-{aug.brightness[1]:g}",
             f"contrast {aug.contrast:g}"]
    return ", ".join(p for p in parts if not p.endswith(" 0") and p != "flip none"
                     and p != "brightness 1-1")


def diagnose(history: dict, augmented: bool, patience: int) -> str | None:
    """One line when training under augmentation cannot keep up with validation, or
    validation stopped improving while training is still far from fitting; else None."""
    acc, val = history.get("accuracy") or [], history.get("val_accuracy") or []
    if len(acc) < 2 or len(val) < 2:
        return None
    tail = max(1, min(3, len(acc) // 4))
    train_end = float(np.mean(acc[-tail:]))
    val_best = float(max(val))
    if augmented and val_best - train_end > 0.1:
        return (f"note: training accuracy under augmentation ({train_end:.2f}) stayed far "
                f"below validation accuracy ({val_best:.2f}): the augmentation is more than "
                "the model can learn in this budget; try --augment light or none, or more "
                "--epochs")
    best_epoch = int(np.argmax(val)) + 1
    if len(val) - best_epoch >= max(2, patience) and train_end < 0.8:
        return (f"note: validation accuracy stopped improving at epoch {best_epoch} while "
                f"training accuracy is only {train_end:.2f}: the model underfits; try "
                "weaker augmentation, a higher --learning-rate, more --epochs or a larger "
                "--alpha")
    return None
