"""Turns the supported dataset layouts into one shape: a root folder and files per class.

Layouts: one subfolder per class; pre-split ``train/ val/ [test/]`` folders with class
subfolders; a CSV of ``path,label``; a pixel CSV (``label`` plus one column per pixel, as
in Sign Language MNIST); a JSON Lines file of ``{"image": path-or-base64, "label": ...}``.
Images that are not files yet (pixels, base64) are written as PNGs under the run folder.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgekitError

SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """Files by class, relative to ``root``; ``presplit`` maps split name -> files by class."""

    root: Path
    classes: list[str]
    files: dict[str, list[Path]]
    presplit: dict[str, dict[str, list[Path]]] | None
    layout: str


def _all_files(folder: Path) -> list[Path]:
    """The files of a class folder, less hidden ones and field images' sidecars (the JSON
    beside a kept frame, read by :mod:`train.field`, is not an image to check)."""
    from .field import is_sidecar

    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and
                  (p.is_file() or p.is_symlink()) and not is_sidecar(p))


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    return {d.name: _all_files(d) for d in sorted(folder.iterdir())
            if d.is_dir() and not d.name.startswith(".")}


def _safe_name(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label) or "_"


def _write_png(out: Path, img: np.ndarray) -> Path:
    import cv2

    out.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise EdgekitError(f"cannot encode image for {out}")
    out.write_bytes(buf.tobytes())
    return out


def _from_rows(rows: list[tuple[str, Path]], root: Path, layout: str) -> Dataset:
    files: dict[str, list[Path]] = {}
    for label, path in rows:
        files.setdefault(label, []).append(path)
    return Dataset(root, sorted(files), {k: files[k] for k in sorted(files)}, None, layout)


def _csv_paths(path: Path) -> Dataset:
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f), 1):
            if not row or (i == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]):
                continue
            if len(row) < 2:
                raise EdgekitError(f"{path}:{i}: expected 'path,label', got {row!r}")
            rows.append((row[1].strip(), (path.parent / row[0].strip())))
    return _from_rows(rows, path.parent, "csv")


def _pixel_csv(path: Path, header: list[str], cache: Path) -> Dataset:
    label_col = [h.strip().lower() for h in header].index("label")
    n_pixels = len(header) - 1
    side = int(math.isqrt(n_pixels))
    if side * side != n_pixels:
        raise EdgekitError(f"pixel CSV {path}: {n_pixels} pixel columns is not a square image")
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        for i, row in enumerate(reader, 2):
            try:
                values = [int(float(v)) for j, v in enumerate(row) if j != label_col]
            except ValueError:
                raise EdgekitError(f"{path}:{i}: pixel values must be numbers") from None
            if len(values) != n_pixels:
                raise EdgekitError(f"{path}:{i}: {len(values)} pixels, expected {n_pixels}")
            label = row[label_col].strip()
            img = np.clip(np.array(values), 0, 255).astype(np.uint8).reshape(side, side)
            rows.append((label, _write_png(cache / _safe_name(label) / f"{i:07d}.png", img)))
    return _from_rows(rows, cache, "pixel-csv")


def _jsonl(path: Path, cache: Path) -> Dataset:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            image, label = rec["image"], str(rec["label"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise EdgekitError(f"{path}:{i}: expected {{\"image\": ..., \"label\": ...}}") from None
        candidate = path.parent / image if len(image) < 1024 else None
        if candidate is not None and candidate.exists():
            rows.append((label, candidate))
            continue
        try:
            data = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise EdgekitError(f"{path}:{i}: 'image' is neither an existing path nor "
                               "base64") from None
        out = cache / _safe_name(label) / f"{i:07d}.img"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        rows.append((label, out))
    # Files from the JSONL's folder and the cache share no root; the cache holds copies.
    root = cache
    moved = []
    for label, p in rows:
        if not p.is_relative_to(cache):
            dest = cache / _safe_name(label) / f"{len(moved):07d}{p.suffix}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(p.read_bytes())
            p = dest
        moved.append((label, p))
    return _from_rows(moved, root, "jsonl")


def open_dataset(data: str | Path, cache: Path) -> Dataset:
    """Recognises the layout of ``data`` and lists its files by class.

    Args:
        data: a folder, a ``.csv`` or a ``.jsonl`` file.
        cache: where to write images that arrive as pixels or base64.

    Raises:
        EdgekitError: missing input or an unrecognised layout.
    """
    data = Path(data)
    if not data.exists():
        raise EdgekitError(f"data folder not found: {data}")
    if data.is_file():
        if data.suffix.lower() == ".jsonl":
            return _jsonl(data, cache)
        if data.suffix.lower() == ".csv":
            with data.open(newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            if "label" in [h.strip().lower() for h in header] and len(header) > 3:
                return _pixel_csv(data, header, cache)
            return _csv_paths(data)
        raise EdgekitError(f"unsupported data file {data}: expected a folder, .csv or .jsonl")
    subdirs = {d.name for d in data.iterdir() if d.is_dir()}
    if {"train", "val"} <= subdirs:
        presplit = {s: _class_folders(data / s) for s in SPLITS if (data / s).is_dir()}
        classes = sorted(set().union(*[set(v) for v in presplit.values()]))
        files = {c: [p for s in presplit.values() for p in s.get(c, [])] for c in classes}
        return Dataset(data, classes, files, presplit, "presplit")
    folders = _class_folders(data)
    return Dataset(data, sorted(folders), folders, None, "class-folders")
