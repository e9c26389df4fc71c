"""The daemon replays the model's golden cases before serving (model.selftest)."""

from __future__ import annotations

import json
import re
import shutil

import cv2
import numpy as np
import pytest

from edge_runtime import selftest as st
from edge_runtime.classify import Classifier
from tests.conftest import error_lines, run_cli

MODEL = "mobilenet_v2_1.0_224_quant.tflite"


@pytest.fixture()
def golden_model(coral, tmp_path):
    """Coral's MobileNetV2 with golden cases from two of Coral's photos, and a video."""
    labels = coral / "imagenet_labels.txt"
    cases = st.make_cases(Classifier(coral / MODEL, labels=labels),
                          [(p, cv2.imread(str(coral / p))) for p in ("parrot.jpg", "cat.bmp")])
    model = tmp_path / "model.tflite"
    model.write_bytes(st.embed_cases((coral / MODEL).read_bytes(), cases))
    shutil.copyfile(labels, tmp_path / "labels.txt")
    video = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    frame = cv2.resize(cv2.imread(str(coral / "parrot.jpg")), (160, 120))
    for _ in range(6):
        w.write(frame)
    w.release()
    return model, tmp_path / "labels.txt", video


def _run(model, labels, video, *extra):
    return run_cli("edge_runtime", "run", "--model", str(model), "--labels", str(labels),
                   "--source", str(video), "--output", "-", "--max-frames", "3", *extra,
                   timeout=120)


def test_passing_model_serves(golden_model):
    model, labels, video = golden_model
    r = _run(model, labels, video)
    assert r.returncode == 0, r.stderr
    results = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert len(results) == 3 and results[0]["label"] == "macaw"
    assert "selftest" not in r.stderr


def test_failing_model_is_refused_naming_the_case(golden_model):
    model, labels, video = golden_model
    r = _run(model, labels, video, "--interpolation", "linear")  # not what it was made with
    assert r.returncode == 1
    lines = error_lines(r.stderr)
    assert any(re.match(r"selftest: .*case parrot\.jpg: input digest differs", ln)
               for ln in lines), lines
    assert lines[-1].startswith("error: selftest FAILED") and "refusing to serve" in lines[-1]
    assert not [ln for ln in r.stdout.splitlines() if ln.startswith("{")]


def test_warn_mode_serves_and_reports(golden_model):
    model, labels, video = golden_model
    r = _run(model, labels, video, "--interpolation", "linear", "--set", "model.selftest=warn",
             "--http", "127.0.0.1:0")
    assert r.returncode == 0, r.stderr
    assert any(ln.startswith("warning: selftest FAILED") for ln in error_lines(r.stderr))
    assert len([ln for ln in r.stdout.splitlines() if ln.startswith("{")]) == 3


def test_status_and_metrics_carry_the_verdict(golden_model):
    from edge_runtime.run_command import check_model

    model, labels, _ = golden_model
    clf = Classifier(model, labels=labels, interpolation="linear")
    report = check_model(clf, "warn")
    assert report.status == "fail" and clf.selftest_status == "fail"
    clf = Classifier(model, labels=labels)
    assert check_model(clf, "fail").status == "pass" and clf.selftest_status == "pass"
    assert check_model(clf, "off") is None


def test_bad_selftest_mode_is_one_line(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("model:\n  selftest: maybe\n")
    r = run_cli("edge_runtime", "run", "--config", str(profile))
    assert r.returncode != 0
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "selftest 'maybe', expected one of fail, warn, off" in lines[0]


def test_unavailable_gpu_provider_uses_the_fallback(coral, golden_model, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # A tiny 'classifier' as ONNX: mean over the image, then a fixed 2-class layer.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], np.ones(6, np.float32).tolist())
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[w])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    profile = tmp_path / "jetson.yaml"
    profile.write_text(f"model:\n  path: {path}\n  providers: tensorrt,cuda\n"
                       f"  fallback: {coral / MODEL}\n  selftest: 'off'\n"
                       f"camera:\n  source: {golden_model[2]}\n")
    r = run_cli("edge_runtime", "run", "--config", str(profile), "--max-frames", "1")
    warn = [ln for ln in error_lines(r.stderr)
            if ln.startswith("warning: ONNX Runtime has none of the providers tensorrt,cuda ")]
    assert r.returncode == 0, r.stderr
    assert len(warn) == 1 and f"falling back to the CPU model {coral / MODEL}" in warn[0]
    assert "cpu (fallback)" in r.stderr
