"""Benchmarks: latency, memory, accuracy and the camera pipeline for every exported variant
(``python -m benchmarks``); results schema in ``benchmarks/SCHEMA.md``."""

from .core import benchmark, run

__all__ = ["benchmark", "run"]
