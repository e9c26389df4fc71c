"""Image classification over a TFLite interpreter: small pure functions and a Classifier.

Works for any single-input image classifier, not only edgekit's: float, uint8 or int8
input (quantized with the tensor's own scale/zero-point), quantized outputs dequantized,
and a softmax applied when the model outputs logits (decided once, from the model).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import backend as _backend
from .errors import EdgekitError
from .labels import read_labels
from .manifest import Manifest, Normalization, manifest_beside
from .metadata import read_embedded_manifest
from .preprocess import DEFAULT_INTERPOLATION, INTERPOLATIONS, fit, load_image

# TFLite quantizes softmax/logistic outputs with this fixed scale (uint8 zp 0, int8 -128).
_PROB_SCALE = 1.0 / 256.0
_SOFTMAX_OPCODES = {"SOFTMAX", "LOGISTIC"}


@dataclass(frozen=True)
class Class:
    """One ranked result."""

    index: int
    label: str
    score: float


@dataclass(frozen=True)
class InputSpec:
    """The model's input tensor, as the pure helpers need it."""

    index: int
    height: int
    width: int
    dtype: Any
    scale: float
    zero_point: int


def input_spec(interp: Any) -> InputSpec:
    """Reads the single image input of ``interp``.

    Raises:
        EdgekitError: not a single (1, H, W, 3) image input.
    """
    inputs = interp.get_input_details()
    if len(inputs) != 1:
        raise EdgekitError(f"not an image classifier: {len(inputs)} inputs, expected 1")
    d = inputs[0]
    shape = tuple(int(s) for s in d["shape"])
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or shape[1] < 1 or shape[2] < 1:
        raise EdgekitError(f"not an image classifier: input shape {list(shape)}, "
                           "expected [1, height, width, 3]")
    if d["dtype"] not in (np.float32, np.uint8, np.int8):
        raise EdgekitError(f"unsupported input type {np.dtype(d['dtype']).name}, "
                           "expected float32, uint8 or int8")
    scale, zp = d["quantization"]
    return InputSpec(d["index"], shape[1], shape[2], d["dtype"], float(scale), int(zp))


def output_classes(interp: Any) -> int:
    """Number of classes of the single classification output.

    Raises:
        EdgekitError: several outputs, or an output that is not a vector of scores.
    """
    outputs = interp.get_output_details()
    if len(outputs) != 1:
        raise EdgekitError(f"not an image classifier: {len(outputs)} outputs, expected 1")
    shape = [int(s) for s in outputs[0]["shape"]]
    if not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)) or shape[-1] < 2:
        raise EdgekitError(f"not an image classifier: output shape {shape}, "
                           "expected [1, classes]")
    return shape[-1]


def default_normalization(spec: InputSpec) -> Normalization:
    """The normalization to assume for a model that comes with no manifest.

    Quantized inputs: the quantization parameters already encode the model's input
    range, so raw pixels go straight in (Coral's convention; uint8 pixel p -> p, int8 ->
    p - 128). Float inputs: MobileNet's [-1, 1] convention.
    """
    if spec.dtype == np.uint8 and spec.scale > 0:
        return Normalization(mean=float(spec.zero_point), std=1.0 / spec.scale)
    if spec.dtype == np.int8 and spec.scale > 0:
        return Normalization(mean=float(spec.zero_point) + 128.0, std=1.0 / spec.scale)
    return Normalization(mean=127.5, std=127.5)


