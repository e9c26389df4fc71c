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


@pytest.mark.slow  # rebuilds ImageNet weights; converts or trains
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


@pytest.mark.slow  # rebuilds ImageNet weights; converts or trains
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


def _few_shot(sample, root, per_class=10):
    """train/val/test folders: ``per_class`` training images a class, 10 val, 10 test."""
    import shutil

    for cls in sorted(p.name for p in (sample / "images").iterdir() if p.is_dir()):
        files = sorted((sample / "images" / cls).glob("*.jpg"))
        for split, chunk in (("train", files[:per_class]),
                             ("val", files[per_class:per_class + 10]),
                             ("test", files[per_class + 10:per_class + 20])):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for f in chunk:
                shutil.copy(f, root / split / cls / f.name)
    return root


@pytest.mark.slow  # rebuilds ImageNet weights; converts or trains
def test_frozen_head_on_cached_features_then_fine_tuning_with_real_features(
        rebuilt, sample, tmp_path, capsys):
    import json

    from train.checkpoint import load_model
    from train.config import TrainConfig
    from train.core import fine_tune

    r, _ = rebuilt
    data = _few_shot(sample, tmp_path / "few")
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), weights=str(r.weights),
                      alpha=1.0, img_size=64, epochs=30, patience=30, batch_size=8,
                      learning_rate=3e-3, fine_tune_epochs=1, unfreeze=10, augment=None,
                      augment_policy="none", seed=0)
    out = fine_tune(cfg)
    assert "frozen phase on cached base features" in capsys.readouterr().err
    best = load_model(out / "checkpoints" / "best.keras")  # the whole model, images in
    assert best.input_shape == (None, 64, 64, 3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 31  # 30 on cached features + 1 fine-tuning
    # ImageNet features tell the four shapes apart from 10 images a class.
    assert metrics["test"]["top1"] >= 0.75, metrics["test"]["top1"]
