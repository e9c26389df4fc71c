"""Converts a trained model to TFLite variants and proves each one still classifies.

The stages, each with explicit inputs: :func:`plan_variants` (what will be built, and
why anything was added), the reference model and held-out images, :func:`convert_variant`
per variant, the manifest and labels beside the models, :func:`evaluate` on the held-out
split, :func:`accuracy_promise` (``--max-drop``), :func:`edgetpu_stage`, the report.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import write_bytes, write_json, write_text
from edge_runtime.integrity import embed_digest
from edge_runtime.labels import write_labels
from edge_runtime.manifest import Manifest
from edge_runtime.metadata import embed_manifest
from edge_runtime.runs import load_arrays

from .drift_baseline import record_baselines
from .evaluate import add_deltas, format_table, run_model, score, to_markdown, worst_classes
from .goldens import add_selftests, selftest_images
from .quantization import IO_TYPES, Quantization, parse_variants
from .source import Source, load_reference, open_source
from .workdir import remove_stale, signals_interrupt, work_dir

DEFAULT_VARIANTS = ("float32", "int8", "edgetpu")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote and measured; ``failed`` names a broken accuracy promise."""

    export_dir: Path
    models: dict[str, Path]
    report: dict
    failed: str | None = None


@dataclass(frozen=True)
class ExportOptions:
    """What to build and what to promise; validated when made.

    Attributes:
        variants: among float32, float16, dynamic, int8, edgetpu, onnx (float ONNX for
            ONNX Runtime: TensorRT/CUDA on a Jetson), in order.
        calib: int8 calibration images, stratified from the training split (>= 1).
        io: int8 model input/output type: "uint8" (Edge TPU), "int8" or "float".
        max_drop: fail when int8 top-1 is more than this many points below float32;
            None: no check.
        float_layers: tensors to keep in float in the int8 model (selective quantization).
        allow_cpu_fallback: accept an Edge TPU model with ops left on the CPU.
    """

    variants: tuple[str, ...] = DEFAULT_VARIANTS
    calib: int = 300
    io: str = "uint8"
    max_drop: float | None = 2.0
    float_layers: tuple[str, ...] = field(default=())
    allow_cpu_fallback: bool = False

    def __post_init__(self) -> None:
        parse_variants(",".join(self.variants))  # names them when unknown
        if self.calib < 1:
            raise EdgekitError(f"--calib must be >= 1, got {self.calib}")
        if self.io not in IO_TYPES:
            raise EdgekitError(f"--io {self.io!r}, expected one of {', '.join(IO_TYPES)}")
        if self.float_layers and not {"int8", "edgetpu"} & set(self.variants):
            raise EdgekitError("--float-layers applies to the int8 model, but --variants "
                               f"{','.join(self.variants)} has no int8")


