"""Reads a class-per-folder image dataset and splits it, stratified, by a seed.

The code lives in :mod:`edge_runtime.runs` (no TensorFlow), so ``convert`` and
``benchmarks`` read run folders without importing ``train``; these names stay here for
existing imports.
"""

from edge_runtime.runs import Split, load_arrays, load_run, scan, stratified_split

__all__ = ["Split", "load_arrays", "load_run", "scan", "stratified_split"]
