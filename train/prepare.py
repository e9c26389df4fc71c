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
        inner = Path(data) / ds.classes[0] if len(ds.classes) == 1 else None
        if inner is not None and sum(1 for p in inner.iterdir() if p.is_dir()) >= 2:
            where += f"; did you mean --data {inner}?"  # e.g. data/sample -> its images/
        return (f"expected one subfolder per class (at least 2, e.g. {data}/cat/, "
                f"{data}/dog/) in {data}, {found}{where}")
    return f"expected at least 2 classes in {data}, {found}"


def _split_original(root: Path, classes: list[str], files: dict[str, list[Path]],
                    val_fraction: float, test_fraction: float, seed: int) -> Split:
    """The stratified split of the non-field images; a class with field images only is
    left out of it (its indices stay those of ``classes``)."""
    present = [c for c in classes if files[c]]
    s = stratified_split(root, present, {c: files[c] for c in present}, val_fraction,
                         test_fraction, seed)
    index = [classes.index(c) for c in present]
    return Split(*([(p, index[i]) for p, i in getattr(s, k)] for k in ("train", "val", "test")))


def _field_part(root: Path, classes: list[str], good: dict[str, list[Path]]):
    """Separates field images (those with a sidecar) from the others.

    Returns:
        (non-field files by class, [(relative path, class index, sidecar)]).
    """
    from .field import read_sidecar

    plain: dict[str, list[Path]] = {}
    field = []
    for ci, c in enumerate(classes):
        plain[c] = []
        for p in good[c]:
            sidecar = read_sidecar(p)
            if sidecar is None:
                plain[c].append(p)
            else:
                field.append((p.relative_to(root).as_posix(), ci, sidecar))
    return plain, field


def _with_field(split: Split, field_items: list, field_test_fraction: float,
                val_fraction: float, block_seconds: float, seed: int) -> tuple[Split, dict]:
    """Adds the field images to ``split``: train and val get theirs, the field test split
    goes into the report (never into ``split.test``, which stays the original one)."""
    from .field import field_split

    fs = field_split(field_items, field_test_fraction, val_fraction, block_seconds, seed)
    if not fs.train:
        print(f"warning: the {len(field_items)} field images form {fs.groups} device/time "
              f"group(s) of {block_seconds:g} s, all held out for the field test split; "
              "none trains (a shorter --field-block-seconds makes more groups)",
              file=sys.stderr)
    print(f"field images: {len(field_items)} in {fs.groups} device/time groups; held out "
          f"{len(fs.test)} in {len(fs.test_groups)} groups, {len(fs.train)} train, "
          f"{len(fs.val)} val")
    return Split(split.train + fs.train, split.val + fs.val, split.test), \
        fs.report(block_seconds)


def prepare(data: str | Path, out: Path, min_per_class: int, val_fraction: float,
            test_fraction: float, seed: int, field_test_fraction: float = 0.3,
            field_block_seconds: float = 600.0):
    """Opens, pre-scans and splits the data; writes ``out/data_report.json``.

    Field images (:mod:`train.field`) are split apart, by device and time, into
    ``report["field"]`` (absent when there are none).

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
    plain, field_items = _field_part(ds.root, ds.classes, good)
    rel = {c: [p.relative_to(ds.root).as_posix() for p in plain[c]] for c in ds.classes}
    if ds.presplit is None:
        split = _split_original(ds.root, ds.classes, plain, val_fraction, test_fraction, seed)
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
            s = _split_original(ds.root, ds.classes, train_only, 0.01, test_fraction, seed)
            split = Split(s.train + s.val, split.val, s.test)
    field = None
    if field_items:
        split, field = _with_field(split, field_items, field_test_fraction, val_fraction,
                                   field_block_seconds, seed)
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
    if field:
        report["field"] = field
    write_json(out / "data_report.json", report)
    return ds.classes, split, ds.root, report
