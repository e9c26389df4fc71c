"""Error and output lines that carry the fix, in-process (fast): a folder or a Keras file
given as --model, a model with no labels, the doctor's camera check is in test_daemon_units."""

from __future__ import annotations

import shutil

import pytest

from edge_runtime import cli
from edge_runtime.errors import EXIT_ERROR, EXIT_OK

MODEL = "mobilenet_v2_1.0_224_quant.tflite"


def _error(argv, capsys) -> str:
    assert cli.main(argv) == EXIT_ERROR
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("INFO")]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_folder_as_model_names_the_model_inside(tmp_path, coral, capsys):
    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    shutil.copy(coral / MODEL, export / "model_int8.tflite")
    shutil.copy(coral / MODEL, export / "model_float32.tflite")
    assert _error(["classify", "--model", str(tmp_path / "run"), str(coral / "cat.bmp")],
                  capsys) == (f"error: {tmp_path / 'run'} is a folder: --model takes a model "
                              f"file (.tflite or .onnx), e.g. --model "
                              f"{export / 'model_int8.tflite'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(["classify", "--model", str(empty), "x.jpg"], capsys) == (
        f"error: {empty} is a folder: --model takes a model file (.tflite or .onnx)")
    assert _error(["classify", "--model", str(tmp_path / "nope.tflite"), "x.jpg"],
                  capsys) == f"error: model not found: {tmp_path / 'nope.tflite'}"
    # The Jetson profiles' model, which the default variants do not make: say how.
    assert _error(["classify", "--model", str(tmp_path / "model.onnx"), "x.jpg"], capsys) \
        == (f"error: model not found: {tmp_path / 'model.onnx'} (make it with: python -m "
            "convert runs/NAME --variants float32,int8,onnx -> export/model.onnx)")


@pytest.mark.parametrize("magic", [b"PK\x03\x04", b"\x89HDF\r\n\x1a\n"], ids=["keras", "h5"])
def test_a_keras_model_says_convert_it_first(tmp_path, magic, capsys):
    model = tmp_path / "model.keras"
    model.write_bytes(magic + b"\0" * 64)
    line = _error(["classify", "--model", str(model), "x.jpg"], capsys)
    assert line.startswith(f"error: {model} is a Keras model, not a TFLite one: convert it "
                           f"first: python -m convert "), line
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\0" * 64)
    assert _error(["classify", "--model", str(junk), "x.jpg"], capsys) == (
        f"error: not a TFLite model (no TFL3 identifier): {junk}")


def test_classify_without_labels_prints_class_indexes_once(coral, capsys):
    image = str(coral / "cat.bmp")
    assert cli.main(["classify", "--model", str(coral / MODEL), "--top-k", "1", image]) \
        == EXIT_OK
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split() == ["0.7773", "class", "286"], out
    assert out.splitlines()[-1] == ("(no labels: pass --labels FILE, or keep manifest.json "
                                    "beside the model)")
    assert cli.main(["classify", "--model", str(coral / MODEL), "--top-k", "1", "--labels",
                     str(coral / "imagenet_labels.txt"), image]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out.splitlines()[1:] == ["   0.7773  Egyptian cat (286)"], out


def test_model_and_image_arguments_say_what_they_take():
    sub = cli.build_parser()._subparsers._group_actions[0].choices["classify"]
    helps = {a.dest: a.help for a in sub._actions}
    assert ".onnx" in helps["model"] and ".tflite" in helps["model"]
    assert helps["images"] and "image files" in helps["images"]
