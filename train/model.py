"""Builds the MobileNetV2 transfer-learning classifier (pixel scaling inside the model) and
what compiles and fine-tunes it: loss, learning-rate schedule, the base inside a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.errors import EdgekitError

if TYPE_CHECKING:  # train.config imports this module's ALPHAS
    from .config import TrainConfig

ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_SIZES = (96, 128, 160, 192, 224)
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


def imagenet_weights_name(alpha: float, img_size: int) -> str:
    """The no-top file Keras downloads for MobileNetV2 (224 px ones for other sizes)."""
    rows = img_size if img_size in IMAGENET_SIZES else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def check_imagenet_weights(alpha: float, img_size: int, timeout: float = 10.0) -> None:
    """Before the data scan: the ImageNet weights are in Keras' cache or their URL answers.

    Raises:
        EdgekitError: neither, with the reason (no DNS, refused, HTTP status) and the fix.
    """
    import urllib.error
    import urllib.request

    name = imagenet_weights_name(alpha, img_size)
    homes = [Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras"), Path("/tmp/.keras")]
    if any((h / "models" / name).is_file() for h in homes):
        return
    try:
        with urllib.request.urlopen(urllib.request.Request(WEIGHTS_URL + name, method="HEAD"),
                                    timeout=timeout):
            return
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code} {e.reason}"
    except (urllib.error.URLError, OSError) as e:
        reason = str(getattr(e, "reason", None) or e)
    raise EdgekitError(f"cannot download the ImageNet weights {name} ({reason}); offline, pass "
                       "--weights PATH to that no-top .h5 file, or --weights none")


def build_model(num_classes: int, alpha: float = 1.0, img_size: int = 224,
                weights: str | None = "imagenet", dropout: float = 0.2, l2: float = 0.0):
    """MobileNetV2 base (no top, average pooling) + Dropout + Dense softmax.

    The model takes raw 0-255 RGB; scaling to [-1, 1] (``mobilenet_v2.preprocess_input``)
    is a layer inside it, so the exported model needs no normalisation outside.

    Args:
        num_classes: output classes.
        alpha: width multiplier.
        img_size: square input size in pixels.
        weights: "imagenet", None (random init), or a path to a local ``.h5`` weights file
            (the no-top file Keras would download, for offline machines).
        dropout: dropout rate before the classifier.
        l2: L2 penalty on the classifier's kernel (0 = none).

    Returns:
        (model, base): the full model and its MobileNetV2 base.

    Raises:
        EdgekitError: bad alpha, missing weights file, or ImageNet weights unreachable.
    """
    import keras

    if alpha not in ALPHAS:
        raise EdgekitError(f"alpha {alpha}, expected one of {list(ALPHAS)}")
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise EdgekitError(f"weights file not found: {weights}")
    from_scratch = weights is None
    try:
        base = keras.applications.MobileNetV2(
            input_shape=(img_size, img_size, 3), alpha=alpha, include_top=False,
            weights=weights, pooling="avg")
    except ValueError as e:
        raise EdgekitError(f"cannot build MobileNetV2: {e}") from None
    except Exception as e:  # noqa: BLE001 - download or HDF5 errors come in many types
        if weights == "imagenet":
            reason = str(e).rpartition(" -- ")[2] or type(e).__name__  # Keras: "URL ... -- why"
            raise EdgekitError(
                f"could not download the ImageNet weights ({reason[:120]}); on an offline "
                "machine pass --weights PATH to the local no-top .h5 file, or --weights none"
            ) from None
        raise EdgekitError(f"cannot load weights {weights}: {e}") from None
    inputs = keras.Input((img_size, img_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_1")(inputs)
    if from_scratch:
        # Nothing to transfer: train the whole network. MobileNetV2's BatchNorm momentum
        # (0.999) is far too slow for a few hundred steps; the moving statistics would
        # never leave their initial values and held-out accuracy would sit at chance.
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
        x = base(x)
    else:
        base.trainable = False
        x = base(x, training=False)  # BatchNorm stays in inference mode, also when fine-tuning
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    reg = keras.regularizers.L2(l2) if l2 else None
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg,
                                 dtype="float32", name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"mobilenetv2_{alpha}_{img_size}"), base


def batchnorm_layers(model) -> list:
    """All BatchNormalization layers, nested models included."""
    import keras

    found, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return found


def recalibrate_batchnorm(model, batches) -> None:
    """Re-estimates BatchNorm moving statistics as an exact average over ``batches``.

    After training from scratch, the moving averages lag the weights; averaging the
    batch statistics of the final weights over the training set fixes the train/test gap.
    """
    import numpy as np

    bns = batchnorm_layers(model)
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, "float32"))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, "float32"))
    try:
        for i, batch in enumerate(batches):
            for bn in bns:
                bn.momentum = i / (i + 1)  # running mean of per-batch statistics
            model(np.asarray(batch, "float32"), training=True)
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m


def make_loss(cfg: TrainConfig):
    """Cross-entropy, with label smoothing when ``cfg`` asks (one-hot labels then)."""
    import keras

    if cfg.label_smoothing:
        return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def make_learning_rate(cfg: TrainConfig, steps_per_epoch: int, base_lr: float,
                       epochs: int):
    """The rate or schedule ``cfg.lr_schedule`` names, after ``cfg.warmup_epochs`` of warm-up."""
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


def build_and_compile(cfg: TrainConfig, num_classes: int, weights: str | None,
                      steps_per_epoch: int = 1):
    """Builds the model for ``cfg`` and compiles it for head training."""
    import keras

    model, base = build_model(num_classes, cfg.alpha, cfg.img_size, weights, cfg.dropout,
                              cfg.l2)
    lr = make_learning_rate(cfg, steps_per_epoch, cfg.learning_rate, cfg.epochs)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=make_loss(cfg),
                  metrics=["accuracy"])
    return model, base


def find_base(model):
    """The MobileNetV2 base inside a loaded model (the nested functional model)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise EdgekitError("checkpoint has no MobileNetV2 base model inside")


def unfreeze_top(base, n: int) -> None:
    """Makes the top ``n`` layers of ``base`` trainable (none when ``n`` <= 0), BatchNorm
    excepted."""
    import keras

    base.trainable = True
    for layer in base.layers[:-n] if n > 0 else base.layers:
        layer.trainable = False
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # keep BatchNorm statistics frozen while fine-tuning
