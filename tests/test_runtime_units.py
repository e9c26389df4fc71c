"""Pure runtime helpers: labels, top-k, (de)quantization, preprocessing, sources."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_runtime import EdgekitError
from edge_runtime.camera import parse_source
from edge_runtime.classify import (
    InputSpec,
    default_normalization,
    dequantize,
    set_input,
    softmax,
    top_k,
)
from edge_runtime.labels import parse_labels
from edge_runtime.manifest import Manifest, Normalization
from edge_runtime.preprocess import bgr_to_rgb, center_crop, fit, fit_frame


def test_labels_one_per_line_keeps_line_numbers():
    assert parse_labels("background\ntench, Tinca tinca\n\n") == {0: "background",
                                                                 1: "tench, Tinca tinca"}


def test_labels_indexed_format():
    assert parse_labels("0 cat\n2  dog house\n") == {0: "cat", 2: "dog house"}


def test_labels_mixed_lines_are_plain():
    # Only some lines start with a number: they are labels, not indices.
    assert parse_labels("7 up\ncola\n") == {0: "7 up", 1: "cola"}


def test_top_k_orders_and_thresholds():
    scores = np.array([0.1, 0.5, 0.05, 0.35], np.float32)
    top = top_k(scores, 3, {1: "b", 3: "d"})
    assert [(c.index, c.label) for c in top] == [(1, "b"), (3, "d"), (0, "0")]
    assert [c.index for c in top_k(scores, 4, threshold=0.3)] == [1, 3]


def test_dequantize_and_softmax():
    q = np.array([0, 128, 255], np.uint8)
    np.testing.assert_allclose(dequantize(q, 0.5, 128), [-64.0, 0.0, 63.5])
    p = softmax(np.array([1.0, 2.0, 3.0], np.float32))
    assert p.sum() == pytest.approx(1.0) and p.argmax() == 2


class FakeInterpreter:
    """Just enough of the interpreter API to see what set_input writes."""

    def __init__(self, shape, dtype):
        self.buf = np.zeros(shape, dtype)

    def tensor(self, _index):
        return lambda: self.buf

    def set_tensor(self, _index, value):
        assert value.dtype == self.buf.dtype and value.shape == self.buf.shape
        self.buf[...] = value


@pytest.mark.parametrize("dtype,scale,zp", [(np.uint8, 1 / 128, 128), (np.int8, 1 / 128, 0),
                                            (np.uint8, 1.0, 0), (np.int8, 1.0, -128)])
def test_quantized_input_matches_formula(dtype, scale, zp):
    rgb = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    spec = InputSpec(0, 4, 4, dtype, scale, zp)
    norm = Normalization(127.5, 127.5)
    interp = FakeInterpreter((1, 4, 4, 3), dtype)
    set_input(interp, spec, rgb, norm)
    real = (rgb.astype(np.float64) - 127.5) / 127.5
    info = np.iinfo(dtype)
    want = np.clip(np.rint(real / scale + zp), info.min, info.max)
    np.testing.assert_array_equal(interp.buf[0], want.astype(dtype))


@pytest.mark.parametrize("dtype,zp", [(np.uint8, 0), (np.int8, -128), (np.uint8, 128)])
def test_default_normalization_feeds_pixels_in_quantized_domain(dtype, zp):
    rgb = np.array([[[0, 100, 255]]], np.uint8)
    spec = InputSpec(0, 1, 1, dtype, 1 / 128 if zp == 128 else 1.0, zp)
    interp = FakeInterpreter((1, 1, 1, 3), dtype)
    set_input(interp, spec, rgb, default_normalization(spec))
    expected = rgb.astype(np.int32) - (128 if dtype == np.int8 else 0)
    np.testing.assert_array_equal(interp.buf[0].astype(np.int32), expected)


def test_float_input_normalized():
    spec = InputSpec(0, 2, 2, np.float32, 0.0, 0)
    interp = FakeInterpreter((1, 2, 2, 3), np.float32)
    set_input(interp, spec, np.full((2, 2, 3), 255, np.uint8), Normalization(127.5, 127.5))
    np.testing.assert_allclose(interp.buf, 1.0)


def test_fit_resizes_into_given_buffer_and_crops():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255  # the centre square is white
    out = np.zeros((10, 10, 3), np.uint8)
    assert fit(img, (10, 10), "center_crop", out=out) is out
    assert out.min() == 255
    assert center_crop(img, 1.0).shape == (100, 100, 3)
    assert fit(img, (10, 20)).shape == (10, 20, 3)


def _frame(h: int, w: int, c: int | None = 3, seed: int = 0) -> np.ndarray:
    """A noisy frame with sharp edges: every rounding difference would show."""
    rng = np.random.default_rng(seed)
    shape = (h, w) if c is None else (h, w, c)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    img[h // 3: h // 2] = 255
    return img


FRAME_SHAPES = [(480, 640, 3), (720, 1280, 3), (481, 643, 3), (120, 160, 3), (224, 224, 3),
                (448, 448, 3), (480, 640, 4), (480, 640, None), (240, 320, 1)]


@pytest.mark.parametrize("shape", FRAME_SHAPES, ids=str)
@pytest.mark.parametrize("resize", ["stretch", "center_crop"])
@pytest.mark.parametrize("size", [(224, 224), (96, 128)], ids=str)
@pytest.mark.parametrize("interp", ["linear", "area"])
def test_fit_frame_is_bit_identical_to_the_training_preprocessing(shape, resize, size, interp):
    frame = _frame(*shape)
    # what training and Classifier.scores do
    want = fit(bgr_to_rgb(frame), size, resize, interpolation=interp)
    work, out = np.empty((*size, 3), np.uint8), np.zeros((*size, 3), np.uint8)
    assert fit_frame(frame, size, resize, out=out, work=work, interpolation=interp) is out
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(fit_frame(frame, size, resize, interpolation=interp), want)
    if frame.ndim == 3 and frame.shape[2] == 3:  # a BGR model keeps the channel order
        np.testing.assert_array_equal(
            fit_frame(frame, size, resize, rgb=False, interpolation=interp),
            fit(frame, size, resize, interpolation=interp))


def _smooth(h: int, w: int) -> np.ndarray:
    """A photo-like frame: gradients and soft shapes, no pixel noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w * 255, y / h * 255, 128 + 100 * np.sin(x / 23.0) * np.cos(y / 17.0)],
                   axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_linear_box_reduces_large_images_first_and_area_is_opencvs():
    rng = np.random.default_rng(3)
    frame = _smooth(480, 640)  # under 4x: plain bilinear
    exact = cv2.INTER_LINEAR_EXACT  # bit-identical on x86 and ARM (INTER_LINEAR is not)
    np.testing.assert_array_equal(fit(frame, (224, 224)),
                                  cv2.resize(frame, (224, 224), interpolation=exact))
    np.testing.assert_array_equal(fit(frame, (224, 224), interpolation="area"),
                                  cv2.resize(frame, (224, 224), interpolation=cv2.INTER_AREA))
    big = rng.integers(0, 256, (1081, 1920, 3), np.uint8)  # 4.8x and 8.6x a 224 input
    blocks = big[:1080].reshape(540, 2, 480, 4, 3).astype(np.float64).mean(axis=(1, 3))
    reduced = cv2.resize(np.clip(np.rint(blocks), 0, 255).astype(np.uint8), (224, 224),
                         interpolation=exact)
    got = fit(big, (224, 224))
    assert np.abs(got.astype(int) - reduced.astype(int)).max() <= 1  # rounding only
    # Aliasing shows as noise surviving the resize: bounded by the box reduction.
    plain = cv2.resize(big, (224, 224), interpolation=cv2.INTER_LINEAR).astype(float)
    area = fit(big, (224, 224), interpolation="area").astype(float)
    assert area.std() < got.std() < 0.6 * plain.std()
    with pytest.raises(ValueError, match="interpolation 'cubic'"):
        fit(frame, (224, 224), interpolation="cubic")