def plan_variants(variants: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The variants to build, in order, and a note for each one added to what was asked.

    The Edge TPU model is compiled from the int8 one, so ``edgetpu`` needs ``int8``.
    """
    planned, notes = list(dict.fromkeys(variants)), []
    if "edgetpu" in planned and "int8" not in planned:
        planned.insert(planned.index("edgetpu"), "int8")
        notes.append("the Edge TPU model is compiled from the int8 model: int8 added to the "
                     "variants")
    return planned, notes


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
    from tqdm import tqdm

    images = [load_arrays(root, [item], size, resize, interpolation)[0]
              for item in tqdm(chosen, desc="calibration images", unit="img", leave=False,
                               file=sys.stderr, disable=None)]  # None: only on a terminal
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
    converter = quant.converter(saved_model)
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
    from edge_runtime.backend import backend

    it = backend().interpreter_cls(model_content=data)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    return {"input": {"dtype": np.dtype(i["dtype"]).name, "scale": float(i["quantization"][0]),
                      "zero_point": int(i["quantization"][1])},
            "output": {"dtype": np.dtype(o["dtype"]).name, "scale": float(o["quantization"][0]),
                       "zero_point": int(o["quantization"][1])}}


@dataclass(frozen=True)
class Reference:
    """The source model's outputs on the held-out images (``probs`` None without data)."""

    predict: Any
    model: Any
    loaded: Any
    images: np.ndarray
    labels: np.ndarray
    skipped: list[str]
    probs: np.ndarray | None


def reference(src: Source) -> Reference:
    """Loads the source model and runs it on the held-out split."""
    predict, model, loaded = load_reference(src)
    x_te, y_te, skipped = src.test_arrays()
    return Reference(predict, model, loaded, x_te, y_te, skipped,
                     predict(x_te) if len(x_te) else None)


def calibration(src: Source, options: ExportOptions):
    """The int8 calibration generator factory and its image count.

    Raises:
        EdgekitError: the source has no training images.
    """
    if src.split is None:
        raise EdgekitError("int8 needs calibration images: pass --data DIR")
    rep, n = representative_dataset(src.data_root, src.split.train,
                                    tuple(src.manifest.input_size), options.calib, src.seed,
                                    src.manifest.resize, src.manifest.interpolation)
    if n < min(100, options.calib):
        print(f"warning: only {n} calibration images (fewer than 100)", file=sys.stderr)
    return rep, n


def convert_variant(name: str, saved: Path, options: ExportOptions, rep=None,
                    calibration_images: int = 0) -> tuple[bytes, dict | None]:
    """One variant's flatbuffer and, for int8, its quantization facts.

    Raises:
        EdgekitError: conversion failed, or the int8 model's input/output type is not the
            requested ``options.io`` (never changed silently).
    """
    if name != "int8":
        return convert_one(saved, getattr(Quantization, name)()), None
    if options.float_layers:
        from .debug import selective_int8

        data = selective_int8(saved, rep, list(options.float_layers), options.io)
    else:
        data = convert_one(saved, Quantization.int8(rep, options.io))
    info = {"calibration_images": calibration_images, "io": options.io,
            "float_layers": list(options.float_layers), **_io_quantization(data)}
    want = "float32" if options.io == "float" else options.io
    got = {info["input"]["dtype"], info["output"]["dtype"]}
    if got != {want}:
        raise EdgekitError(f"the int8 model has {'/'.join(sorted(got))} input/output, "
                           f"--io asked for {options.io}")
    return data, info


def write_variants(src: Source, saved: Path, variants: list[str], options: ExportOptions,
                   provenance: dict, rep=None, calibration_images: int = 0
                   ) -> tuple[dict[str, Path], dict[str, dict]]:
    """Converts and writes (atomically, manifest embedded) every variant but edgetpu.

    Returns:
        (variant -> model path, variant -> report row).
    """
    models: dict[str, Path] = {}
    rows: dict[str, dict] = {}
    for name in [v for v in variants if v not in ("edgetpu", "imx500")]:
        if name == "onnx":
            models[name], rows[name] = _onnx_variant(src, saved, provenance)
            continue
        t0 = time.time()
        data, quant_info = convert_variant(name, saved, options, rep, calibration_images)
        seconds = time.time() - t0
        data = embed_manifest(data, _exported_manifest(src, provenance, quant_info).to_dict())
        # The tensors' digest: later entries (golden cases, drift baseline) leave it valid.
        data = embed_digest(data)
        models[name] = src.export_dir / f"model_{name}.tflite"
        write_bytes(models[name], data)
        rows[name] = {"file": models[name].name, "convert_seconds": round(seconds, 2),
                      "size_bytes": len(data), **(quant_info or {})}
        print(f"{name}: converted in {seconds:.1f} s ({len(data) / 1024:.0f} KB)",
              file=sys.stderr)
    return models, rows


def _onnx_variant(src: Source, saved: Path, provenance: dict) -> tuple[Path, dict]:
    """The float model as ONNX with the manifest in its metadata (see convert.onnx_export)."""
    from .onnx_export import embed, export_onnx

    t0 = time.time()
    path = src.export_dir / "model.onnx"
    export_onnx(saved, tuple(src.manifest.input_size), path)
    embed(path, _exported_manifest(src, provenance, None).to_dict())
    seconds = time.time() - t0
    size = path.stat().st_size
    print(f"onnx: converted in {seconds:.1f} s ({size / 1024:.0f} KB)", file=sys.stderr)
    return path, {"file": path.name, "convert_seconds": round(seconds, 2), "size_bytes": size}


def write_beside(src: Source, provenance: dict, models: dict[str, Path],
                 drift: dict | None = None) -> None:
    """``manifest.json`` (with each variant's sha256 and drift baseline) and ``labels.txt``
    beside the models; the variants a previous convert wrote, and this one did not, are kept
    (see convert.manifest_merge)."""
    from .manifest_merge import merge_variants, read_previous

    variants, drift, notes = merge_variants(
        read_previous(src.export_dir / "manifest.json"),
        {k: {"file": v.name, "sha256": src.sha256_of(v)} for k, v in models.items()},
        drift, src.export_dir, provenance.get("source_sha256"))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    beside = replace(_exported_manifest(src, provenance, None), drift_baseline=drift)
    beside.extra["variants"] = variants
    beside.save(src.export_dir / "manifest.json")
    write_labels(src.export_dir / "labels.txt", src.manifest.labels)


def evaluate(models: dict[str, Path], ref: Reference, classes: list[str]) -> dict[str, dict]:
    """Each model's scores on the held-out split and its change vs float32."""
    rows = {name: score(run_model(path, ref.images), ref.labels, ref.probs, classes)
            for name, path in models.items()}
    add_deltas(rows)
    return rows


def _both(first: str | None, second: str | None) -> str | None:
    return "; ".join(m for m in (first, second) if m) or None


def accuracy_promise(rows: dict[str, dict], max_drop: float | None, saved: Path,
                     rep) -> tuple[str | None, list[dict] | None]:
    """Whether int8 kept within ``max_drop`` points of float32; when not, why (the worst
    classes) and the layers with the largest quantization error.

    Returns:
        (failure message or None, quantization debugger rows or None).
    """
    int8 = rows.get("int8", {})
    if max_drop is None or int8.get("top1_drop_points", 0.0) <= max_drop:
        return None, None
    worst = ", ".join(f"{c} {d:+.1f}" for c, d in worst_classes(int8)) or "none"
    failed = (f"int8 top-1 is {int8['top1_drop_points']:.2f} points below float32 "
              f"(limit {max_drop}); worst classes: {worst}")
    if rep is None:
        return failed, None
    from .debug import layer_errors

    print("running TensorFlow's quantization debugger ...", file=sys.stderr)
    layers = layer_errors(saved, rep)
    return (failed + "; layers with the largest error: " + ", ".join(
        r["short_name"] for r in layers[:3]) + " (keep some in float with --float-layers)",
        layers)


def edgetpu_stage(int8_path: Path, export_dir: Path, allow_cpu_fallback: bool
                  ) -> tuple[dict, Path | None, str | None]:
    """Lints the int8 model for the Edge TPU and compiles it when the compiler is here.

    Returns:
        (report row, compiled model or None, failure message or None).
    """
    from .compiler import compile_edgetpu
    from .lint import lint_model, lint_summary

    row: dict = {"lint": lint_summary(lint_model(int8_path))}
    try:
        result = compile_edgetpu(int8_path, export_dir)
    except EdgekitError as e:  # the other variants are fine; report the failure, keep them
        print(f"edgetpu: {e}", file=sys.stderr)
        row["status"] = f"failed: {e}"
        return row, None, f"Edge TPU compilation {row['status']}"
    if not result.available:
        print(f"edgetpu: skipped: {result.message}", file=sys.stderr)
        row.update(status="skipped: edgetpu_compiler not installed", message=result.message)
        return row, None, None
    # The compiler rewrites the tensors: the compiled model gets its own digest.
    write_bytes(result.output_path, embed_digest(result.output_path.read_bytes()))
    row.update(compiler=result.to_dict(), status="compiled",
               size_bytes=result.output_path.stat().st_size)
    cpu_ops = row["compiler"].get("cpu_ops", 0)
    failed = None
    if cpu_ops and not allow_cpu_fallback:
        failed = (f"{cpu_ops} op(s) of the Edge TPU model run on the CPU (see "
                  "convert_report.md); pass --allow-cpu-fallback to accept")
    return row, result.output_path, failed


def _keras_row(src: Source, ref: Reference, classes: list[str]) -> dict:
    row = score(ref.probs, ref.labels, ref.probs, classes)
    size = src.path.stat().st_size if src.path.is_file() else sum(
        p.stat().st_size for p in src.path.rglob("*") if p.is_file())
    return {"top1": row["top1"], **({"top5": row["top5"]} if "top5" in row else {}),
            "size_bytes": size}


def export(target: str | Path, variants: list[str] | None = None, calib: int = 300,
           io: str = "uint8", max_drop: float | None = 2.0, float_layers: list[str] | None = None,
           labels: str | Path | None = None, img_size: int | None = None,
           data: str | Path | None = None, out: str | Path | None = None,
           allow_cpu_fallback: bool = False) -> ExportResult:
    """Writes TFLite variants and checks each on the held-out split.

    The keyword form of :func:`export_source`: ``variants`` to ``allow_cpu_fallback`` make
    the :class:`ExportOptions`, ``labels`` to ``out`` find the :class:`Source`.

    Args:
        target: a run folder, a ``.keras`` file or a SavedModel folder.
        variants, calib, io, max_drop, float_layers, allow_cpu_fallback: see
            :class:`ExportOptions`.
        labels, img_size, data, out: for a model not made by ``train``
            (see :func:`convert.source.open_source`).

    Raises:
        EdgekitError: unusable input or a failed conversion.
    """
    options = ExportOptions(tuple(variants or DEFAULT_VARIANTS), calib, io, max_drop,
                            tuple(float_layers or ()), allow_cpu_fallback)
    return export_source(open_source(target, labels, img_size, data, out), options)


def export_source(src: Source, options: ExportOptions) -> ExportResult:
    """Every model gets the manifest embedded in its metadata and beside it; each is run
    with the TFLite interpreter (edgekit's runtime preprocessing) on the held-out images:
    top-1/top-5, agreement with the source model, per-class accuracy and its change vs
    float32, probability error. ``convert_report.json`` and ``.md`` hold the results.

    Raises:
        EdgekitError: unusable input or a failed conversion.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    variants, notes = plan_variants(options.variants)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    export_dir = src.export_dir
    export_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale(export_dir)
    if stale:
        print(f"removed {len(stale)} work folder(s) an interrupted convert left in "
              f"{export_dir}", file=sys.stderr)
    ref = reference(src)
    classes = src.manifest.labels
    provenance = {"source": str(src.path.resolve()), "source_sha256": src.sha256(),
                  "tensorflow": _tf_version(),
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with signals_interrupt(), work_dir(export_dir, ".savedmodel-") as work:
        saved = work / "saved_model"  # imx500 alone needs none: its worker rebuilds the model
        if set(variants) - {"imx500"}:
            saved_model_for(ref.model, tuple(src.manifest.input_size), saved, ref.loaded)
        rep, n = calibration(src, options) if {"int8", "imx500"} & set(variants) else (None, 0)
        models, rows = write_variants(src, saved, variants, options, provenance, rep, n)
        for name, count in add_selftests(models, selftest_images(src), work).items():
            rows[name]["selftest_cases"] = count
        drift = record_baselines(src, models, work, "edgetpu" in variants)
        for name, path in models.items():  # golden cases and drift baseline included
            rows[name]["size_bytes"] = path.stat().st_size
        write_beside(src, provenance, models, drift)
        report: dict[str, Any] = {"source": str(src.path), "origin": src.origin,
                                  "test_images": int(len(ref.labels)), "skipped": ref.skipped,
                                  "notes": notes, "variants": rows}
        failed = None
        if ref.probs is not None:
            for name, scores in evaluate(models, ref, classes).items():
                rows[name].update(scores)
            report["keras"] = _keras_row(src, ref, classes)
            from .evaluate import field_test

            field = field_test(models, ref.predict, src.manifest, src.data_root, classes)
            if field:  # the dataset had field images: their held-out split too
                report["field_test"] = field
            failed, layers = accuracy_promise(rows, options.max_drop, saved, rep)
            if layers is not None:
                report["quantization_debugger"] = layers
        if "imx500" in variants:  # convert.imx500: Sony's converter in its own environment
            from .imx500 import imx500_stage, promise

            rows["imx500"], imx_failed = imx500_stage(src, ref, rep, work, provenance)
            add_deltas(rows)
            failed = _both(failed, imx_failed or promise(rows["imx500"], options.max_drop))
    if "edgetpu" in variants:
        rows["edgetpu"], compiled, tpu_failed = edgetpu_stage(models["int8"], export_dir,
                                                              options.allow_cpu_fallback)
        if compiled is not None:
            models["edgetpu"] = compiled
        failed = _both(failed, tpu_failed)
    report["failed"] = failed
    write_json(export_dir / "convert_report.json", report)
    write_text(export_dir / "convert_report.md", to_markdown(report))
    return ExportResult(export_dir, models, report, failed)


__all__ = ["DEFAULT_VARIANTS", "ExportOptions", "ExportResult", "export", "export_source",
           "format_table", "plan_variants"]
