"""Runs INSIDE the IMX500 environment (.venv-imx500: TF 2.15, Keras 2, MCT): never imported.

Usage (convert.imx500 runs it): .venv-imx500/bin/python convert/imx500_worker.py JOB_DIR

JOB_DIR holds what edgekit's own environment (Keras 3) wrote: job.json (architecture, paths,
tolerance), weights.npz (``<layer>/<i>`` arrays of every layer with weights), calib.npy,
test.npy, ref_probs.npy, val.npy (the trained model's outputs on test.npy). This script rebuilds the
same MobileNetV2 + head in Keras 2, loads the weights, proves the outputs equal the trained
model's, quantizes with MCT for the IMX500, scores the quantized model on test.npy and runs
``imxconv-tf``. It writes result.json (``{"ok": true, ...}`` or ``{"ok": false, "error":
ONE LINE, "kind": ...}``) q_probs.npy and q_val_probs.npy; exit 0, or 1 after writing the error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class JobError(Exception):
    """A failure to report as one line; ``kind`` says which (edgekit maps it to a fix)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def build_model(tf, spec: dict):
    """The Keras 2 twin of train.model.build_model, flat (no nested base model): the
    converter and MCT see every layer; the names match Keras 3's, so weights load by name."""
    size = int(spec["img_size"])
    inputs = tf.keras.Input((size, size, 3), name="image")
    # Rescaling (x / 127.5 - 1) is not an IMX500 op: the same affine map as a 1x1 depthwise
    # convolution is, and it stays exact (folding it into Conv1 would not be, at the
    # zero-padded border). Its weights are set in scaling_weights().
    x = tf.keras.layers.DepthwiseConv2D(1, use_bias=True, name="to_minus1_1")(inputs)
    base = tf.keras.applications.MobileNetV2(
        input_tensor=x, alpha=float(spec["alpha"]), include_top=False, weights=None,
        pooling="avg")
    y = tf.keras.layers.Dropout(float(spec["dropout"]), name="dropout")(base.output)
    outputs = tf.keras.layers.Dense(int(spec["classes"]), activation="softmax",
                                    name="classifier")(y)
    return tf.keras.Model(inputs, outputs, name=f"mobilenetv2_{spec['alpha']}_{size}")


def set_scaling(model) -> None:
    """The input scaling layer's weights: x / 127.5 - 1 per channel."""
    import numpy as np

    layer = model.get_layer("to_minus1_1")
    layer.set_weights([np.full((1, 1, 3, 1), 1.0 / 127.5, np.float32),
                       np.full((3,), -1.0, np.float32)])


def load_weights(model, weights) -> int:
    """Sets every layer's weights from ``<layer>/<i>`` arrays; returns the arrays used.

    Raises:
        JobError: a layer missing on either side or a shape that differs.
    """
    names = set(weights.files)
    used = 0
    for layer in model.layers:
        want = layer.get_weights()
        if not want or layer.name == "to_minus1_1":
            continue
        got = [weights[f"{layer.name}/{i}"] for i in range(len(want))
               if f"{layer.name}/{i}" in names]
        if len(got) != len(want):
            raise JobError("architecture", f"layer {layer.name} has {len(want)} weight "
                           f"arrays, the trained model {len(got)}")
        for w, g in zip(want, got):
            if w.shape != g.shape:
                raise JobError("architecture", f"layer {layer.name}: shape {g.shape} in the "
                               f"trained model, {w.shape} in the rebuilt one")
        layer.set_weights(got)
        used += len(got)
    if used != len(names):
        left = sorted(names - {f"{lay.name}/{i}" for lay in model.layers[2:]
                               for i in range(len(lay.get_weights()))})
        raise JobError("architecture", f"{len(left)} weight array(s) of the trained model "
                       f"have no layer in the rebuilt MobileNetV2 (first: {left[0]})")
    return used


def quantize(mct, model, calib, batch: int):
    """MCT post-training quantization for the IMX500 (its target platform, v1), MCT's
    default settings (MSE thresholds, bias correction, shift-negative correction)."""
    tpc = mct.get_target_platform_capabilities("tensorflow", "imx500",
                                               target_platform_version="v1")

    def representative():
        for i in range(0, len(calib), batch):
            yield [calib[i:i + batch]]

    with _no_unused_histogram():
        q_model, _ = mct.ptq.keras_post_training_quantization(
            model, representative, target_platform_capabilities=tpc)
    return q_model


