"""Conversion: Keras model to float and int8 TFLite, each proven on the held-out split."""

from .export import ExportResult, export
from .quantization import Quantization

__all__ = ["ExportResult", "Quantization", "export"]
