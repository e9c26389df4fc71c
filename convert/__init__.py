"""Conversion: Keras model to float and int8 TFLite, each proven on the held-out split."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_runtime.lazy import lazy_getattr

if TYPE_CHECKING:
    from .export import ExportResult, export
    from .quantization import Quantization

# Imported on first use (PEP 562): ``python -m`` runs this file before ``__main__``, which
# must install the signal handlers before anything heavy loads.
_LAZY = {"ExportResult": ".export", "export": ".export", "Quantization": ".quantization"}

__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = ["ExportResult", "Quantization", "export"]
