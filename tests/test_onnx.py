"""The onnx variant and the ONNX Runtime backend (CPU provider here; TensorRT/CUDA on a Jetson)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
# Only whether tf2onnx is installed: importing it imports TensorFlow, 5 s of collection
# before any test (and before the tiny run's background process) can start.
if importlib.util.find_spec("tf2onnx") is None:
    pytest.skip("could not import 'tf2onnx': the onnx variant needs the train extra",
                allow_module_level=True)

from edge_runtime.classify import Classifier  # noqa: E402
from edge_runtime.errors import EdgekitError  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

# The tests on a model of their own (a float32 + tf2onnx conversion): make test-slow, and CI.
ONNX_EXPORT = pytest.mark.slow


@pytest.fixture(scope="module")
def onnx_export(trained_run, tmp_path_factory):
    """The tiny run exported as float32 TFLite and ONNX into a folder of its own."""
    from convert.export import export

    out = tmp_path_factory.mktemp("onnx") / "export"
    return export(trained_run, ["float32", "onnx"], out=out)


@ONNX_EXPORT
def test_onnx_variant_agrees_with_keras_and_tflite(onnx_export, trained_run):
    rows = onnx_export.report["variants"]
    onnx = rows["onnx"]
    assert onnx["file"] == "model.onnx"
    assert onnx["agreement"] >= 0.995, onnx
    assert onnx["max_prob_error"] <= 1e-4, onnx
    assert onnx["top1"] == rows["float32"]["top1"]
    # Same answers as the TFLite float32 model, image by image, through the runtime.
    from convert.evaluate import run_model
    from edge_runtime.runs import load_run

    manifest, split, root = load_run(trained_run)
    from edge_runtime.runs import load_arrays

    x, _, _ = load_arrays(root, split.test, manifest.input_size, manifest.resize,
                          manifest.interpolation)
    a = run_model(onnx_export.models["onnx"], x)
    b = run_model(onnx_export.models["float32"], x)
    assert (a.argmax(1) == b.argmax(1)).all()
    assert float(np.abs(a - b).max()) <= 1e-4


@ONNX_EXPORT
def test_onnx_model_describes_itself(onnx_export, tmp_path):
    import shutil

    lone = tmp_path / "model.onnx"
    shutil.copyfile(onnx_export.models["onnx"], lone)  # no manifest.json beside it
    clf = Classifier(lone)
    assert clf.provider == "CPUExecutionProvider"
    assert clf.manifest is not None and clf.labels == dict(enumerate(clf.manifest.labels))
    assert clf.input_size == tuple(clf.manifest.input_size)


@ONNX_EXPORT
def test_onnx_selftest_passes_and_its_hash_is_recorded(onnx_export):
    from edge_runtime.selftest import recorded_sha256, run_selftest

    model = onnx_export.models["onnx"]
    assert onnx_export.report["variants"]["onnx"]["selftest_cases"] >= 1
    assert recorded_sha256(model) is not None
    report = run_selftest(model)
    assert report.status == "pass", report.failure_lines()
    r = run_cli("edge_runtime", "selftest", "--model", str(model), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "pass"


@ONNX_EXPORT
def test_classify_cli_takes_onnx(onnx_export, sample):
    image = next(p for p in sorted((sample / "images").rglob("*")) if p.is_file())
    r = run_cli("edge_runtime", "classify", "--model", str(onnx_export.models["onnx"]),
                "--json", str(image))
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout.splitlines()[0])["top"]
    assert top[0]["label"] == image.parent.name


@ONNX_EXPORT
def test_requested_gpu_providers_fall_back_to_cpu(onnx_export, caplog):
    clf = Classifier(onnx_export.models["onnx"], providers=["tensorrt", "cuda", "cpu"])
    assert clf.provider == "CPUExecutionProvider"
    assert any("not available here" in r.getMessage() for r in caplog.records)


@ONNX_EXPORT
def test_unknown_provider_is_one_clear_error(onnx_export):
    with pytest.raises(EdgekitError, match=r"unknown ONNX Runtime provider\(s\) opencl"):
        Classifier(onnx_export.models["onnx"], providers=["opencl"])


def test_not_onnx_is_one_line(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    r = run_cli("edge_runtime", "classify", "--model", str(bad), str(bad))
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot load ONNX model {bad}")


def test_two_inputs_are_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 8, 8, 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8, 8, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 3])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two", [a, b], [y])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(EdgekitError, match=r"not an image classifier: 2 inputs, expected 1"):
        Classifier(path)


def test_runtime_imports_onnxruntime_only_for_onnx_models(coral):
    import subprocess

    code = ("import sys; from edge_runtime.classify import Classifier; "
            f"Classifier({str(coral / 'mobilenet_v2_1.0_224_quant.tflite')!r}); "
            "print('onnxruntime' in sys.modules, 'tensorflow' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["False", "False"], r.stderr


def test_doctor_on_a_jetson_names_jetpack_and_the_missing_gpu_provider(tmp_path):
    from edge_runtime.config import load_config
    from edge_runtime.doctor import Doctor

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "etc" / "nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    cfg = load_config(Path(__file__).parents[1] / "device_configs" / "jetson-orin-nano.yaml",
                      environ={})
    checks = {c.name: c for c in Doctor(cfg, root, run=lambda cmd: None,
                                        edgetpu_loader=lambda d: object()).run_all()}
    assert checks["jetpack"].detail == "L4T 36.4.3"
    assert checks["onnxruntime"].status == "warn"  # the CPU-only PyPI build here
    assert "CPUExecutionProvider" in checks["onnxruntime"].detail
    assert "fallback model runs on the CPU" in checks["onnxruntime"].detail
    assert "NVIDIA's Jetson packages" in checks["onnxruntime"].fix
    assert checks["tensorrt"].status in ("ok", "warn")


@ONNX_EXPORT
def test_benchmarks_measure_the_onnx_model_and_name_its_provider(onnx_export):
    from benchmarks.core import find_variants
    from benchmarks.measure import measure_latency

    assert find_variants(onnx_export.export_dir)["onnx"] == onnx_export.models["onnx"]
    image = np.zeros((120, 160, 3), np.uint8)
    row = measure_latency(onnx_export.models["onnx"], 1, image, runs=5, warmup=1)
    assert row["provider"] == "CPUExecutionProvider"
    assert row["backend"].startswith("onnxruntime ")
    assert row["runs"] >= 5 and row["latency_ms"]["min"] > 0
