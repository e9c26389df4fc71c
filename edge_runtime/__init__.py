"""edgekit's on-device runtime: TFLite/LiteRT classification of images and camera frames.

Needs only numpy, OpenCV and a TFLite interpreter; never imports TensorFlow or Keras.
"""

from .classify import Class, Classifier, top_k
from .errors import EdgekitError
from .manifest import Manifest, Normalization, load_manifest
from .preprocess import load_image

__all__ = ["Class", "Classifier", "EdgekitError", "Manifest", "Normalization", "load_image",
           "load_manifest", "top_k"]
