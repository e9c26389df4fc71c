"""Bad input through every CLI: one clear line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import error_lines, run_cli


def assert_one_clear_error(r, *fragments: str) -> None:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]


def test_train_missing_folder(tmp_path):
    r = run_cli("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"),
                "--weights", "none")
    assert_one_clear_error(r, "data folder not found", "nope")


def test_train_class_folder_without_images(sample, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample / "images", data)
    empty = data / "zebra"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    r = run_cli("train", "--data", str(data), "--out", str(tmp_path / "run"), "--weights", "none")
    assert_one_clear_error(r, "class 'zebra' has 0 images")


def test_train_force_refuses_a_folder_that_is_not_a_run(sample, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.txt").write_text("mine")
    r = run_cli("train", "--data", str(sample / "images"), "--out", str(tmp_path / "photos"),
                "--weights", "none", "--force")
    assert_one_clear_error(r, "not a run folder", "--force")
    assert (tmp_path / "photos" / "keep.txt").read_text() == "mine"


def test_train_missing_weights_file(sample, tmp_path):
    r = run_cli("train", "--data", str(sample / "images"), "--out", str(tmp_path / "run"),
                "--weights", str(tmp_path / "missing.h5"))
    assert_one_clear_error(r, "weights file not found")


def test_convert_missing_run(tmp_path):
    assert_one_clear_error(run_cli("convert", str(tmp_path / "nope")), "not found", "nope")


def test_convert_model_file_that_is_not_a_model(trained_run, tmp_path, capsys):
    from convert.__main__ import main as convert_main

    run = tmp_path / "broken"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export", "bench"))
    (run / "model.keras").write_bytes(b"this is not a keras model")
    # In-process: TensorFlow is loaded already (trained_run), a subprocess would load it again.
    assert convert_main([str(run)]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: cannot load Keras model"), lines


def test_classify_file_that_is_not_a_model(tmp_path, sample):
    fake = tmp_path / "model.tflite"
    fake.write_text("hello")
    img = next((sample / "images" / "circle").glob("*.jpg"))
    r = run_cli("edge_runtime", "classify", "--model", str(fake), str(img))
    assert_one_clear_error(r, "not a TFLite model")


def test_classify_missing_model(tmp_path, sample):
    img = next((sample / "images" / "circle").glob("*.jpg"))
    r = run_cli("edge_runtime", "classify", "--model", str(tmp_path / "x.tflite"), str(img))
    assert_one_clear_error(r, "model not found")


@pytest.fixture(scope="module")
def not_a_classifier(tmp_path_factory):
    """A real TFLite model whose input is a vector, not an image."""
    import keras
    import tensorflow as tf

    inp = keras.Input((10,), batch_size=1)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    path = tmp_path_factory.mktemp("nc") / "dense.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def test_classify_model_that_is_not_an_image_classifier(not_a_classifier, sample):
    img = next((sample / "images" / "circle").glob("*.jpg"))
    r = run_cli("edge_runtime", "classify", "--model", str(not_a_classifier), str(img))
    assert_one_clear_error(r, "not an image classifier", "input shape [1, 10]")


def test_classify_corrupt_image(exported, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = run_cli("edge_runtime", "classify", "--model", str(exported / "model_int8.tflite"),
                str(bad))
    assert_one_clear_error(r, "not a decodable image")


def test_run_missing_source(exported, tmp_path):
    r = run_cli("edge_runtime", "run", "--model", str(exported / "model_int8.tflite"),
                "--source", str(tmp_path / "nope.mp4"))
    assert_one_clear_error(r, "video source not found")


def test_run_source_that_is_not_a_video(exported, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    r = run_cli("edge_runtime", "run", "--model", str(exported / "model_int8.tflite"),
                "--source", str(bad))
    assert_one_clear_error(r, str(bad))


def test_bench_run_without_export(trained_run, tmp_path):
    run = tmp_path / "noexport"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export", "bench"))
    assert_one_clear_error(run_cli("benchmarks", str(run)), "no exported models")


def test_bench_missing_run(tmp_path):
    assert_one_clear_error(run_cli("benchmarks", str(tmp_path / "nope")), "run folder not found")
