"""The runtime on real pretrained models from Coral's test data (known answers)."""

from __future__ import annotations

import json

import pytest

from edge_runtime import Classifier, EdgekitError
from tests.conftest import error_lines, run_cli


@pytest.mark.parametrize("model", ["mobilenet_v2_1.0_224_quant.tflite",
                                   "tf2_mobilenet_v2_1.0_224_ptq.tflite"])
@pytest.mark.parametrize("photo,expected", [
    ("cat.bmp", {"Egyptian cat", "tabby, tabby cat", "tiger cat"}),
    ("parrot.jpg", {"macaw"}),
    ("grace_hopper.bmp", {"military uniform"}),
    ("hot_dog.jpg", {"hotdog, hot dog, red hot"}),
])
def test_imagenet_models_recognise_photos(coral, model, photo, expected):
    clf = Classifier(coral / model, labels=coral / "imagenet_labels.txt")
    top = clf.classify_file(coral / photo, k=1)
    assert top[0].label in expected
    assert top[0].score > 0.5


def test_known_scores_match_pycoral(coral):
    # pycoral's classify_image example prints "Egyptian cat 0.77734" for this pair.
    clf = Classifier(coral / "mobilenet_v2_1.0_224_quant.tflite",
                     labels=coral / "imagenet_labels.txt")
    top = clf.classify_file(coral / "cat.bmp", k=1)[0]
    assert top.index == 286
    assert top.score == pytest.approx(0.7773, abs=0.02)
    assert not clf.apply_softmax  # uint8 output at scale 1/256 is already a distribution


def test_bird_model_with_its_own_labels(coral):
    clf = Classifier(coral / "mobilenet_v2_1.0_224_inat_bird_quant.tflite",
                     labels=coral / "inat_bird_labels.txt")
    assert clf.num_classes == 965
    top = clf.classify_file(coral / "bird.bmp", k=3)
    assert "Black-capped Chickadee" in top[0].label
    assert [c.score for c in top] == sorted((c.score for c in top), reverse=True)


def test_classify_cli_json(coral):
    r = run_cli("edge_runtime", "classify", "--json", "--top-k", "2",
                "--model", str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
                "--labels", str(coral / "imagenet_labels.txt"),
                str(coral / "parrot.jpg"), str(coral / "cat.bmp"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["image"].rsplit("/", 1)[-1] for row in rows] == ["parrot.jpg", "cat.bmp"]
    assert rows[0]["top"][0] == {"index": 89, "label": "macaw",
                                 "score": pytest.approx(0.996, abs=0.01)}
    assert len(rows[1]["top"]) == 2


def test_edgetpu_model_without_edgetpu_is_one_clear_error(coral):
    model = coral / "mobilenet_v1_1.0_224_quant_embedding_extractor_edgetpu.tflite"
    with pytest.raises(EdgekitError, match="compiled for the Edge TPU"):
        Classifier(model)
    r = run_cli("edge_runtime", "classify", "--model", str(model), str(coral / "cat.bmp"))
    assert r.returncode == 1
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:") and "Edge TPU" in lines[0]
