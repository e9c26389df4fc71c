"""Converter units that need no trained model: run-folder reading without TensorFlow, the
export plan, stale work folders."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_runtime.errors import EdgekitError
from tests.conftest import ROOT

NO_TF = r"""
import sys
for name in ("tensorflow", "keras", "tf_keras"):
    sys.modules[name] = None  # any import of these now raises ImportError
import edge_runtime.runs, convert.source, convert.export, benchmarks.core
from edge_runtime.runs import Split, load_arrays, load_run, scan, stratified_split
import train.data
assert train.data.load_run is load_run and train.data.Split is Split
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")
               and sys.modules[m] is not None)
print("heavy:", heavy)
print("train:", sorted(m for m in sys.modules if m == "train" or m.startswith("train.")))
"""


def test_run_folder_reading_never_imports_tensorflow():
    r = subprocess.run([sys.executable, "-c", NO_TF], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "heavy: []" in r.stdout
    # convert and benchmarks read run folders through edge_runtime.runs, not train
    out = subprocess.run([sys.executable, "-c", "import sys, convert.source, convert.export, "
                          "benchmarks.core; print(sorted(m for m in sys.modules "
                          "if m.split('.')[0] == 'train'))"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- the export plan: nothing the user asked for is changed silently ---------------------

def test_edgetpu_adds_int8_and_says_so():
    from convert.export import plan_variants

    assert plan_variants(("float32", "edgetpu")) == (
        ["float32", "int8", "edgetpu"],
        ["the Edge TPU model is compiled from the int8 model: int8 added to the variants"])
    assert plan_variants(("int8", "edgetpu")) == (["int8", "edgetpu"], [])


@pytest.mark.parametrize("kwargs, message", [
    ({"variants": ("float32", "onnx9")}, "unknown variant"),
    ({"calib": 0}, "--calib must be >= 1, got 0"),
    ({"io": "int16"}, "--io 'int16', expected one of uint8, int8, float"),
    ({"variants": ("float32",), "float_layers": ("conv1",)},
     "--float-layers applies to the int8 model, but --variants float32 has no int8"),
])
def test_export_options_refuse_what_they_cannot_do(kwargs, message):
    from convert.export import ExportOptions

    with pytest.raises(EdgekitError, match=re.escape(message)):
        ExportOptions(**kwargs)


def test_int8_io_is_checked_not_rewritten(monkeypatch):
    import convert.export as ex

    monkeypatch.setattr(ex, "convert_one", lambda saved, quant: b"model")
    monkeypatch.setattr(ex, "_io_quantization", lambda data: {
        "input": {"dtype": "int8"}, "output": {"dtype": "int8"}})
    opts = ex.ExportOptions(("int8",), io="uint8")
    with pytest.raises(EdgekitError, match="int8 input/output, --io asked for uint8"):
        ex.convert_variant("int8", Path("saved"), opts, rep=lambda: iter(()))
    data, info = ex.convert_variant("int8", Path("saved"), ex.ExportOptions(("int8",),
                                    io="int8"), rep=lambda: iter(()), calibration_images=7)
    assert data == b"model" and (info["io"], info["calibration_images"]) == ("int8", 7)


# --- work folders: removed on the way out, and stale ones by the next run -----------------

HOLDER = r"""
import sys, time
from pathlib import Path
from convert.workdir import signals_interrupt, work_dir
with signals_interrupt(), work_dir(Path(sys.argv[1]), ".savedmodel-") as w:
    (w / "saved_model.pb").write_bytes(b"x" * 1000)
    print(w, flush=True)
    time.sleep(60)