def test_fit_frame_writes_into_a_tensor_slice_and_refuses_a_wrong_buffer():
    frame = _frame(480, 640)
    tensor = np.zeros((1, 224, 224, 3), np.uint8)
    fit_frame(frame, (224, 224), out=tensor[0])
    np.testing.assert_array_equal(tensor[0], fit(bgr_to_rgb(frame), (224, 224)))
    with pytest.raises(ValueError, match=r"expected uint8 \[224, 224, 3\]"):
        fit_frame(frame, (224, 224), out=np.zeros((224, 225, 3), np.uint8))


def test_frame_classifier_feeds_the_model_what_classify_does(coral):
    from edge_runtime.classify import Classifier
    from edge_runtime.infer import FrameClassifier

    for interp in (None, "linear"):
        clf = Classifier(coral / "mobilenet_v2_1.0_224_quant.tflite", threads=1,
                         interpolation=interp)
        assert clf.interpolation == (interp or "area")  # no manifest: pycoral's resize
        frames = FrameClassifier(clf)
        for frame in (_frame(480, 640), _frame(300, 500, seed=1), _frame(480, 640, 4)):
            got = frames.scores(frame)
            tensor = clf.interpreter.get_tensor(clf.spec.index)
            np.testing.assert_array_equal(
                tensor[0], fit(bgr_to_rgb(frame), (224, 224), interpolation=clf.interpolation))
            np.testing.assert_array_equal(got, clf.scores(bgr_to_rgb(frame)))
            # Prepared on the capture thread: the same tensor, the same scores.
            again = frames.scores(np.zeros((2, 2, 3), np.uint8), frames.prepare(frame))
            np.testing.assert_array_equal(clf.interpreter.get_tensor(clf.spec.index), tensor)
            np.testing.assert_array_equal(again, got)


def test_manifest_round_trip_and_validation():
    m = Manifest(["a", "b"], (96, 128), normalization=Normalization(0, 1), extra={"x": 1})
    back = Manifest.from_dict(m.to_dict())
    assert back.labels == ["a", "b"] and back.input_size == (96, 128) and back.extra == {"x": 1}
    with pytest.raises(EdgekitError, match="missing field 'labels'"):
        Manifest.from_dict({"input_size": {"height": 1, "width": 1}})
    with pytest.raises(EdgekitError, match="color_order"):
        Manifest.from_dict({"labels": ["a"], "input_size": {"height": 1, "width": 1},
                            "color_order": "XYZ"})
    assert m.interpolation == "linear" and back.interpolation == "linear"
    old = {"labels": ["a"], "input_size": {"height": 1, "width": 1}}
    assert Manifest.from_dict(old).interpolation == "area"  # written before the choice
    with pytest.raises(EdgekitError, match="interpolation 'nearest'"):
        Manifest.from_dict(old | {"interpolation": "nearest"})


def test_parse_source_kinds(tmp_path):
    assert parse_source("0").kind == "camera" and parse_source("0").target == 0
    assert parse_source("rtsp://cam/stream").kind == "url"
    assert parse_source("videotestsrc ! appsink").kind == "gstreamer"
    assert parse_source("/dev/video2").kind == "device"
    f = tmp_path / "v.avi"
    f.write_bytes(b"x")
    assert parse_source(str(f)).kind == "file"
    with pytest.raises(EdgekitError, match="not found"):
        parse_source(str(tmp_path / "missing.mp4"))
