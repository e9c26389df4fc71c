"""Benchmarks: latency, memory, accuracy and the camera pipeline for every exported variant
(``python -m benchmarks``); results schema in ``benchmarks/SCHEMA.md``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_runtime.lazy import lazy_getattr

if TYPE_CHECKING:
    from .core import BenchOptions, benchmark, run

# Imported on first use (PEP 562): ``python -m`` runs this file before ``__main__``, which
# must install the signal handlers before anything heavy loads.
_LAZY = {"BenchOptions": ".core", "benchmark": ".core", "run": ".core"}

__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = ["BenchOptions", "benchmark", "run"]
