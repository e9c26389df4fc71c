"""Conversion: Keras model to float and int8 TFLite, each proven on the held-out split."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .export import ExportResult, export
    from .quantization import Quantization

# Imported on first use (PEP 562): ``python -m`` runs this file before ``__main__``, which
# must install the signal handlers before anything heavy loads.
_LAZY = {"ExportResult": ".export", "export": ".export", "Quantization": ".quantization"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = ["ExportResult", "Quantization", "export"]
