"""Benchmarks: latency against accuracy for every exported variant (``python -m benchmarks``)."""

from .core import run

__all__ = ["run"]
