"""Benchmarks every exported variant of a run: latency per thread count and accelerator,
memory, accuracy, the end-to-end camera pipeline and the environment, in one results file.

Layout of the work: each (variant, threads) latency row runs in a fresh worker process
(:mod:`benchmarks.worker`) so its peak RSS is its own; accuracy (once per variant, on the
held-out split) and the end-to-end run (once per variant, at the most threads) run in
this process. See ``benchmarks/SCHEMA.md`` for every field written.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_runtime.backend import is_edgetpu_model
from edge_runtime.errors import EdgekitError
from edge_runtime.preprocess import ImageError, load_image
from edge_runtime.runs import load_run

from .analysis import SCHEMA_VERSION, compare, load_results
from .environment import (
    device_label,
    environment,
    environment_warnings,
    mark_emulated,
    thermal_snapshot,
)
from .measure import measure_accuracy, sha256
from .report import write_all
from .worker import measure_row

RESULTS_SCHEMA_VERSION = SCHEMA_VERSION
VIDEO_NAMES = ("video.avi", "video.mp4", "video.mkv")


def find_variants(export_dir: Path) -> dict[str, Path]:
    """``{variant: path}`` for every ``model_<variant>.tflite`` in the export folder, and
    ``onnx`` for ``model.onnx`` (run by ONNX Runtime)."""
    found = {p.stem.removeprefix("model_"): p for p in sorted(export_dir.glob("model_*.tflite"))}
    if (export_dir / "model.onnx").is_file():
        found["onnx"] = export_dir / "model.onnx"
    return found


def find_video(data_root: Path) -> Path | None:
    """A video beside the run's data (``DATA/../video.avi`` as ``train.sample_data`` writes
    it, or ``DATA/video.avi``), else None."""
    for folder in (data_root.parent, data_root):
        for name in VIDEO_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def _resolve_video(video: str | Path | None, data_root: Path) -> str | None:
    """``"auto"``: :func:`find_video`; None / ``"none"``: no end-to-end run; else a source.

    Raises:
        EdgekitError: a file source that does not exist.
    """
    if video is None or str(video).lower() in ("", "none"):
        return None
    if str(video).lower() == "auto":
        found = find_video(data_root)
        return str(found) if found else None
    from edge_runtime.camera import parse_source

    parse_source(str(video))  # a missing file fails here, before anything is measured
    return str(video)


def _say(msg: str) -> None:
    """A progress message on stderr."""
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BenchOptions:
    """What :func:`benchmark` measures and how; validated when made.

    Attributes:
        variants: variant names (None: every ``export/model_*.tflite``).
        threads: interpreter thread counts (None: 1 and all cores).
        runs: timed ``invoke()`` runs per row (at least).
        warmup: untimed runs after the first inference.
        min_seconds: keep timing each row until at least this long has passed.
        video: end-to-end source: a file, camera index or URL; ``"auto"`` finds the video
            beside the run's data; None skips the end-to-end measurement.
        video_frames: frames of ``video`` to use (0: all).
        video_fps: pace a video file at this rate (None: its own rate; 0: unpaced).
        isolate: one worker process per row (peak RSS per row); False measures in-process.
        device_name: label for this machine in reports (None: board or CPU).
        edgetpu_device: Edge TPU device string for Edge TPU-compiled variants ("usb:0").
        compare_to: a reference results file; regressions go into ``comparison``.
        tolerance: relative latency / fps tolerance for the comparison.
        accuracy_tolerance: absolute top-1 tolerance for the comparison.
        show_progress: draw the accuracy progress bar.
        out_dir: where the results go (None: ``RUN/bench``).
    """

    variants: list[str] | None = None
    threads: list[int] | None = None
    runs: int = 100
    warmup: int = 10
    min_seconds: float = 0.0
    video: str | Path | None = None
    video_frames: int = 60
    video_fps: float | None = None
    isolate: bool = True
    device_name: str | None = None
    edgetpu_device: str | None = None
    compare_to: str | Path | None = None
    tolerance: float = 0.10
    accuracy_tolerance: float = 0.01
    show_progress: bool = True
    out_dir: str | Path | None = None

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.min_seconds < 0:
            raise EdgekitError(f"runs must be >= 1, warmup and min_seconds >= 0; got "
                               f"{self.runs}, {self.warmup} and {self.min_seconds}")


def benchmark(run_dir: str | Path, options: BenchOptions | None = None,
              **knobs: Any) -> tuple[Path, dict[str, Any]]:
    """Measures each variant, writes ``run_dir/bench/`` and returns (report path, results).

    Args:
        run_dir: a training run folder with an ``export/`` folder, or a deployed release
            (``~/edgekit/current``: every model it holds, its ``heldout/`` images).
        options: what to measure and how (default: :class:`BenchOptions`'s defaults).
        **knobs: :class:`BenchOptions` fields, overriding those of ``options``.

    Raises:
        EdgekitError: no exported models, unknown variant, bad counts, unreadable run or
            reference, missing video file, or a CPU model that cannot be measured.
    """
    opts = replace(options or BenchOptions(), **knobs)
    run_path = Path(run_dir)
    found, test_files, root = _load_target(run_path)
    found = _select(found, opts.variants)
    reference = load_results(opts.compare_to) if opts.compare_to else None
    source = _resolve_video(opts.video, root)
    threads = sorted(set(opts.threads or [1, os.cpu_count() or 1]))
    env = environment()
    device = mark_emulated(opts.device_name, env) if opts.device_name else device_label(env)
    rows, skipped = _measure_all(found, test_files, threads, source, opts,
                                 (device, bool(env.get("emulated"))))
    end = thermal_snapshot()
    warnings = environment_warnings(env, end) + skipped
    for w in warnings:
        _say(f"warning: {w}")
    results: dict[str, Any] = {
        "schema_version": RESULTS_SCHEMA_VERSION, "kind": "single", "run": str(run_path),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device, "environment": env, "end": end, "test_images": len(test_files),
        "emulated": env.get("emulated"),
        "settings": {"runs": opts.runs, "warmup": opts.warmup,
                     "min_seconds": opts.min_seconds, "threads": threads,
                     "isolate": opts.isolate, "video": source,
                     "video_frames": opts.video_frames, "video_fps": opts.video_fps},
        "warnings": warnings, "rows": rows}
    if reference is not None:
        results["comparison"] = compare(results, reference, opts.tolerance,
                                        opts.accuracy_tolerance)
    out = Path(opts.out_dir) if opts.out_dir else run_path / "bench"
    return write_all(results, out), results


def _select(found: dict[str, Path], variants: list[str] | None) -> dict[str, Path]:
    """The ``variants`` asked for (all when None).

    Raises:
        EdgekitError: one that was not exported.
    """
    if not variants:
        return found
    missing = [v for v in variants if v not in found]
    if missing:
        raise EdgekitError(f"variant(s) {missing} not exported; found {sorted(found)}")
    return {v: found[v] for v in variants}


def _measure_all(found: dict[str, Path], test_files: list[tuple[Path, int]],
                 threads: list[int], source: str | None, opts: BenchOptions,
                 machine: tuple[str, bool]) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows of every variant, why Edge TPU variants were skipped); ``machine``: (device
    label, emulated) written into each row."""
    image_path = _first_readable(test_files) if test_files else None
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for name, path in found.items():
        accel = "edgetpu" if is_edgetpu_model(path) else "cpu"
        tpu: bool | str = (opts.edgetpu_device or True) if accel == "edgetpu" else False
        try:
            vrows = _measure_variant(name, path, accel, tpu, threads, test_files, image_path,
                                     opts)
            if source:
                _say(f"{name}: end to end over {source} ({threads[-1]} thread(s)) ...")
                from .pipeline import measure_end_to_end

                vrows[-1]["end_to_end"] = measure_end_to_end(
                    path, source, threads[-1], opts.video_frames or None, opts.video_fps, tpu)
        except EdgekitError as e:
            if accel != "edgetpu":
                raise
            skipped.append(f"{name}: skipped, the Edge TPU could not be used: {e}")
            continue
        sha = sha256(path)
        for r in vrows:
            r.update({"device": machine[0], "model_file": path.name, "model_sha256": sha,
                      "size_bytes": path.stat().st_size, "emulated": machine[1]})
            r.setdefault("end_to_end", None)
        rows += vrows
    return rows, skipped


def is_release(path: Path) -> bool:
    """True for a deployed release (``~/edgekit/current``: ``model/`` and ``release.json``,
    no training manifest)."""
    return (path / "model").is_dir() and (path / "release.json").is_file() \
        and not (path / "manifest.json").is_file()


def release_variants(model_dir: Path) -> dict[str, Path]:
    """``{variant: path}`` of every ``.tflite`` a release holds, the model first:
    ``model_int8.tflite`` is ``int8``, ``model.tflite`` ``model``, the CPU fallback
    ``fallback-model_int8.tflite`` ``fallback-int8`` (any other fallback ``fallback``)."""
    out = {}
    for p in sorted(model_dir.glob("*.tflite"), key=lambda p: (p.name.startswith("fallback-"),
                                                                 p.name)):
        if p.name.startswith("fallback-"):
            base = p.stem.removeprefix("fallback-")
            name = "fallback-" + base[6:] if base.startswith("model_") else "fallback"
        else:
            name = p.stem.removeprefix("model_")
        out[name if name not in out else p.stem] = p
    return out


def _load_target(path: Path) -> tuple[dict[str, Path], list[tuple[Path, int]], Path]:
    """(variants, held-out (image, class) pairs, data root) of a run folder or a release.

    A release's held-out set is ``heldout/index.json`` (``{"images": [[relpath, class],
    ...]}``, written by ``python -m deploy deploy``); without one, accuracy is not measured.

    Raises:
        EdgekitError: not a run or release, no models, a damaged held-out index.
    """
    if is_release(path):
        found = release_variants(path / "model")
        if not found:
            raise EdgekitError(f"no .tflite model in the release {path / 'model'}")
        root = path / "heldout"
        index = root / "index.json"
        if not index.is_file():
            return found, [], root
        try:
            items = json.loads(index.read_text(encoding="utf-8"))["images"]
            files = [(root / str(rel), int(ci)) for rel, ci in items]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EdgekitError(f"held-out index unreadable: {e} [{index}]") from None
        return found, files, root
    _manifest, split, root = load_run(path)
    found = find_variants(path / "export")
    if not found:
        raise EdgekitError(f"no exported models in {path / 'export'}; run "
                           f"`python -m convert {path}` first")
    return found, [(root / rel, ci) for rel, ci in split.test], root


def _first_readable(files: list[tuple[Path, int]]) -> Path:
    """The first held-out image that decodes (the latency rows' input).

    Raises:
        EdgekitError: none does.
    """
    for path, _ in files:
        try:
            load_image(path)
            return path
        except ImageError:
            continue
    raise EdgekitError("no readable image in the run's held-out split")


def _measure_variant(name: str, path: Path, accel: str, tpu: bool | str, threads: list[int],
                     test_files: list[tuple[Path, int]], image_path: Path | None,
                     opts: BenchOptions) -> list[dict[str, Any]]:
    """Accuracy once, then one latency row per thread count."""
    acc: dict[str, Any] = {"top1": None, "images": 0}  # no held-out images: not measured
    if test_files:
        _say(f"{name}: accuracy on {len(test_files)} held-out images ({accel}) ...")
        acc = measure_accuracy(path, test_files, threads=threads[-1], edgetpu=tpu,
                               show_progress=opts.show_progress, desc=f"{name} top-1")
    rows = []
    for t in threads:
        _say(f"{name}: latency with {t} thread(s) on {accel}, {opts.runs} runs ...")
        spec = {"model": str(path), "threads": t, "edgetpu": tpu, "runs": opts.runs,
                "warmup": opts.warmup, "min_seconds": opts.min_seconds,
                "image": str(image_path) if image_path else None}
        lat = measure_row(spec, opts.isolate)
        rows.append({"variant": name, "threads": t, "accelerator": accel,
                     "delegate": lat.pop("provider", None)
                     or ("edgetpu" if accel == "edgetpu" else "cpu-default"),
                     **lat, **acc})
    return rows


def run(run_dir: str | Path, options: BenchOptions | None = None, **knobs: Any) -> Path:
    """Measures each variant and writes ``run_dir/bench/``; returns the report path.

    Rows (``results.json``): variant, threads, accelerator, backend, latency_ms {mean,
    std, min, p50, p90, p99, max}, pipeline_ms, load_ms, first_ms, throughput_fps, top1
    (top5), size_bytes, rss_*, end_to_end; see ``benchmarks/SCHEMA.md``. ``options`` and
    ``knobs`` as :func:`benchmark` takes them (no end-to-end run unless ``video`` is given).

    Raises:
        EdgekitError: no exported models, unknown variant or unreadable run.
    """
    return benchmark(run_dir, options, **knobs)[0]
