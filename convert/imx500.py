"""The ``imx500`` variant: the Raspberry Pi AI Camera's package, made in a pinned environment.

Sony's converter stack (imx500-converter, MCT) needs TensorFlow 2.15 / Keras 2 and numpy < 2;
edgekit trains with Keras 3. So this side writes the trained weights as plain arrays plus the
architecture (alpha, input size, classes, dropout), the calibration and held-out images and
the trained model's outputs on them, and runs ``convert/imx500_worker.py`` inside
``.venv-imx500`` (``make imx500-env``). The worker rebuilds the model in Keras 2, proves its
outputs equal (1e-5), quantizes with MCT for the IMX500, scores the quantized model and runs
``imxconv-tf``. What comes back: ``export/imx500/packerOut.zip`` with ``labels.txt``,
``manifest.json`` and ``golden.json`` beside it, and a report row like every variant's.
The last step, ``imx500-package`` (packerOut.zip -> network.rpk), runs only on a Pi.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import write_bytes, write_json
from edge_runtime.labels import write_labels

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().with_name("imx500_worker.py")
REQUIREMENTS = Path(__file__).resolve().with_name("imx500_requirements.txt")
ENV_VAR = "EDGEKIT_IMX500_ENV"  # another place for the environment (default .venv-imx500)
TOLERANCE = 1e-5  # rebuilt vs trained outputs (probabilities); float32 reorderings are ~1e-7
# The IMX500 holds the whole network on the sensor: 8 MB for weights and activations
# together (Sony's AI Camera documentation); the converter's own check is the authority,
# this is a quick refusal before minutes of quantization for a network far too large.
SENSOR_MEMORY_BYTES = 8 * 1024 * 1024
# the worker's timings (result.json), each stage's wall seconds in the report row
STAGES = ("import_seconds", "rebuild_seconds", "quantize_seconds", "export_seconds",
          "score_seconds", "imxconv_seconds", "worker_seconds")
_BASE_NAME = re.compile(r"^mobilenetv2_(\d+(?:\.\d+)?)_(\d+)$")

FIXES = {
    "env": "run `make imx500-env` (Python 3.11; pins in convert/imx500_requirements.txt)",
    "java": "install Java 17: apt-get install openjdk-17-jre-headless (imxconv-tf needs it)",
    "memory": "the IMX500 holds at most 8 MB of weights and activations: use a smaller "
              "--alpha or --img-size",
    "architecture": "the imx500 variant rebuilds edgekit's MobileNetV2 (train's model)",
}


def env_python() -> Path:
    """The pinned environment's interpreter.

    Raises:
        EdgekitError: missing, or made from another requirements file (with the fix).
    """
    # absolute, not resolved: the worker runs in its job folder, and a venv's python is a
    # symlink that must keep its own path to find its site-packages
    env = Path(os.environ.get(ENV_VAR) or ROOT / ".venv-imx500").absolute()
    py = env / "bin" / "python"
    if not py.is_file():
        raise EdgekitError(f"the IMX500 converter environment {env} is missing: {FIXES['env']}")
    key = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    have = (env / ".key").read_text().strip() if (env / ".key").is_file() else ""
    if have != key:
        raise EdgekitError(f"the IMX500 converter environment {env} is not the pinned one "
                           f"(key {have or 'none'}, expected {key}): {FIXES['env']}")
    return py


def require_java() -> str:
    """The ``java`` executable.

    Raises:
        EdgekitError: not on PATH.
    """
    java = shutil.which("java")
    if java is None:
        raise EdgekitError(f"java not found: {FIXES['java']}")
    return java


def _flat_layers(model: Any) -> list:
    out = []
    for layer in model.layers:
        out.extend(_flat_layers(layer) if hasattr(layer, "layers") else [layer])
    return out


def architecture(model: Any, labels: list[str]) -> dict:
    """alpha, img_size, classes and dropout of a model made by ``train.model.build_model``.

    Raises:
        EdgekitError: any other architecture (named).
    """
    if model is None:
        raise EdgekitError(f"a SavedModel cannot be rebuilt: {FIXES['architecture']}")
    base = [layer for layer in model.layers if hasattr(layer, "layers")]
    match = _BASE_NAME.match(base[0].name) if len(base) == 1 else None
    names = {layer.name for layer in model.layers}
    if match is None or not {"to_minus1_1", "dropout", "classifier"} <= names:
        raise EdgekitError(f"model {model.name!r} is not edgekit's MobileNetV2 + classifier: "
                           f"{FIXES['architecture']}")
    rate = float(model.get_layer("dropout").rate)
    return {"alpha": float(match.group(1)), "img_size": int(match.group(2)),
            "classes": len(labels), "dropout": rate, "params": int(model.count_params())}


def portable_weights(model: Any) -> dict[str, np.ndarray]:
    """Every weight array as ``<layer name>/<i>``, in Keras' order for that layer."""
    out: dict[str, np.ndarray] = {}
    for layer in _flat_layers(model):
        for i, w in enumerate(layer.get_weights()):
            out[f"{layer.name}/{i}"] = np.asarray(w, np.float32)
    return out


