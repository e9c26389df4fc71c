"""convert of some variants keeps manifest.json's entries for the others (their sha256 is how
selftest and deploy check those files)."""

from __future__ import annotations

import json

import pytest

from convert.manifest_merge import merge_variants, read_previous


def previous(source: str = "src1") -> dict:
    return {"provenance": {"source_sha256": source},
            "variants": {"float32": {"file": "model_float32.tflite", "sha256": "old-f"},
                         "int8": {"file": "model_int8.tflite", "sha256": "i8"},
                         "onnx": {"file": "model.onnx", "sha256": "ox"}},
            "drift_baseline": {"version": 1, "split": "val", "models": {
                "model_float32.tflite": {"n": 1}, "model_int8.tflite": {"n": 2},
                "model_int8_edgetpu.tflite": {"n": 2}, "model.onnx": {"n": 3}}}}


def test_other_variants_are_kept_with_their_drift_baselines(tmp_path):
    for name in ("model_float32.tflite", "model_int8.tflite", "model.onnx"):
        (tmp_path / name).write_bytes(b"x")
    new = {"float32": {"file": "model_float32.tflite", "sha256": "new-f"},
           "onnx": {"file": "model.onnx", "sha256": "new-o"}}
    drift = {"version": 1, "split": "val", "models": {"model_float32.tflite": {"n": 10},
                                                      "model.onnx": {"n": 30}}}
    variants, merged, notes = merge_variants(previous(), new, drift, tmp_path, "src1")
    assert variants == {**new, "int8": {"file": "model_int8.tflite", "sha256": "i8"}}
    assert merged["models"] == {"model_float32.tflite": {"n": 10}, "model.onnx": {"n": 30},
                                "model_int8.tflite": {"n": 2},
                                "model_int8_edgetpu.tflite": {"n": 2}}
    assert notes == []


def test_an_entry_whose_file_is_gone_is_removed_and_said(tmp_path):
    (tmp_path / "model_float32.tflite").write_bytes(b"x")
    new = {"float32": {"file": "model_float32.tflite", "sha256": "new-f"}}
    variants, drift, notes = merge_variants(previous(), new, None, tmp_path, "src1")
    assert variants == new and drift is None
    assert notes == ["removed int8 from manifest.json: model_int8.tflite is gone",
                     "removed onnx from manifest.json: model.onnx is gone"]


def test_an_entry_made_from_another_source_is_left_out(tmp_path):
    (tmp_path / "model_int8.tflite").write_bytes(b"x")
    new = {"float32": {"file": "model_float32.tflite", "sha256": "new-f"}}
    variants, _, notes = merge_variants(previous("src0"), new, None, tmp_path, "src1")
    assert variants == new
    assert notes[0].startswith("left int8 (model_int8.tflite) out of manifest.json: it was "
                               "made from another version of the source model")


def test_no_or_unreadable_previous_manifest_changes_nothing(tmp_path):
    new = {"float32": {"file": "model_float32.tflite", "sha256": "f"}}
    assert read_previous(tmp_path / "manifest.json") is None
    (tmp_path / "manifest.json").write_text("{not json")
    assert read_previous(tmp_path / "manifest.json") is None
    (tmp_path / "manifest.json").write_text(json.dumps(previous()))
    assert read_previous(tmp_path / "manifest.json") == previous()
    assert merge_variants(None, new, None, tmp_path) == (new, None, [])
    # A file name that is a path (a hand-edited manifest) is never looked up outside.
    odd = {"variants": {"int8": {"file": "../model_int8.tflite", "sha256": "x"}}}
    (tmp_path.parent / "model_int8.tflite").write_bytes(b"x")
    assert merge_variants(odd, new, None, tmp_path)[0] == new


@pytest.mark.slow  # a float32 conversion of its own: make test-slow
def test_convert_of_some_variants_keeps_the_int8_entry(trained_run, tmp_path, capsys):
    import shutil

    from convert.export import export
    from edge_runtime.selftest import run_selftest

    first = export(trained_run, ["int8"], calib=20, out=tmp_path / "x")
    int8 = json.loads((first.export_dir / "manifest.json").read_text())["variants"]["int8"]
    again = export(trained_run, ["float32"], out=tmp_path / "x")
    variants = json.loads((again.export_dir / "manifest.json").read_text())["variants"]
    assert variants["int8"] == int8 and set(variants) == {"float32", "int8"}
    assert run_selftest(again.export_dir / "model_int8.tflite").status == "pass"
    shutil.move(again.export_dir / "model_int8.tflite", tmp_path / "elsewhere.tflite")
    capsys.readouterr()
    last = export(trained_run, ["float32"], out=tmp_path / "x")
    assert "note: removed int8 from manifest.json: model_int8.tflite is gone" in \
        capsys.readouterr().err
    assert set(json.loads((last.export_dir / "manifest.json").read_text())["variants"]) == \
        {"float32"}