def set_input(interp: Any, spec: InputSpec, rgb: np.ndarray, norm: Normalization,
              resize: str = "stretch", interpolation: str = DEFAULT_INTERPOLATION) -> None:
    """Resizes ``rgb`` and writes it into the input tensor, quantizing as the tensor says.

    When the normalization cancels the quantization (uint8 pixels go in as they are, the
    usual case), the image is resized straight into the tensor's memory with no copy.
    The tensor view is dropped before returning: holding it across ``invoke()`` is unsafe.
    """
    size = (spec.height, spec.width)
    if spec.dtype == np.float32:
        x = fit(rgb, size, resize, interpolation=interpolation).astype(np.float32)
        if norm.mean != 0.0 or norm.std != 1.0:
            x -= norm.mean
            x /= norm.std
        interp.set_tensor(spec.index, x[None])
        return
    if spec.scale <= 0:
        raise EdgekitError("quantized input tensor has no scale; cannot quantize the image")
    # q = (pixel - mean) / (std * scale) + zero_point
    step = norm.std * spec.scale
    offset = spec.zero_point - norm.mean / step
    if abs(step - 1.0) < 1e-4:
        if spec.dtype == np.uint8 and abs(offset) < 1e-3:
            view = interp.tensor(spec.index)()
            fit(rgb, size, resize, out=view[0], interpolation=interpolation)
            del view
            return
        if spec.dtype == np.int8 and abs(offset + 128.0) < 1e-3:
            # p - 128 as int8 is p with its top bit flipped.
            # Not in place: fit() may return the caller's own array when no resize is needed.
            img = np.bitwise_xor(fit(rgb, size, resize, interpolation=interpolation),
                                 np.uint8(0x80))
            interp.set_tensor(spec.index, img.view(np.int8)[None])
            return
    info = np.iinfo(spec.dtype)
    small = fit(rgb, size, resize, interpolation=interpolation)
    q = np.rint(small.astype(np.float32) / step + offset)
    interp.set_tensor(spec.index, np.clip(q, info.min, info.max).astype(spec.dtype)[None])


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Maps quantized outputs back to real values; float outputs pass through.

    Scores must be compared and thresholded in real units: a raw uint8 score of 200 means
    nothing until multiplied by the tensor's scale.
    """
    if values.dtype == np.float32 or scale == 0:
        return values.astype(np.float32, copy=False)
    return (values.astype(np.float32) - zero_point) * scale


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _producing_op(model_path: str | Path) -> str | None:
    """Name of the op that produces the model's output, read from the FlatBuffer schema."""
    from .tflite import find_schema, op_name

    schema = find_schema()
    if schema is None:
        return None
    try:
        buf = Path(model_path).read_bytes()
        model = schema.ModelT.InitFromPackedBuf(buf, 0)
        graph = model.subgraphs[0]
        out = int(graph.outputs[0])
        for op in graph.operators:
            if op.outputs is not None and out in list(op.outputs):
                return op_name(model.operatorCodes[op.opcodeIndex])
    except Exception:  # noqa: BLE001 - an unreadable graph just means "don't know"
        return None
    return None


def outputs_are_probabilities(interp: Any, model_path: str | Path) -> bool:
    """Decides once per model whether its output is already a probability distribution."""
    d = interp.get_output_details()[0]
    scale, zp = d["quantization"]
    if d["dtype"] in (np.uint8, np.int8) and abs(scale - _PROB_SCALE) < 1e-9 and \
            zp == (0 if d["dtype"] == np.uint8 else -128):
        return True
    op = _producing_op(model_path)
    if op is not None:
        return op in _SOFTMAX_OPCODES
    # Unknown graph (e.g. tflite-runtime without the schema): probe with a mid-grey image.
    spec = input_spec(interp)
    set_input(interp, spec, np.full((spec.height, spec.width, 3), 128, np.uint8),
              default_normalization(spec))
    interp.invoke()
    v = dequantize(interp.get_tensor(d["index"]).reshape(-1), scale, zp)
    return bool(np.all(v >= -1e-6) and abs(float(v.sum()) - 1.0) < 1e-2)


def top_k(scores: np.ndarray, k: int, labels: dict[int, str] | None = None,
          threshold: float = 0.0) -> list[Class]:
    """The ``k`` best classes with a score of at least ``threshold``, best first."""
    k = max(1, min(int(k), scores.shape[-1]))
    idx = np.argpartition(-scores, k - 1)[:k]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    labels = labels or {}
    return [Class(int(i), labels.get(int(i), str(int(i))), float(scores[i]))
            for i in idx if scores[i] >= threshold]


def _onnx_manifest(model_path: Path) -> dict[str, Any] | None:
    from .onnx_backend import read_embedded_manifest as read_onnx_manifest

    return read_onnx_manifest(model_path)


