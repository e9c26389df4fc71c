"""From a user's data to a checked, split, recorded dataset (before any training)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import write_json
from edge_runtime.preprocess import IMAGE_SUFFIXES

from .data import Split, stratified_split
from .datasets import open_dataset
from .prescan import prescan


def class_weights(split: Split, n_classes: int) -> dict[int, float]:
    """Balanced weights ``n / (k * n_c)`` from the training split (1.0 when balanced)."""
    counts = [0] * n_classes
    for _, c in split.train:
        counts[c] += 1
    total = sum(counts)
    return {c: (total / (n_classes * n) if n else 0.0) for c, n in enumerate(counts)}


def _too_few_classes(data: str | Path, ds) -> str:
    """The error for fewer than 2 classes, saying what layout was expected."""
    found = f"found {len(ds.classes)}" + (f" ({', '.join(ds.classes)})" if ds.classes else "")
    if ds.layout == "class-folders":
        loose = sum(1 for p in Path(data).iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        where = f"; its {loose} loose images need sorting into them" if loose else ""
        return (f"expected one subfolder per class (at least 2, e.g. {data}/cat/, "
                f"{data}/dog/) in {data}, {found}{where}")
    return f"expected at least 2 classes in {data}, {found}"


def prepare(data: str | Path, out: Path, min_per_class: int, val_fraction: float,
            test_fraction: float, seed: int):
    """Opens, pre-scans and splits the data; writes ``out/data_report.json``.

    Returns:
        (classes, split, root, report dict).

    Raises:
        EdgekitError: no usable classes, or a class with too few usable images (named).
    """
    ds = open_dataset(data, out / "data_cache")
    good, bad, notes = prescan(ds.root, ds.files)
    if len(ds.classes) < 2:
        raise EdgekitError(_too_few_classes(data, ds))
    for c in ds.classes:
        if len(good[c]) < min_per_class:
            where = ds.root / c if ds.presplit is None else ds.root
            raise EdgekitError(f"class '{c}' has {len(good[c])} images, at least "
                               f"{min_per_class} needed [{where}]")
    for issue in bad:  # after the fatal checks, so a fatal error stays one line
        print(f"warning: skipping {issue.path}: {issue.reason}", file=sys.stderr)
    rel = {c: [p.relative_to(ds.root).as_posix() for p in good[c]] for c in ds.classes}
    if ds.presplit is None:
        split = stratified_split(ds.root, ds.classes, good, val_fraction, test_fraction, seed)
    else:
        usable = {p for c in ds.classes for p in rel[c]}

        def part(name: str) -> list[tuple[str, int]]:
            files = ds.presplit.get(name, {})
            return [(p.relative_to(ds.root).as_posix(), ci) for ci, c in enumerate(ds.classes)
                    for p in files.get(c, []) if p.relative_to(ds.root).as_posix() in usable]

        split = Split(part("train"), part("val"), part("test"))
        if not split.test:
            # No test/ folder: hold out part of train/, stratified; val/ stays validation.
            train_only = {c: [ds.root / p for p, ci in split.train if ci == i]
                          for i, c in enumerate(ds.classes)}
            s = stratified_split(ds.root, ds.classes, train_only, 0.01, test_fraction, seed)
            split = Split(s.train + s.val, split.val, s.test)
    counts = {c: sum(1 for _, ci in split.train if ci == i) for i, c in enumerate(ds.classes)}
    nonzero = [n for n in counts.values() if n]
    report = {
        "layout": ds.layout, "root": str(ds.root.resolve()), "classes": ds.classes,
        "usable_per_class": {c: len(good[c]) for c in ds.classes},
        "train_per_class": counts,
        "imbalance_ratio": round(max(nonzero) / min(nonzero), 3) if nonzero else None,
        "split_sizes": {k: len(getattr(split, k)) for k in ("train", "val", "test")},
        "rejected": [asdict(i) for i in bad], "converted": [asdict(i) for i in notes],
    }
    write_json(out / "data_report.json", report)
    return ds.classes, split, ds.root, report
