"""Reads training data and run folders: class-per-folder images, the stratified split, and a
run's manifest, split and data root. numpy and OpenCV only (no TensorFlow), so ``convert``,
``benchmarks`` and a device can read a run folder; ``train.data`` re-exports these names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EdgekitError
from .manifest import Manifest, load_manifest
from .preprocess import DEFAULT_INTERPOLATION, ImageError, list_images, load_for_model


@dataclass(frozen=True)
class Split:
    """File lists (relative to the data root) and their class indices."""

    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]

    def to_dict(self) -> dict[str, list[list]]:
        """JSON form: ``{"train": [[path, class_index], ...], ...}``."""
        return {k: [[p, c] for p, c in getattr(self, k)] for k in ("train", "val", "test")}

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        """Inverse of :meth:`to_dict`."""
        return cls(*([(str(p), int(c)) for p, c in d[k]] for k in ("train", "val", "test")))


def scan(root: str | Path, min_per_class: int = 5) -> tuple[list[str], dict[str, list[Path]]]:
    """Finds the classes (sorted subfolder names) and their image files.

    Raises:
        EdgekitError: missing folder, fewer than 2 classes, or a class with too few images.
    """
    root = Path(root)
    if not root.is_dir():
        raise EdgekitError(f"data folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise EdgekitError(f"expected one subfolder per class (at least 2) in {root}, "
                           f"found {len(classes)}")
    files = {c: list_images(root / c) for c in classes}
    for c in classes:
        if len(files[c]) < min_per_class:
            raise EdgekitError(f"class '{c}' has {len(files[c])} images, at least "
                               f"{min_per_class} needed [{root / c}]")
    return classes, files


def stratified_split(root: str | Path, classes: list[str], files: dict[str, list[Path]],
                     val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Splits each class separately so every split has every class; fixed by ``seed``."""
    root = Path(root)
    parts: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for ci, c in enumerate(classes):
        rng = np.random.default_rng([seed, ci])
        order = rng.permutation(len(files[c]))
        n = len(order)
        n_test = max(1, round(n * test_fraction))
        n_val = max(1, round(n * val_fraction))
        if n - n_test - n_val < 1:
            raise EdgekitError(f"class '{c}' has too few images ({n}) to split")
        chosen = [files[c][i].relative_to(root).as_posix() for i in order]
        parts["test"] += [(p, ci) for p in chosen[:n_test]]
        parts["val"] += [(p, ci) for p in chosen[n_test:n_test + n_val]]
        parts["train"] += [(p, ci) for p in chosen[n_test + n_val:]]
    return Split(parts["train"], parts["val"], parts["test"])


def load_arrays(root: str | Path, items: list[tuple[str, int]], size: tuple[int, int],
                resize: str = "stretch", interpolation: str = DEFAULT_INTERPOLATION
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Loads images through the runtime's preprocessing.

    Returns:
        (images uint8 [N, H, W, 3], class indices [N], skipped "path: reason" lines).
    """
    root = Path(root)
    images, labels, skipped = [], [], []
    for rel, ci in items:
        try:
            images.append(load_for_model(root / rel, size, resize, interpolation))
            labels.append(ci)
        except ImageError as e:
            skipped.append(f"{rel}: {e}")
    if not images:
        return np.zeros((0, *size, 3), np.uint8), np.zeros((0,), np.int64), skipped
    return np.stack(images), np.asarray(labels, np.int64), skipped


def load_run(run_dir: str | Path) -> tuple[Manifest, Split, Path]:
    """Reads a training run folder for conversion and benchmarking (no TensorFlow needed).

    Returns:
        (manifest, split, data_root).

    Raises:
        EdgekitError: not a run folder, or its manifest lacks the split.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise EdgekitError(f"run folder not found: {run}")
    if not (run / "manifest.json").is_file():
        raise EdgekitError(f"not a training run (no manifest.json): {run}")
    manifest = load_manifest(run / "manifest.json")
    data = manifest.extra.get("data") or {}
    try:
        split = Split.from_dict(data["split"])
        root = Path(data["root"])
    except (KeyError, TypeError, ValueError):
        raise EdgekitError(f"manifest has no data split [{run / 'manifest.json'}]") from None
    if not root.is_dir():
        raise EdgekitError(f"the run's data folder is gone: {root} [{run / 'manifest.json'}]")
    return manifest, split, root


__all__ = ["Split", "load_arrays", "load_run", "scan", "stratified_split"]
