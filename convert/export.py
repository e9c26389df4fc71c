"""Converts a trained model to TFLite variants and proves each one still classifies."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import write_bytes, write_json, write_text
from edge_runtime.labels import write_labels
from edge_runtime.manifest import Manifest
from edge_runtime.metadata import embed_manifest
from edge_runtime.runs import load_arrays

from .evaluate import add_deltas, format_table, run_model, score, to_markdown, worst_classes
from .quantization import Quantization
from .source import Source, load_reference, open_source

DEFAULT_VARIANTS = ("float32", "int8", "edgetpu")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote and measured; ``failed`` names a broken accuracy promise."""

    export_dir: Path
    models: dict[str, Path]
    report: dict
    failed: str | None = None


def _progress(done: int, total: int, what: str) -> None:
    """A one-line progress counter on a terminal; just the final count otherwise."""
    tty = sys.stderr.isatty()
    if tty and (done == total or done % max(1, total // 20) == 0):
        print(f"\r{what}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr,
              flush=True)
    elif not tty and done == total:
        print(f"{what}: {done}/{total}", file=sys.stderr)


def representative_dataset(root: Path, items: list[tuple[str, int]], size: tuple[int, int],
                           count: int, seed: int, resize: str = "stretch",
                           interpolation: str = "linear"):
    """A calibration generator: ``count`` training images, stratified round-robin over
    classes, through the runtime's own preprocessing.

    Returns:
        (generator factory, number of images).
    """
    by_class: dict[int, list[str]] = {}
    for rel, ci in items:
        by_class.setdefault(ci, []).append(rel)
    rng = np.random.default_rng(seed)
    for paths in by_class.values():
        rng.shuffle(paths)
    chosen: list[tuple[str, int]] = []
    while len(chosen) < min(count, len(items)):
        for ci in sorted(by_class):
            if by_class[ci] and len(chosen) < count:
                chosen.append((by_class[ci].pop(), ci))
    images = []
    for i, item in enumerate(chosen, 1):
        images.append(load_arrays(root, [item], size, resize, interpolation)[0])
        _progress(i, len(chosen), "calibration images")
    images = [im for im in images if len(im)]

    def gen():
        for img in images:
            yield [img.astype(np.float32)]

    return gen, len(images)


def saved_model_for(model, size: tuple[int, int], out_dir: Path, loaded=None) -> Path:
    """Writes a SavedModel whose one signature takes a [1, H, W, 3] float32 image.

    A fixed batch of 1 gives the TFLite model static shapes (the Edge TPU needs them), and
    the SavedModel path freezes variables into constants; converting a concrete function
    with its trackable object instead keeps every BatchNorm variable as READ_VARIABLE ops.
    """
    import tensorflow as tf

    spec = tf.TensorSpec([1, size[0], size[1], 3], tf.float32, name="image")
    if model is not None:
        import keras

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", lambda image: model(image, training=False),
                             input_signature=[spec])
        archive.write_out(str(out_dir), verbose=False)
        return out_dir
    fn = loaded.signatures["serving_default"]
    arg = next(iter(fn.structured_input_signature[1]))
    module = tf.Module()
    module.inner = loaded
    module.serve = tf.function(lambda image: list(fn(**{arg: image}).values())[0],
                               input_signature=[spec])
    tf.saved_model.save(module, str(out_dir), signatures={"serving_default": module.serve})
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


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def _exported_manifest(src: Source, provenance: dict, quant: dict | None) -> Manifest:
    m = src.manifest
    extra = {"model": m.extra.get("model", {}), "provenance": provenance}
    if quant is not None:
        extra["quantization"] = quant
    return Manifest(labels=m.labels, input_size=m.input_size, color_order=m.color_order,
                    normalization=m.normalization, resize=m.resize, extra=extra,
                    interpolation=m.interpolation)


def _io_quantization(data: bytes) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    return {"input": {"dtype": np.dtype(i["dtype"]).name, "scale": float(i["quantization"][0]),
                      "zero_point": int(i["quantization"][1])},
            "output": {"dtype": np.dtype(o["dtype"]).name, "scale": float(o["quantization"][0]),
                       "zero_point": int(o["quantization"][1])}}


def _edgetpu(int8_path: Path, export_dir: Path, row: dict) -> Path | None:
    """Lints the int8 model for the Edge TPU and compiles it when the compiler is here."""
    from . import edgetpu

    lint = edgetpu.lint_model(int8_path)
    row["lint"] = edgetpu.lint_summary(lint)
    try:
        result = edgetpu.compile_edgetpu(int8_path, export_dir)
    except EdgekitError as e:  # the other variants are fine; report the failure, don't lose them
        print(f"edgetpu: {e}", file=sys.stderr)
        row["status"] = f"failed: {e}"
        return None
    if not result.available:
        print(f"edgetpu: skipped: {result.message}", file=sys.stderr)
        row["status"] = "skipped: edgetpu_compiler not installed"
        row["message"] = result.message
        return None
    row["compiler"] = result.to_dict()
    row["status"] = "compiled"
    return result.output_path


def export(target: str | Path, variants: list[str] | None = None, calib: int = 300,
           io: str = "uint8", max_drop: float | None = 2.0, float_layers: list[str] | None = None,
           labels: str | Path | None = None, img_size: int | None = None,
           data: str | Path | None = None, out: str | Path | None = None,
           allow_cpu_fallback: bool = False) -> ExportResult:
    """Writes TFLite variants and checks each on the held-out split.

    Every model gets the manifest embedded in its metadata and beside it; each is run with
    the TFLite interpreter (edgekit's runtime preprocessing) on the held-out images:
    top-1/top-5, agreement with the source model, per-class accuracy and its change vs
    float32, probability error. ``convert_report.json`` and ``.md`` hold the results.

    Args:
        target: a run folder, a ``.keras`` file or a SavedModel folder.
        variants: among float32, float16, dynamic, int8, edgetpu (edgetpu implies int8).
        calib: calibration images for int8, stratified from the training split.
        io: int8 model input/output type: uint8 (Edge TPU), int8 or float.
        max_drop: fail (``ExportResult.failed``) when int8 top-1 is more than this many
            points below float32; None disables the check.
        float_layers: tensors to keep in float in the int8 model (selective quantization).
        labels, img_size, data, out: for a model not made by ``train``.
        allow_cpu_fallback: accept an Edge TPU model with ops left on the CPU.

    Raises:
        EdgekitError: unusable input or a failed conversion.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    variants = list(variants or DEFAULT_VARIANTS)
    if "edgetpu" in variants and "int8" not in variants:
        variants.insert(variants.index("edgetpu"), "int8")
    src = open_source(target, labels, img_size, data, out)
    predict, model, loaded = load_reference(src)
    export_dir = src.export_dir
    export_dir.mkdir(parents=True, exist_ok=True)
    size = tuple(src.manifest.input_size)
    x_te, y_te, skipped = src.test_arrays()
    reference = predict(x_te) if len(x_te) else None
    provenance = {"source": str(src.path.resolve()), "source_sha256": src.sha256(),
                  "tensorflow": _tf_version(),
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    rows: dict[str, dict] = {}
    models: dict[str, Path] = {}
    work = Path(tempfile.mkdtemp(prefix=".savedmodel-", dir=export_dir))
    try:
        saved = saved_model_for(model, size, work / "saved_model", loaded)
        rep = None
        for name in [v for v in variants if v != "edgetpu"]:
            quant_info = None
            t0 = time.time()
            if name == "int8":
                if src.split is None:
                    raise EdgekitError("int8 needs calibration images: pass --data DIR")
                rep, n = representative_dataset(src.data_root, src.split.train, size, calib,
                                                src.seed, src.manifest.resize,
                                                src.manifest.interpolation)
                if n < min(100, calib):
                    print(f"warning: only {n} calibration images (fewer than 100)",
                          file=sys.stderr)
                if float_layers:
                    from .debug import selective_int8

                    data_bytes = selective_int8(saved, rep, float_layers)
                else:
                    data_bytes = convert_one(saved, Quantization.int8(rep, io))
                quant_info = {"calibration_images": n, "io": "int8" if float_layers else io,
                              "float_layers": float_layers or [],
                              **_io_quantization(data_bytes)}
            else:
                data_bytes = convert_one(saved, getattr(Quantization, name)())
            seconds = time.time() - t0
            manifest = _exported_manifest(src, provenance, quant_info)
            data_bytes = embed_manifest(data_bytes, manifest.to_dict())
            path = export_dir / f"model_{name}.tflite"
            write_bytes(path, data_bytes)
            models[name] = path
            rows[name] = {"file": path.name, "convert_seconds": round(seconds, 2),
                          "size_bytes": len(data_bytes), **(quant_info or {})}
            print(f"{name}: converted in {seconds:.1f} s ({len(data_bytes) / 1024:.0f} KB)",
                  file=sys.stderr)

        beside = _exported_manifest(src, provenance, None)
        beside.extra["variants"] = {k: {"file": v.name, "sha256": src.sha256_of(v)}
                                    for k, v in models.items()}
        beside.save(export_dir / "manifest.json")
        write_labels(export_dir / "labels.txt", src.manifest.labels)

        if reference is not None:
            for name, path in models.items():
                rows[name].update(score(run_model(path, x_te), y_te, reference,
                                        src.manifest.labels))
            add_deltas(rows)
        report = {"source": str(src.path), "origin": src.origin, "test_images": int(len(y_te)),
                  "skipped": skipped, "variants": rows}
        if reference is not None:
            keras_row = score(reference, y_te, reference, src.manifest.labels)
            report["keras"] = {"top1": keras_row["top1"], **(
                {"top5": keras_row["top5"]} if "top5" in keras_row else {}),
                "size_bytes": src.path.stat().st_size if src.path.is_file() else None}
            if report["keras"]["size_bytes"] is None:
                report["keras"]["size_bytes"] = sum(
                    p.stat().st_size for p in src.path.rglob("*") if p.is_file())

        failed = None
        int8 = rows.get("int8", {})
        if max_drop is not None and int8.get("top1_drop_points", 0.0) > max_drop:
            worst = ", ".join(f"{c} {d:+.1f}" for c, d in worst_classes(int8)) or "none"
            failed = (f"int8 top-1 is {int8['top1_drop_points']:.2f} points below float32 "
                      f"(limit {max_drop}); worst classes: {worst}")
            if rep is not None:
                from .debug import layer_errors

                print("running TensorFlow's quantization debugger ...", file=sys.stderr)
                report["quantization_debugger"] = layer_errors(saved, rep)
                failed += "; layers with the largest error: " + ", ".join(
                    r["short_name"] for r in report["quantization_debugger"][:3]) + \
                    " (keep some in float with --float-layers)"

        if "edgetpu" in variants:
            row: dict = {}
            compiled = _edgetpu(models["int8"], export_dir, row)
            if compiled is not None:
                models["edgetpu"] = compiled
                row["size_bytes"] = compiled.stat().st_size
                cpu_ops = row["compiler"].get("cpu_ops", 0)
                if cpu_ops and not allow_cpu_fallback and failed is None:
                    failed = (f"{cpu_ops} op(s) of the Edge TPU model run on the CPU (see "
                              "convert_report.md); pass --allow-cpu-fallback to accept")
            if row.get("status", "").startswith("failed") and failed is None:
                failed = f"Edge TPU compilation {row['status']}"
            rows["edgetpu"] = row
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["failed"] = failed
    write_json(export_dir / "convert_report.json", report)
    write_text(export_dir / "convert_report.md", to_markdown(report))
    return ExportResult(export_dir, models, report, failed)


__all__ = ["DEFAULT_VARIANTS", "ExportResult", "export", "format_table"]