def write_job(job: Path, model: Any, arch: dict, calib: np.ndarray, test: np.ndarray,
              ref_probs: np.ndarray, timeout: float, val: np.ndarray | None = None) -> None:
    """The files the worker reads (see convert/imx500_worker.py)."""
    job.mkdir(parents=True, exist_ok=True)
    if val is not None and len(val):
        np.save(job / "val.npy", val.astype(np.float32))
    np.savez(job / "weights.npz", **portable_weights(model))
    np.save(job / "calib.npy", calib.astype(np.float32))
    np.save(job / "test.npy", test.astype(np.float32))
    np.save(job / "ref_probs.npy", ref_probs.astype(np.float32))
    (job / "job.json").write_text(json.dumps({**arch, "tolerance": TOLERANCE,
                                              "timeout": timeout}))


def run_worker(py: Path, job: Path, timeout: float) -> dict:
    """Runs the worker; returns its result.json.

    Raises:
        EdgekitError: the worker failed (its one line, with the fix when there is one).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        p = subprocess.run([str(py.absolute()), str(WORKER), str(job.absolute())],
                           capture_output=True, text=True,
                           timeout=timeout + 600, env=env, cwd=job)
    except subprocess.TimeoutExpired:
        raise EdgekitError(f"the IMX500 worker ran over {timeout + 600:.0f} s") from None
    result_path = job / "result.json"
    if not result_path.is_file():  # died before writing: an interpreter or import failure
        tail = [ln for ln in (p.stderr or "").splitlines() if ln.strip()][-1:] or ["no output"]
        raise EdgekitError(f"the IMX500 converter environment is broken ({tail[0][:200]}): "
                           f"{FIXES['env']}")
    result = json.loads(result_path.read_text())
    if not result.get("ok"):
        kind = result.get("kind", "")
        fix = FIXES.get("env" if kind == "internal" and "Import" in result.get("error", "")
                        else kind)
        raise EdgekitError(f"{result.get('error', 'failed')}" + (f": {fix}" if fix else ""))
    return result


def check_size(arch: dict) -> None:
    """Refuses a network whose int8 weights alone exceed the sensor's memory.

    Raises:
        EdgekitError: too large (with the fix).
    """
    if arch["params"] > SENSOR_MEMORY_BYTES:
        raise EdgekitError(f"{arch['params'] / 1e6:.1f} M parameters (int8: "
                           f"{arch['params'] / 2**20:.1f} MB) do not fit the IMX500: "
                           f"{FIXES['memory']}")


def golden(q_probs: np.ndarray, names: list[str], labels: list[str], k: int = 3,
           limit: int = 8) -> dict:
    """The quantized model's top-k on the first held-out images, to compare on the device."""
    cases = []
    for name, p in list(zip(names, q_probs))[:limit]:
        top = np.argsort(-p)[:k]
        cases.append({"image": name, "top": [{"index": int(i), "label": labels[int(i)],
                                              "score": round(float(p[i]), 6)} for i in top]})
    return {"model": "packerOut.zip", "source": "MCT's quantized Keras model on x86",
            "cases": cases}


def drift_baseline(job: Path, split: str, inputs: dict | None = None) -> dict | None:
    """The IMX500 model's own drift baseline (its outputs on the baseline images, plus the
    input statistics every variant shares: the Pi prepares each frame's model input too),
    keyed by the file the daemon runs on the Pi: network.rpk."""
    from edge_runtime.drift import BASELINE_VERSION, make_baseline

    path = job / "q_val_probs.npy"
    if not path.is_file():
        return None
    entry = make_baseline(np.load(path))
    if inputs is not None:
        entry["input"] = inputs
    return {"version": BASELINE_VERSION, "split": split, "models": {"network.rpk": entry}}


