"""edgekit's on-device runtime: TFLite/LiteRT classification of images and camera frames.

Needs only numpy, OpenCV and a TFLite interpreter; never imports TensorFlow or Keras.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import EdgekitError

if TYPE_CHECKING:
    from .classify import Class, Classifier, top_k
    from .manifest import Manifest, Normalization, load_manifest
    from .preprocess import load_image

# Imported on first use (PEP 562): ``python -m edge_runtime`` runs this file before its
# ``__main__``, which must install the signal handlers before numpy and OpenCV load.
_LAZY = {"Class": ".classify", "Classifier": ".classify", "top_k": ".classify",
         "Manifest": ".manifest", "Normalization": ".manifest", "load_manifest": ".manifest",
         "load_image": ".preprocess"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = ["Class", "Classifier", "EdgekitError", "Manifest", "Normalization", "load_image",
           "load_manifest", "top_k"]
