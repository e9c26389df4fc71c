"""edgekit's on-device runtime: TFLite/LiteRT classification of images and camera frames.

Needs only numpy, OpenCV and a TFLite interpreter; never imports TensorFlow or Keras.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import EdgekitError
from .lazy import lazy_getattr

if TYPE_CHECKING:
    from .classify import Class, Classifier, top_k
    from .manifest import Manifest, Normalization, load_manifest
    from .preprocess import load_image

# Imported on first use (PEP 562): ``python -m edge_runtime`` runs this file before its
# ``__main__``, which must install the signal handlers before numpy and OpenCV load.
_LAZY = {"Class": ".classify", "Classifier": ".classify", "top_k": ".classify",
         "Manifest": ".manifest", "Normalization": ".manifest", "load_manifest": ".manifest",
         "load_image": ".preprocess"}

__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = ["Class", "Classifier", "EdgekitError", "Manifest", "Normalization", "load_image",
           "load_manifest", "top_k"]