def promise(row: dict, max_drop: float | None) -> str | None:
    """``--max-drop`` for the IMX500 row as for int8: why it failed, or None."""
    drop = row.get("top1_drop_points")
    if max_drop is None or drop is None or drop <= max_drop:
        return None
    return f"imx500 top-1 is {drop:.2f} points below float32 (limit {max_drop})"


def write_package(src: Any, result: dict, arch: dict, provenance: dict, q_probs: Any,
                  drift: dict | None = None) -> Path:
    """``export/imx500/``: packerOut.zip, labels.txt, manifest.json, golden.json."""
    from .export import _exported_manifest

    out = src.export_dir / "imx500"
    out.mkdir(parents=True, exist_ok=True)
    packer = out / "packerOut.zip"
    write_bytes(packer, Path(result["packer"]).read_bytes())
    m = _exported_manifest(src, provenance, {"kind": "imx500", **{
        k: result[k] for k in ("calibration_images", "versions", "memory")}})
    extra = dict(m.extra, imx500={"architecture": arch, "packer_sha256": src.sha256_of(packer),
                                  "next": "on the Pi: imx500-package -i packerOut.zip -o ."})
    replace(m, extra=extra, drift_baseline=drift).save(out / "manifest.json")
    write_labels(out / "labels.txt", src.manifest.labels)
    # names only when no held-out image was skipped (then q_probs follows split.test)
    if q_probs is not None and src.split is not None and len(q_probs) == len(src.split.test):
        write_json(out / "golden.json", golden(q_probs, [r for r, _ in src.split.test],
                                               src.manifest.labels))
    return packer


def calibration_array(rep: Any) -> np.ndarray:
    """The int8 calibration generator's images as one array (the same images as int8)."""
    return np.concatenate([batch[0] for batch in rep()], axis=0)


def imx500_stage(src: Any, ref: Any, rep: Any, work: Path, provenance: dict,
                 timeout: float = 900.0) -> tuple[dict, str | None]:
    """Makes and scores the IMX500 package; a failure is reported, never raised, so the
    other variants stay written.

    Args:
        src: the :class:`convert.source.Source`.
        ref: the :class:`convert.export.Reference` (the trained model and held-out split).
        rep: the int8 calibration generator factory (see ``convert.export.calibration``).
        work: a scratch folder removed afterwards.
        provenance: the exported manifests' provenance.
        timeout: seconds for ``imxconv-tf``.

    Returns:
        (report row, failure message or None).
    """
    from .drift_baseline import baseline_images, input_baseline
    from .evaluate import score

    t0 = time.time()
    try:
        py = env_python()
        require_java()
        arch = architecture(ref.model, src.manifest.labels)
        check_size(arch)
        job = work / "imx500"
        val, split = baseline_images(src)
        write_job(job, ref.model, arch, calibration_array(rep), ref.images,
                  ref.probs if ref.probs is not None else np.zeros((0, arch["classes"])),
                  timeout, val)
        prepare_s = time.time() - t0
        result = run_worker(py, job, timeout)
        q_path = job / "q_probs.npy"
        q_probs = np.load(q_path) if q_path.is_file() else None
        packer = write_package(src, result, arch, provenance, q_probs,
                               drift_baseline(job, split, input_baseline(src)))
    except EdgekitError as e:  # said once, by convert's last line (the others still made)
        return {"status": f"failed: {e}"}, f"IMX500 conversion failed: {e}"
    seconds = time.time() - t0
    row: dict = {"file": "imx500/packerOut.zip", "status": "converted",
                 "convert_seconds": round(seconds, 2), "size_bytes": packer.stat().st_size,
                 **{k: result[k] for k in ("rebuild_max_abs_diff", "rebuild_seconds",
                                           "quantize_seconds", "imxconv_seconds",
                                           "calibration_images", "memory")},
                 "stage_seconds": {"prepare": round(prepare_s, 2),
                                   **{k[:-8]: result[k] for k in STAGES if k in result}},
                 "stage_cpu_seconds": result.get("cpu_seconds", {})}
    if q_probs is not None and ref.probs is not None and len(ref.labels):
        row.update(score(q_probs, ref.labels, ref.probs, src.manifest.labels))
    print(f"imx500: converted in {seconds:.1f} s ({row['size_bytes'] / 1024:.0f} KB "
          f"packerOut.zip; rebuild max |diff| {result['rebuild_max_abs_diff']:.1e})",
          file=sys.stderr)
    return row, None
