"""Converts a trained Keras model to TFLite variants and proves each one still classifies."""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_runtime.classify import Classifier
from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import write_bytes, write_json
from edge_runtime.labels import write_labels
from edge_runtime.manifest import Manifest
from train.data import load_arrays, load_run

from .quantization import Quantization


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote and measured."""

    export_dir: Path
    models: dict[str, Path]
    report: dict


def load_keras_model(path: Path):
    """Loads a ``.keras`` model with safe_mode on (no arbitrary code from the file)."""
    import keras

    if not path.is_file():
        raise EdgekitError(f"Keras model not found: {path}")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
        raise EdgekitError(f"cannot load Keras model {path}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None


def representative_dataset(root: Path, items: list[tuple[str, int]], size: tuple[int, int],
                           count: int, seed: int, resize: str = "stretch"):
    """A calibration generator: ``count`` training images, stratified, runtime preprocessing."""
    by_class: dict[int, list[str]] = {}
    for rel, ci in items:
        by_class.setdefault(ci, []).append(rel)
    rng = np.random.default_rng(seed)
    for paths in by_class.values():
        rng.shuffle(paths)
    chosen: list[tuple[str, int]] = []
    while len(chosen) < min(count, len(items)):  # round-robin over classes
        for ci in sorted(by_class):
            if by_class[ci] and len(chosen) < count:
                chosen.append((by_class[ci].pop(), ci))
    images, _, _ = load_arrays(root, chosen, size, resize)

    def gen():
        for img in images:
            yield [img[None].astype(np.float32)]

    return gen, len(images)


def saved_model_for(model, size: tuple[int, int], out_dir: Path) -> Path:
    """Writes a SavedModel whose one signature takes a [1, H, W, 3] float32 image.

    A fixed batch of 1 gives the TFLite model static shapes (the Edge TPU needs them), and
    the SavedModel path freezes variables into constants; converting a concrete function
    with its trackable object instead keeps every BatchNorm variable as READ_VARIABLE ops.
    """
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda image: model(image, training=False),
                         input_signature=[tf.TensorSpec([1, size[0], size[1], 3], tf.float32,
                                                        name="image")])
    archive.write_out(str(out_dir), verbose=False)
    return out_dir


def convert_one(saved_model: Path, quant: Quantization) -> bytes:
    """Converts a SavedModel to a TFLite flatbuffer with ``quant`` applied."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    quant.apply(converter)
    try:
        return converter.convert()
    except Exception as e:  # noqa: BLE001 - converter errors are many and verbose
        raise EdgekitError(f"TFLite conversion ({quant.name}) failed: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(run_dir: str | Path, variants: list[str] | None = None, calib: int = 300,
           io: str = "uint8") -> ExportResult:
    """Writes TFLite variants of a run's model into ``run_dir/export`` and evaluates them.

    Each model is run with the TFLite interpreter (through ``edge_runtime``, the same
    preprocessing as on the device) on the held-out test split; the report gives top-1,
    agreement with the Keras model's top-1 and size.

    Args:
        run_dir: a training run folder.
        variants: names among float32, float16, dynamic, int8 (default float32, int8).
        calib: calibration images for int8 (drawn from the training split).
        io: int8 input/output type.

    Returns:
        The export folder, model paths and the report dict.
    """
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run = Path(run_dir)
    manifest, split, root = load_run(run)
    variants = variants or ["float32", "int8"]
    model = load_keras_model(run / "model.keras")
    size = tuple(manifest.input_size)
    export_dir = run / "export"
    export_dir.mkdir(parents=True, exist_ok=True)

    x_te, y_te, skipped = load_arrays(root, split.test, size, manifest.resize)
    if len(x_te) == 0:
        raise EdgekitError(f"no held-out test images could be read from {root}")
    keras_probs = model.predict(x_te.astype(np.float32), batch_size=32, verbose=0)
    keras_top1 = keras_probs.argmax(1)

    work = Path(tempfile.mkdtemp(prefix=".savedmodel-", dir=export_dir))
    saved = saved_model_for(model, size, work / "saved_model")
    models: dict[str, Path] = {}
    rows: dict[str, dict] = {"keras": {"top1": float((keras_top1 == y_te).mean()),
                                       "agreement": 1.0,
                                       "size_bytes": (run / "model.keras").stat().st_size}}
    for name in variants:
        if name == "int8":
            gen, n = representative_dataset(root, split.train, size, calib,
                                            seed=int(manifest.extra.get("training", {})
                                                     .get("seed", 0)), resize=manifest.resize)
            if n < min(100, calib):
                print(f"warning: only {n} calibration images (fewer than 100)", file=sys.stderr)
            quant = Quantization.int8(gen, io)
            print(f"int8: calibrating on {n} training images ...", file=sys.stderr)
        else:
            quant = getattr(Quantization, name)()
        t0 = time.time()
        data = convert_one(saved, quant)
        seconds = time.time() - t0
        path = export_dir / f"model_{name}.tflite"
        write_bytes(path, data)
        models[name] = path
        rows[name] = {"convert_seconds": round(seconds, 2), "size_bytes": len(data)}
        if name == "int8":
            rows[name]["calibration_images"] = n
            rows[name]["io"] = io

    shutil.rmtree(work, ignore_errors=True)

    # The manifest beside the models tells the runtime how to preprocess and label.
    exported = Manifest(
        labels=manifest.labels, input_size=manifest.input_size,
        color_order=manifest.color_order, normalization=manifest.normalization,
        resize=manifest.resize,
        extra={"model": manifest.extra.get("model", {}),
               "provenance": {"source_run": str(run.resolve()),
                              "source_model_sha256": _sha256(run / "model.keras"),
                              "tensorflow": _tf_version(),
                              "created": datetime.now(timezone.utc).isoformat(
                                  timespec="seconds")},
               "variants": {k: {"file": v.name, "sha256": _sha256(v)} for k, v in models.items()}})
    exported.save(export_dir / "manifest.json")
    write_labels(export_dir / "labels.txt", manifest.labels)

    for name, path in models.items():
        clf = Classifier(path)
        probs = np.stack([clf.scores(img) for img in x_te])
        top1 = probs.argmax(1)
        rows[name].update({
            "top1": float((top1 == y_te).mean()),
            "agreement": float((top1 == keras_top1).mean()),
            "max_prob_error": float(np.abs(probs - keras_probs).max()),
            "mean_prob_error": float(np.abs(probs - keras_probs).mean()),
        })
    report = {"run": str(run), "test_images": int(len(y_te)), "skipped": skipped,
              "variants": {k: v for k, v in rows.items() if k != "keras"},
              "keras": rows["keras"]}
    write_json(export_dir / "convert_report.json", report)
    return ExportResult(export_dir, models, report)


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def format_table(report: dict) -> str:
    """A plain-text table of the conversion report."""
    lines = [f"{'variant':<10} {'top1':>7} {'agree':>7} {'max|dp|':>8} {'size KB':>9}",
             f"{'keras':<10} {report['keras']['top1']:>7.4f} {'-':>7} {'-':>8} "
             f"{report['keras']['size_bytes'] / 1024:>9.1f}"]
    for name, r in report["variants"].items():
        lines.append(f"{name:<10} {r['top1']:>7.4f} {r['agreement']:>7.4f} "
                     f"{r['max_prob_error']:>8.4f} {r['size_bytes'] / 1024:>9.1f}")
    return "\n".join(lines)
