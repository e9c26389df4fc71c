"""Each exported model's drift baseline: its own top-1 confidences and predicted classes
on the validation split, stored in the model's embedded manifest and in manifest.json."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.drift import BASELINE_VERSION, make_baseline
from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import write_bytes
from edge_runtime.runs import load_arrays

from .evaluate import run_model
from .source import Source


def baseline_images(src: Source) -> tuple[np.ndarray, str]:
    """The images the baselines come from and the split's name: validation, or for a model
    not made by ``train`` (which has none) its check half, "test"."""
    if src.split is None or src.data_root is None:
        return np.zeros((0, 1, 1, 3), np.uint8), "none"
    items, name = (src.split.val, "validation") if src.split.val else (src.split.test, "test")
    images, _, _ = load_arrays(src.data_root, items, src.manifest.input_size,
                               src.manifest.resize, src.manifest.interpolation)
    return images, name


def record_baselines(src: Source, models: dict[str, Path], work: Path,
                     edgetpu: bool = False) -> dict[str, Any] | None:
    """Runs every model on the baseline images and embeds its own baseline in it.

    Each model is run on a copy in ``work`` (a stale manifest.json beside the originals
    must not steer the preprocessing). The int8 model's entry also serves its Edge TPU
    build (same quantized graph; it cannot run here).

    Returns:
        the ``drift_baseline`` for manifest.json (every model's entry by file name), or
        None without images.
    """
    images, split = baseline_images(src)
    if not len(images):
        print("note: no validation images: the models carry no drift baseline",
              file=sys.stderr)
        return None
    if len(images) < 100:
        print(f"note: the drift baseline rests on {len(images)} {split} images: only "
              "large shifts can be told from chance", file=sys.stderr)
    (work / "drift").mkdir(exist_ok=True)
    entries: dict[str, dict] = {}
    for name, path in models.items():
        copy = work / "drift" / path.name
        shutil.copyfile(path, copy)
        try:
            entry = make_baseline(run_model(copy, images))
        except EdgekitError as e:  # e.g. an ONNX model without onnxruntime here
            print(f"{name}: no drift baseline ({e})", file=sys.stderr)
            continue
        entries[path.name] = entry
        _embed(path, {"version": BASELINE_VERSION, "split": split,
                      "models": {path.name: entry}})
    if edgetpu and "int8" in models and models["int8"].name in entries:
        int8 = models["int8"]
        entries[f"{int8.stem}_edgetpu.tflite"] = {**entries[int8.name], "from": int8.name}
    if not entries:
        return None
    return {"version": BASELINE_VERSION, "split": split, "models": entries}


def _embed(path: Path, baseline: dict[str, Any]) -> None:
    """Adds ``baseline`` to the manifest embedded in the model (other entries kept)."""
    if path.suffix == ".onnx":
        from edge_runtime.onnx_backend import read_embedded_manifest

        from .onnx_export import embed

        manifest = read_embedded_manifest(path) or {}
        embed(path, {**manifest, "drift_baseline": baseline})
        return
    from edge_runtime.metadata import embed_manifest, read_embedded_manifest

    data = path.read_bytes()
    manifest = read_embedded_manifest(data) or {}
    write_bytes(path, embed_manifest(data, {**manifest, "drift_baseline": baseline}))