class Classifier:
    """Classifies RGB images with a ``.tflite`` model.

    Preprocessing and labels come from the manifest beside the model when present, else
    from the manifest embedded in the ``.tflite`` file, else from ``labels`` and the
    model's own input tensor.

    Args:
        model_path: the ``.tflite`` file.
        labels: a label file path or a ``{index: label}`` mapping (overrides the manifest).
        threads: interpreter CPU threads.
        edgetpu: False, True or an Edge TPU device string ("usb", "usb:0", "pci:0").
        normalization: overrides the manifest's / default normalization.
        use_manifest: read ``manifest.json`` beside the model when there is one.
        interpolation: overrides the manifest's resize interpolation ("linear", "area");
            a model with no manifest gets "area".
        providers: ONNX Runtime providers for an ``.onnx`` model, best first.
        engine_cache: TensorRT engine cache folder for an ``.onnx`` model.

    Raises:
        EdgekitError: the model cannot be loaded or is not an image classifier.
    """

    def __init__(self, model_path: str | Path, labels: str | Path | dict[int, str] | None = None,
                 threads: int | None = None, edgetpu: bool | str = False,
                 normalization: Normalization | None = None, use_manifest: bool = True,
                 interpolation: str | None = None, providers: list[str] | None = None,
                 engine_cache: str | Path | None = None) -> None:
        self.model_path = Path(model_path)
        t0 = time.perf_counter()
        self.interpreter = _backend.make_interpreter(self.model_path, threads, edgetpu,
                                                     providers, engine_cache)
        # ONNX models: the execution provider that actually runs (None for TFLite).
        self.provider: str | None = getattr(self.interpreter, "provider", None)
        self.load_ms = (time.perf_counter() - t0) * 1000.0
        self.backend = _backend.backend()
        self.spec = input_spec(self.interpreter)
        self.num_classes = output_classes(self.interpreter)
        self.manifest: Manifest | None = None
        if use_manifest:
            self.manifest = manifest_beside(self.model_path)
            if self.manifest is None:
                embedded = (_onnx_manifest(self.model_path)
                            if self.provider is not None
                            else read_embedded_manifest(self.model_path))
                if embedded is not None:
                    self.manifest = Manifest.from_dict(embedded, f"{self.model_path} metadata")
        if self.manifest is not None and (self.spec.height, self.spec.width) != \
                tuple(self.manifest.input_size):
            raise EdgekitError(
                f"manifest input size {list(self.manifest.input_size)} does not match the "
                f"model's {[self.spec.height, self.spec.width]} [{self.model_path}]")
        if isinstance(labels, dict):
            self.labels = dict(labels)
        elif labels is not None:
            self.labels = read_labels(labels)
        elif self.manifest is not None:
            self.labels = dict(enumerate(self.manifest.labels))
        else:
            self.labels = {}
        self.normalization = normalization or (
            self.manifest.normalization if self.manifest else default_normalization(self.spec))
        self.resize = self.manifest.resize if self.manifest else "stretch"
        # Without a manifest: "area", which reproduces pycoral's scores for Coral's models.
        self.interpolation = interpolation or (
            self.manifest.interpolation if self.manifest else "area")
        if self.interpolation not in INTERPOLATIONS:
            raise EdgekitError(f"interpolation {self.interpolation!r}, expected one of "
                               f"{', '.join(INTERPOLATIONS)}")
        self.bgr_input = bool(self.manifest and self.manifest.color_order == "BGR")
        out = self.interpreter.get_output_details()[0]
        self._out_index = out["index"]
        self._out_scale, self._out_zp = float(out["quantization"][0]), int(out["quantization"][1])
        self.apply_softmax = not outputs_are_probabilities(self.interpreter, self.model_path)
        self.last_invoke_ms = 0.0

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return (self.spec.height, self.spec.width)

    def scores(self, rgb: np.ndarray) -> np.ndarray:
        """Runs the model on an RGB image of any size; returns per-class probabilities."""
        if self.bgr_input:
            rgb = rgb[..., ::-1]
        set_input(self.interpreter, self.spec, rgb, self.normalization, self.resize,
                  self.interpolation)
        t0 = time.perf_counter()
        self.interpreter.invoke()
        self.last_invoke_ms = (time.perf_counter() - t0) * 1000.0
        raw = self.interpreter.get_tensor(self._out_index).reshape(-1)  # a copy, safe to keep
        s = dequantize(raw, self._out_scale, self._out_zp)
        return softmax(s) if self.apply_softmax else s

    def classify(self, rgb: np.ndarray, k: int = 5, threshold: float = 0.0) -> list[Class]:
        """Top-``k`` classes of an RGB image."""
        return top_k(self.scores(rgb), k, self.labels, threshold)

    def classify_file(self, path: str | Path, k: int = 5, threshold: float = 0.0,
                      max_pixels: int | None = None) -> list[Class]:
        """Top-``k`` classes of an image file.

        Raises:
            ImageError: unreadable, unsupported or corrupt, or above ``max_pixels``
                (default ``EDGEKIT_MAX_IMAGE_PIXELS`` or 50 Mpx, read from the header
                before decoding).
        """
        return self.classify(load_image(path, max_pixels), k, threshold)
