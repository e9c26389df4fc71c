"""ImageNet MobileNetV2 weights rebuilt offline from Coral's full-integer TFLite model."""

from __future__ import annotations

import pytest

from edge_runtime import Classifier
from tests.conftest import error_lines, run_cli

PTQ = "tf2_mobilenet_v2_1.0_224_ptq.tflite"
PHOTOS = ("cat.bmp", "grace_hopper.bmp", "parrot.jpg", "hot_dog.jpg")


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """The no-top weights and the full classifier, rebuilt once; skips without Coral's file."""
    from tests.conftest import CORAL, CORAL_DIRS

    if not (CORAL / PTQ).is_file():
        pytest.skip(f"{PTQ} not found in {' or '.join(str(d) for d in CORAL_DIRS)}: "
                    "run `make test-data`")
    from train.weights import rebuild

    out = tmp_path_factory.mktemp("imagenet")
    return rebuild(CORAL / PTQ, out / "W.h5", out / "full.keras"), CORAL


def test_rebuilt_float_model_classifies_like_the_int8_original(rebuilt, tmp_path):
    r, coral = rebuilt
    assert (r.layers, r.classes) == (52, 1001)
    labels = coral / "imagenet_labels.txt"
    c = run_cli("convert", str(r.keras_model), "--labels", str(labels), "--img-size", "224",
                "--variants", "float32")
    assert c.returncode == 0, c.stderr
    rebuilt_clf = Classifier(r.keras_model.parent / "export" / "model_float32.tflite")
    original = Classifier(coral / PTQ, labels=labels)
    for photo in PHOTOS:
        want = original.classify_file(coral / photo, k=1)[0]
        got = rebuilt_clf.classify_file(coral / photo, k=1)[0]
        assert (photo, got.index, got.label) == (photo, want.index, want.label)
        assert got.score > 0.3


def test_no_top_file_loads_into_keras_mobilenetv2(rebuilt):
    import keras
    import numpy as np

    r, _ = rebuilt
    base = keras.applications.MobileNetV2(input_shape=(96, 96, 3), include_top=False,
                                          weights=str(r.weights), pooling="avg")
    bn = base.get_layer("bn_Conv1")
    np.testing.assert_allclose(bn.gamma.numpy(), 1.0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.0)
    np.testing.assert_allclose(bn.moving_variance.numpy() + bn.epsilon, 1.0, rtol=1e-6)
    assert np.abs(base.get_layer("Conv1").kernel.numpy()).max() > 0.1  # not the random init


def test_bad_inputs_are_one_line(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model at all")
    for args, expected in (
            (["--from-tflite", str(junk), "--out", str(tmp_path / "W.h5")], "not a TFLite"),
            (["--from-tflite", str(tmp_path / "none.tflite"), "--out",
              str(tmp_path / "W.h5")], "not found"),
            (["--from-tflite", str(junk), "--out", str(tmp_path / "W.bin")], "expected a .h5")):
        r = run_cli("train.weights", *args)
        lines = error_lines(r.stderr)
        assert r.returncode == 1 and len(lines) == 1 and expected in lines[0], r.stderr
    assert not list(tmp_path.glob("*.h5"))


def test_a_model_that_is_not_mobilenetv2_is_refused(coral, tmp_path):
    r = run_cli("train.weights", "--from-tflite",
                str(coral / "mobilenet_v1_1.0_224_quant_embedding_extractor_edgetpu.tflite"),
                "--out", str(tmp_path / "W.h5"))
    lines = error_lines(r.stderr)
    assert r.returncode == 1 and len(lines) == 1 and "convolutions, expected 53" in lines[0], \
        r.stderr
    assert not (tmp_path / "W.h5").exists()
