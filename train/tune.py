"""``python -m train --tune``: KerasTuner search, then a full training run with the winner.

Searched: head learning rate (log scale), dropout, alpha, and the fine-tuning depth
(``--unfreeze``) when fine-tuning is on. Each trial trains ``tune_epochs`` head epochs
(and as many fine-tuning epochs) on the training split and is scored on the validation
split's best accuracy; the held-out test split is never seen. The trials live in
``runs/NAME/tuning/``, the winner in ``tuning/best_hyperparameters.json``, and the run
itself is then trained with it into ``runs/NAME`` as usual.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import write_json

from .config import TrainConfig, warn
from .core import cleanup, datasets, prepare_out, train_into, training_context
from .data import load_arrays
from .model import (
    build_and_compile,
    check_imagenet_weights,
    find_base,
    make_loss,
    unfreeze_top,
)
from .prepare import class_weights, prepare

TUNED_ALPHAS = (0.35, 0.5, 0.75, 1.0)


def search_space(hp, cfg: TrainConfig, fine_tuning: bool) -> TrainConfig:
    """Declares the hyperparameters on ``hp`` and returns ``cfg`` with this trial's values."""
    lr = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=cfg.learning_rate)
    dropout = hp.Float("dropout", 0.0, 0.5, step=0.1, default=min(0.5, round(cfg.dropout, 1)))
    alpha = hp.Choice("alpha", list(TUNED_ALPHAS),
                      default=cfg.alpha if cfg.alpha in TUNED_ALPHAS else 1.0)
    unfreeze = cfg.unfreeze
    if fine_tuning:
        unfreeze = hp.Int("unfreeze", 10, 100, step=10, default=min(100, max(10, cfg.unfreeze)))
    return replace(cfg, learning_rate=lr, dropout=dropout, alpha=alpha, unfreeze=unfreeze)


def tune_then_train(cfg: TrainConfig, max_trials: int = 10, tune_epochs: int = 5) -> Path:
    """Searches hyperparameters within ``max_trials``, then trains the best into ``cfg.out``.

    Returns:
        The run folder.

    Raises:
        EdgekitError: keras-tuner missing, bad data or settings.
    """
    try:
        import keras_tuner as kt
        import scipy  # noqa: F401 - BayesianOptimization needs it
    except ImportError:
        raise EdgekitError("--tune needs KerasTuner with its Bayesian extra: pip install "
                           "'keras-tuner[bayesian]>=1.4' (part of the train extra)") from None
    if not Path(cfg.data).exists():
        raise EdgekitError(f"data folder not found: {cfg.data}")
    if cfg.weights == "imagenet":  # offline: say so now, not after the data scan
        check_imagenet_weights(cfg.alpha, cfg.img_size)
    out, created = prepare_out(Path(cfg.out), cfg.force, False)
    try:
        return _search_and_train(kt, replace(cfg, out=str(out)), out, max_trials, tune_epochs)
    except (EdgekitError, KeyboardInterrupt) as e:
        cleanup(out, created, isinstance(e, KeyboardInterrupt))
        raise


def _search_and_train(kt, cfg: TrainConfig, out: Path, max_trials: int,
                      tune_epochs: int) -> Path:
    import keras

    warn(cfg)
    classes, split, root, _ = prepare(cfg.data, out, cfg.min_per_class, cfg.val_fraction,
                                      cfg.test_fraction, cfg.seed, cfg.field_test_fraction,
                                      cfg.field_block_seconds)
    k, size = len(classes), (cfg.img_size, cfg.img_size)
    weights = None if cfg.weights.lower() == "none" else cfg.weights
    fine_tuning = weights is not None and cfg.fine_tune_epochs > 0
    keras.utils.set_random_seed(cfg.seed)
    x_va, y_va, _ = load_arrays(root, split.val, size, cfg.resize, cfg.interpolation)
    train_ds, val_ds = datasets(cfg, root, split, k, out, x_va, y_va)
    steps = max(1, -(-len(split.train) // cfg.batch_size))
    cw = class_weights(split, k) if cfg.class_weights else None

    class MobileNetV2HyperModel(kt.HyperModel):
        def build(self, hp):
            trial = search_space(hp, cfg, fine_tuning)
            return build_and_compile(replace(trial, epochs=tune_epochs), k, weights, steps)[0]

        def fit(self, hp, model, *args, **kwargs):
            kwargs["epochs"] = tune_epochs
            best = max(model.fit(*args, **kwargs).history.get("val_accuracy", [0.0]))
            if fine_tuning:
                unfreeze_top(find_base(model), hp.get("unfreeze"))
                model.compile(optimizer=keras.optimizers.Adam(hp.get("learning_rate") / 10),
                              loss=make_loss(cfg), metrics=["accuracy"])
                more = model.fit(*args, **kwargs).history.get("val_accuracy", [0.0])
                best = max(best, *more)
            return {"val_accuracy": best}

    tuner = kt.BayesianOptimization(
        MobileNetV2HyperModel(), objective=kt.Objective("val_accuracy", "max"),
        max_trials=max_trials, seed=cfg.seed, directory=str(out), project_name="tuning",
        overwrite=True)
    t0 = time.time()
    print(f"tuning: up to {max_trials} trials of {tune_epochs} epoch(s) each", file=sys.stderr)
    with training_context(cfg):  # the seed, determinism and warning filters of training
        tuner.search(train_ds, validation_data=val_ds, class_weight=cw,
                     verbose=1 if sys.stdout.isatty() else 2)
    trials = sorted((t for t in tuner.oracle.trials.values() if t.score is not None),
                    key=lambda t: -t.score)
    if not trials:
        raise EdgekitError("no tuning trial finished")
    best = trials[0].hyperparameters.values
    write_json(out / "tuning" / "best_hyperparameters.json", {
        "best": best, "val_accuracy": trials[0].score, "seconds": round(time.time() - t0, 1),
        "trials": [{"hyperparameters": t.hyperparameters.values, "val_accuracy": t.score}
                   for t in trials]})
    print(f"tuning: best val accuracy {trials[0].score:.4f} with {best}; training the full "
          "run with it", file=sys.stderr)
    final = replace(cfg, learning_rate=float(best["learning_rate"]),
                    dropout=float(best["dropout"]), alpha=float(best["alpha"]),
                    unfreeze=int(best.get("unfreeze", cfg.unfreeze)))
    keras.backend.clear_session()
    return train_into(final, out, False)
