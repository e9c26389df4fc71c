"""Each exported model's drift baseline: its own top-1 confidences and predicted classes
on the validation split, plus the input statistics of the training and validation images
(:mod:`edge_runtime.drift_input`), stored in the model's embedded manifest and in
manifest.json.

Usage (re-record the baselines of a run's exported models, e.g. after this runtime learnt
the input statistics; the models' tensors are untouched, only their embedded manifests):
    python -m convert.drift_baseline RUN [--export DIR]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.drift import BASELINE_VERSION, make_baseline
from edge_runtime.drift_input import MAX_IMAGES, make_input_baseline
from edge_runtime.errors import EXIT_OK, EdgekitError, Parser
from edge_runtime.fileio import file_sha256, write_bytes, write_json
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


def input_baseline(src: Source) -> dict[str, Any] | None:
    """The input statistics' baseline from the training and validation images (the
    calibration half for a model not made by ``train``; never the test split), or None.

    The statistics do not involve the model, so training images are as good a sample of
    what it was made for as validation images, and many more of them (see
    :mod:`edge_runtime.drift_input`)."""
    if src.split is None or src.data_root is None:
        return None
    items = list(src.split.train) + list(src.split.val)
    if len(items) > MAX_IMAGES:  # load only what the baseline keeps
        pick = np.random.default_rng(src.seed).choice(len(items), MAX_IMAGES, replace=False)
        items = [items[i] for i in sorted(pick)]
    images, _, _ = load_arrays(src.data_root, items, src.manifest.input_size,
                               src.manifest.resize, src.manifest.interpolation)
    name = "train+validation" if src.split.val else "train"
    return make_input_baseline(images, name, src.seed) if len(images) else None


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
    inputs = input_baseline(src)
    entries: dict[str, dict] = {}
    for name, path in models.items():
        copy = work / "drift" / path.name
        shutil.copyfile(path, copy)
        try:
            entry = make_baseline(run_model(copy, images))
        except EdgekitError as e:  # e.g. an ONNX model without onnxruntime here
            print(f"{name}: no drift baseline ({e})", file=sys.stderr)
            continue
        if inputs is not None:
            entry["input"] = inputs
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


def rerecord(run: Path, export: Path | None = None) -> dict[str, Any]:
    """Re-records the drift baselines of ``run``'s exported models in place (each model's
    embedded manifest, and ``manifest.json``'s ``drift_baseline`` and sha256s).

    Returns:
        the new ``drift_baseline``.

    Raises:
        EdgekitError: not a run, no exported models, or no validation images.
    """
    from .source import open_source

    src = open_source(run, out=export)
    beside = src.export_dir / "manifest.json"
    try:
        manifest = json.loads(beside.read_text(encoding="utf-8"))
        variants = manifest["variants"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgekitError(f"no exported models listed: {beside} "
                           f"({type(e).__name__}: {e})") from None
    models = {k: src.export_dir / v["file"] for k, v in variants.items()
              if k not in ("edgetpu", "imx500") and isinstance(v, dict)
              and (src.export_dir / str(v.get("file"))).is_file()}
    if not models:
        raise EdgekitError(f"no exported model file beside {beside}")
    with tempfile.TemporaryDirectory(prefix=".drift-", dir=src.export_dir) as work:
        drift = record_baselines(src, models, Path(work), "edgetpu" in variants)
    if drift is None:
        raise EdgekitError(f"{run}: no validation images for a drift baseline")
    old = manifest.get("drift_baseline") or {}
    drift["models"] = {**old.get("models", {}), **drift["models"]}
    for k, path in models.items():
        variants[k]["sha256"] = file_sha256(path)
    manifest["drift_baseline"] = drift
    write_json(beside, manifest)
    return drift


def main(argv: list[str] | None = None) -> int:
    """``python -m convert.drift_baseline RUN [--export DIR]``."""
    p = Parser(prog="python -m convert.drift_baseline",
               description="Re-record the drift baselines of a run's exported models.")
    p.add_argument("run", type=Path, help="training run folder (runs/NAME)")
    p.add_argument("--export", type=Path, default=None,
                   help="the exported models' folder (default RUN/export)")
    args = p.parse_args(argv)
    drift = rerecord(args.run, args.export)
    for name, entry in drift["models"].items():
        inp = entry.get("input")
        print(f"{name}: {entry['n']} {drift['split']} images"
              + (f", input statistics of {inp['n']} {inp['split']} images" if inp else ""))
    return EXIT_OK


if __name__ == "__main__":
    from edge_runtime.errors import exit_with, install_signal_handlers

    install_signal_handlers()
    exit_with(main)