"""


def _holder(parent: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(parent)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read()
    return proc, Path(line)


def test_sigterm_removes_the_work_folder(tmp_path):
    proc, work = _holder(tmp_path)
    assert work.is_dir() and work.parent == tmp_path
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    assert not work.exists() and list(tmp_path.iterdir()) == []


def test_stale_folders_go_live_ones_stay(tmp_path):
    from convert.workdir import remove_stale

    killed, dead = _holder(tmp_path)
    killed.kill()  # SIGKILL: nothing runs, the folder stays behind
    killed.wait(timeout=30)
    assert dead.is_dir()
    live_proc, live = _holder(tmp_path)
    try:
        old = tmp_path / ".edgetpu-old"  # no lock file: from before locks, or an old crash
        old.mkdir()
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        young = tmp_path / ".savedmodel-young"  # no lock yet: being created right now
        young.mkdir()
        (tmp_path / ".savedmodel-file").write_text("not a folder")
        (tmp_path / "mine").mkdir()
        (tmp_path / ".savedmodel-link").symlink_to(tmp_path / "mine")
        assert sorted(p.name for p in remove_stale(tmp_path)) == [".edgetpu-old", dead.name]
        assert live.is_dir() and young.is_dir() and (tmp_path / "mine").is_dir()
        assert (tmp_path / ".savedmodel-file").is_file()
        assert (tmp_path / ".savedmodel-link").is_symlink()
    finally:
        live_proc.kill()
        live_proc.wait(timeout=30)


def test_work_dir_is_removed_on_error_and_lets_signals_go(tmp_path):
    from convert.workdir import signals_interrupt, work_dir

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="boom"), signals_interrupt(), \
            work_dir(tmp_path, ".savedmodel-") as w:
        assert (w / ".lock").is_file()
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(ValueError, match="prefix"), work_dir(tmp_path, "tmp-"):
        pass


# --- a desktop with only the train extra (TensorFlow, no LiteRT) converts ----------------

TF_ONLY = r"""
import sys
for name in ("ai_edge_litert", "tflite_runtime"):
    sys.modules[name] = None  # as on a desktop with only the train extra
from edge_runtime import tflite
from edge_runtime.backend import backend
from edge_runtime.metadata import embed_manifest, read_embedded_manifest
from convert.export import _io_quantization
data = open(sys.argv[1], "rb").read()
print(backend().name, tflite.schema().__name__)
print(read_embedded_manifest(embed_manifest(data, {"labels": ["a", "b"]})))
print(_io_quantization(data)["input"]["dtype"])
"""


@pytest.mark.slow  # a TensorFlow-only interpreter process (~8 s of CPU): make test-slow
def test_tensorflow_alone_reads_writes_and_runs_models(coral):
    r = subprocess.run([sys.executable, "-c", TF_ONLY,
                        str(coral / "mobilenet_v2_1.0_224_quant.tflite")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[-3:] == [
        "tensorflow tensorflow.lite.python.schema_py_generated", "{'labels': ['a', 'b']}",
        "uint8"]


# --- selective quantization keeps the requested input/output type -------------------------

@pytest.mark.slow  # three conversions and the quantization debugger: make test-slow
def test_float_layers_keep_the_requested_io(tmp_path):
    pytest.importorskip("tensorflow")
    import keras
    import numpy as np

    from convert.debug import layer_errors, selective_int8
    from convert.export import saved_model_for
    from edge_runtime.backend import backend

    inp = keras.Input((8, 8, 3))
    x = keras.layers.ReLU()(keras.layers.Conv2D(4, 3)(inp))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))
    saved = saved_model_for(model, (8, 8), tmp_path / "saved_model")
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32) for _ in range(8)]

    def rep():
        return ([b] for b in batches)

    layers = {r["short_name"]: r for r in layer_errors(saved, rep, top=100)}
    assert layers and all(r["rmse_per_scale"] >= 0 for r in layers.values())
    inner = next(r["tensor"] for name, r in layers.items() if "global_average" in name)
    for io, dtype in (("uint8", np.uint8), ("int8", np.int8), ("float", np.float32)):
        it = backend().interpreter_cls(model_content=selective_int8(saved, rep, [inner], io))
        assert it.get_input_details()[0]["dtype"] == dtype
        assert it.get_output_details()[0]["dtype"] == dtype
    # the softmax output kept in float cannot have a uint8 output: refused, not ignored
    output = next(r["tensor"] for name, r in layers.items() if "StatefulPartitionedCall" in name)
    with pytest.raises(EdgekitError, match="input/output stays float32/uint8, not uint8"):
        selective_int8(saved, rep, [output], "uint8")