@contextlib.contextmanager
def _no_unused_histogram():
    """Skips MCT's Hessian-weighted activation histogram while quantizing.

    MCT 2.5 fills it for every tensor of every calibration batch (a second 2048-bin
    histogram over all-ones weights), but reads it only with the HMSE error method; the
    default, MSE, reads the plain one. On a 224-px MobileNetV2 1.0 it was 30% of the
    quantization's time for the same quantized model (checked: equal outputs).
    """
    from model_compression_toolkit.core.common.collectors import statistics_collector as sc

    original = sc.StatsCollector.update_statistics

    def update_statistics(self, x, weights=None):
        if weights is not None:  # HMSE: Hessian weights given, MCT's own path
            return original(self, x, weights)
        x = sc.standardize_tensor(x)
        self.hc.update(x)
        self.mc.update(x)
        self.mpcc.update(x)
        return None

    sc.StatsCollector.update_statistics = update_statistics
    try:
        yield
    finally:
        sc.StatsCollector.update_statistics = original


_MEMORY = re.compile(r"(memory|does not fit|exceed|insufficient)", re.I)


# The converter's six JVMs are short-lived: with the default tiered JIT most of their CPU
# went to C2 compiler threads, and the parallel collector adds GC threads, all competing
# for 2 cores. C1 only and the serial collector: 139 -> 104 s of CPU on a 224-px
# MobileNetV2 1.0, the same packerOut.zip (byte for byte, but the date in its manifest).
JVM_PARAMS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def start_converter(q_path: Path, out: Path) -> tuple[subprocess.Popen, float]:
    """Starts ``imxconv-tf`` in its own process group (it runs Java children that a
    timeout must end too), its output to ``imxconv.log``; returns (process, start time).

    Raises:
        JobError: Java missing.
    """
    if shutil.which("java") is None:
        raise JobError("java", "java not found")
    exe = Path(sys.executable).with_name("imxconv-tf")
    cmd = [str(exe), "-i", str(q_path), "-o", str(out), "--no-input-persistency",
           "--overwrite-output"]
    env = dict(os.environ)
    env.setdefault("JVM_PARAMS", JVM_PARAMS)  # a user's own setting wins
    with open(out.parent / "imxconv.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    return proc, time.time()


def finish_converter(proc: subprocess.Popen, started: float, out: Path,
                     timeout: float) -> float:
    """Waits for ``imxconv-tf``; returns its seconds.

    Raises:
        JobError: it ran over ``timeout`` s, the network does not fit the sensor, or any
            other failure (its first error line).
    """
    try:
        code = proc.wait(timeout=max(1.0, timeout - (time.time() - started)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise JobError("converter", f"imxconv-tf ran over {timeout:.0f} s") from None
    seconds = time.time() - started
    text = (out.parent / "imxconv.log").read_text(errors="replace")
    report = memory_report(out)
    if report and report.get("Fit In Chip") is False:
        raise JobError("memory", f"the network needs {report.get('Memory Usage')} of the "
                       f"IMX500's {report.get('Total Memory Available On Chip')} "
                       "(imxconv-tf's memory report)")
    if code != 0 or not (out / "packerOut.zip").is_file():
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines[-1:] or ["no output"]
        kind = "memory" if any(_MEMORY.search(ln) for ln in errors) else "converter"
        raise JobError(kind, f"imxconv-tf exit {code}: {errors[0][:300]}")
    return seconds


def rebuild(tf, np, job_dir: Path, spec: dict):
    """The Keras 2 model with the trained weights, and its largest output difference from
    the trained model's on the held-out images (0.0 without any).

    Raises:
        JobError: the weights do not fit, or the outputs differ by more than the tolerance.
    """
    model = build_model(tf, spec)
    used = load_weights(model, np.load(job_dir / "weights.npz"))
    set_scaling(model)
    test = np.load(job_dir / "test.npy").astype(np.float32)
    ref = np.load(job_dir / "ref_probs.npy")
    diff = 0.0
    if len(test):
        mine = model.predict(test, batch_size=32, verbose=0)
        diff = float(np.abs(mine - ref).max())
        if not diff <= float(spec["tolerance"]):
            raise JobError("equivalence", f"the Keras 2 rebuild differs from the trained "
                           f"model by {diff:.2e} (limit {spec['tolerance']:.0e})")
    return model, used, test, diff


def score(np, q_model, job_dir: Path, test) -> None:
    """The quantized model's outputs on the held-out images (q_probs.npy) and on the drift
    baseline's images (q_val_probs.npy), in one pass."""
    val_path = job_dir / "val.npy"
    val = np.load(val_path).astype(np.float32) if val_path.is_file() else test[:0]
    both = np.concatenate([test, val]) if len(val) else test
    if not len(both):
        return
    probs = q_model.predict(both, batch_size=32, verbose=0).astype(np.float32)
    if len(test):
        np.save(job_dir / "q_probs.npy", probs[:len(test)])
    if len(val):
        np.save(job_dir / "q_val_probs.npy", probs[len(test):])


def _clock() -> tuple[float, float]:
    """(wall, this process's CPU) seconds."""
    return time.time(), time.process_time()


def _children_cpu() -> float:
    """CPU seconds of the finished children: imxconv-tf with its Java and Python ones."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(job_dir: Path) -> dict:
    """The whole job; returns the result fields (see the module docstring)."""
    marks = [_clock()]  # (wall, CPU) at the end of each stage, for the report
    import model_compression_toolkit as mct
    import numpy as np
    import tensorflow as tf

    spec = json.loads((job_dir / "job.json").read_text())
    marks.append(_clock())
    model, used, test, diff = rebuild(tf, np, job_dir, spec)
    marks.append(_clock())
    calib = np.load(job_dir / "calib.npy").astype(np.float32)
    q_model = quantize(mct, model, calib, int(spec.get("batch", 16)))
    marks.append(_clock())
    q_path = job_dir / "model_imx500.keras"
    mct.exporter.keras_export_model(model=q_model, save_model_path=str(q_path))
    # the converter (Java, mostly one thread) runs while this process scores on the other core
    proc, started = start_converter(q_path, job_dir / "imxconv")
    try:
        marks.append(_clock())
        score(np, q_model, job_dir, test)
        marks.append(_clock())
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    convert_s = finish_converter(proc, started, job_dir / "imxconv", float(spec["timeout"]))
    names = ("import", "rebuild", "quantize", "export", "score")
    wall = {f"{n}_seconds": b[0] - a[0] for n, a, b in zip(names, marks, marks[1:])}
    cpu = {n: b[1] - a[1] for n, a, b in zip(names, marks, marks[1:])}
    cpu["imxconv"] = _children_cpu()
    return {"ok": True, "weights_arrays": used, "rebuild_max_abs_diff": diff,
            **{k: round(v, 2) for k, v in wall.items()}, "imxconv_seconds": round(convert_s, 2),
            "worker_seconds": round(time.time() - marks[0][0], 2),
            "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
            "calibration_images": int(len(calib)),
            "versions": {"tensorflow": tf.__version__, "mct": mct.__version__},
            "packer": str(job_dir / "imxconv" / "packerOut.zip"),
            "memory": memory_report(job_dir / "imxconv")}


def memory_report(out: Path) -> dict:
    """The converter's memory report (``*_MemoryReport.json``): what the network uses of the
    sensor's memory and whether it fits; {} when there is none."""
    for path in sorted(out.glob("*_MemoryReport.json")):
        try:
            report = json.loads(path.read_text()).get("Memory Report", {})
        except (OSError, ValueError):
            continue
        return {k: v for k, v in report.items() if k != "Networks"}
    return {}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: imx500_worker.py JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(argv[0])
    try:
        result = run(job_dir)
    except JobError as e:
        result = {"ok": False, "kind": e.kind, "error": str(e)}
    except Exception as e:  # noqa: BLE001 - MCT and TF raise many kinds; report one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        result = {"ok": False, "kind": "internal", "error": f"{type(e).__name__}: {first}"}
    tmp = job_dir / ".result.json"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(job_dir / "result.json")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
