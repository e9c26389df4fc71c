"""Conversion: reports users can trust, metadata inside the model, safe failures."""

from __future__ import annotations

import json
import shutil

import pytest

from edge_runtime import Classifier, EdgekitError
from edge_runtime.metadata import read_embedded_manifest
from tests.conftest import error_lines, run_cli


def test_report_has_per_class_deltas_and_markdown(exported):
    report = json.loads((exported / "convert_report.json").read_text())
    int8 = report["variants"]["int8"]
    assert set(int8["per_class"]) == {"circle", "square", "star", "triangle"}
    assert set(int8["per_class_delta_points"]) == set(int8["per_class"])
    assert int8["top1_drop_points"] == pytest.approx(
        100 * (report["variants"]["float32"]["top1"] - int8["top1"]), abs=6e-4)  # 3 decimals
    assert int8["input"]["dtype"] == "uint8" and int8["output"]["dtype"] == "uint8"
    md = (exported / "convert_report.md").read_text()
    assert "| int8 |" in md and "Per-class accuracy change" in md


def test_every_model_carries_its_manifest(exported):
    for name in ("float32", "int8"):
        embedded = read_embedded_manifest(exported / f"model_{name}.tflite")
        assert embedded["labels"] == ["circle", "square", "star", "triangle"]
        assert embedded["provenance"]["source_sha256"]
    assert read_embedded_manifest(exported / "model_int8.tflite")["quantization"]["io"] == "uint8"


def test_single_copied_model_is_self_describing(exported, sample, tmp_path):
    lone = tmp_path / "device" / "model.tflite"
    lone.parent.mkdir()
    shutil.copy(exported / "model_int8.tflite", lone)  # no manifest.json, no labels.txt
    clf = Classifier(lone)
    assert clf.manifest is not None and clf.resize == "center_crop"
    img = sorted((sample / "images" / "star").glob("*.jpg"))[0]
    assert clf.classify_file(img, k=4)[0].label in {"circle", "square", "star", "triangle"}


@pytest.mark.slow  # a second int8 conversion plus the quantization debugger: make test-slow
def test_max_drop_fails_and_names_layers(trained_run, tmp_path):
    from convert.export import export

    # A negative limit cannot be met, so the failure path (with the debugger) always runs.
    r = export(trained_run, ["float32", "int8"], calib=50, max_drop=-1.0, out=tmp_path / "x")
    assert r.failed and "points below float32" in r.failed and "--float-layers" in r.failed
    layers = r.report["quantization_debugger"]
    assert layers and all(layer["rmse_per_scale"] >= 0 for layer in layers)
    assert "largest quantization error" in (tmp_path / "x" / "convert_report.md").read_text()


@pytest.mark.slow  # an int8 conversion of its own before the names are known: make test-slow
def test_float_layers_must_name_a_real_tensor(trained_run, tmp_path):
    from convert.export import export

    with pytest.raises(EdgekitError, match="no_such_layer"):
        export(trained_run, ["int8"], calib=20, float_layers=["no_such_layer"],
               out=tmp_path / "y")


@pytest.mark.slow  # a SavedModel export of its own (~15 s on 2 cores): make test-slow
def test_failed_conversion_keeps_the_old_model(trained_run, tmp_path, monkeypatch):
    import importlib

    ex = importlib.import_module("convert.export")  # the module, not the re-exported function

    out = tmp_path / "z"
    out.mkdir()
    old = out / "model_float32.tflite"
    old.write_bytes(b"previous model")
    stale = out / ".savedmodel-killed"  # what a SIGKILLed convert leaves: its lock not held
    stale.mkdir()
    (stale / ".lock").write_text("12345\n")
    (stale / "saved_model.pb").write_bytes(b"x" * 1000)

    def boom(*_a, **_k):
        raise EdgekitError("TFLite conversion (float32) failed: simulated")

    monkeypatch.setattr(ex, "convert_one", boom)
    with pytest.raises(EdgekitError, match="simulated"):
        ex.export(trained_run, ["float32"], out=out)
    assert old.read_bytes() == b"previous model"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp leftovers
    assert not stale.exists()


def test_external_keras_model_needs_labels_and_size(trained_run, tmp_path):
    r = run_cli("convert", str(trained_run / "model.keras"), "--variants", "float32",
                "--out", str(tmp_path / "e"))
    assert r.returncode == 1
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "--labels FILE and --img-size N" in lines[0]


@pytest.mark.slow  # a float32 conversion and evaluation of its own: make test-slow
def test_external_keras_model_with_data(trained_run, sample, tmp_path):
    from convert.export import export

    model = tmp_path / "elsewhere.keras"
    shutil.copy(trained_run / "model.keras", model)
    r = export(model, ["float32"], labels=trained_run / "labels.txt", img_size=96,
               data=sample / "images", out=tmp_path / "ext")
    f32 = r.report["variants"]["float32"]
    assert r.report["origin"] == "external" and f32["agreement"] >= 0.99
    assert r.report["test_images"] == 120  # half of the 240 images, stratified


@pytest.mark.slow  # an int8 conversion of its own, then lint/compile: make test-slow
def test_edgetpu_variant_lints_and_compiles_or_says_why(trained_run, tmp_path):
    import shutil as sh

    from convert.export import export

    r = export(trained_run, ["edgetpu"], calib=20, out=tmp_path / "tpu")
    row = r.report["variants"]["edgetpu"]
    assert "int8" in r.report["variants"]  # the Edge TPU model is compiled from int8 ...
    assert r.report["notes"] == ["the Edge TPU model is compiled from the int8 model: int8 "
                                 "added to the variants"]  # ... and the report says so
    assert row["lint"]["ok"] and row["lint"]["cpu_ops"] == 0
    if sh.which("edgetpu_compiler") is None:
        assert row["status"] == "skipped: edgetpu_compiler not installed"
        assert "apt install edgetpu-compiler" in row["message"] and r.failed is None
    else:
        assert row["status"] == "compiled" and any((tmp_path / "tpu").glob("*_edgetpu.tflite"))


def test_lint_cli_is_wired(exported):
    ok = run_cli("convert", "lint", str(exported / "model_int8.tflite"))
    assert ok.returncode == 0 and "PASS" in ok.stdout
    bad = run_cli("convert", "lint", str(exported / "model_float32.tflite"))
    assert bad.returncode == 1 and "FAIL: op 0" in bad.stdout
