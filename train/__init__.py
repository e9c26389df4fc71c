"""Training: fine-tunes MobileNetV2 on a folder of images (``python -m train``).

TensorFlow is imported only when training starts, so ``train.data`` and
``train.sample_data`` work on a device without it.
"""


def fine_tune(cfg, resume: bool = False):
    """Trains and writes a run folder; see :func:`train.core.fine_tune`."""
    from .core import fine_tune as _fine_tune

    return _fine_tune(cfg, resume=resume)


__all__ = ["fine_tune"]
