"""Rebuilds float ImageNet MobileNetV2 weights from a published full-integer TFLite model.

Usage:
    python -m train.weights --from-tflite MODEL.tflite --out W.h5 [--keras-model FULL.keras]

Nothing here can download ImageNet weights; a published int8 MobileNetV2 (e.g. Coral's
``tf2_mobilenet_v2_1.0_224_ptq.tflite``) carries them all the same. Its 52 convolutions
map one-to-one, in order, onto ``keras.applications.MobileNetV2(alpha=1.0)``'s Conv2D and
DepthwiseConv2D layers, and a last 1x1 convolution (1001 outputs, background first) is the
classifier. TFLite folded each BatchNorm into the convolution before it, so every Keras
BatchNormalization becomes the identity plus that convolution's folded bias. Weights are
per-channel int8 and biases int32, dequantized with their scales.

W.h5 is a no-top weights file in the layout Keras downloads (``python -m train --weights
W.h5``); FULL.keras is the whole 1001-class classifier, taking raw 0-255 RGB like every
model ``train`` writes, for ``python -m convert FULL.keras --labels imagenet_labels.txt
--img-size 224``.

Exit status: 0 written; 1 an error (one line on stderr); 2 bad usage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import EXIT_OK, EdgekitError, Parser, cli_main

# keras.applications.MobileNetV2 builds every BatchNormalization with this epsilon.
BN_EPSILON = 1e-3
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")


@dataclass(frozen=True)
class FloatConv:
    """One convolution of the TFLite model, dequantized.

    Attributes:
        op: "CONV_2D" or "DEPTHWISE_CONV_2D".
        name: the weight tensor's name in the TFLite file (for error messages).
        kernel: float32 weights in TFLite layout (out, kh, kw, in) or (1, kh, kw, channels).
        bias: float32 bias, one per output channel.
    """

    op: str
    name: str
    kernel: object
    bias: object


@dataclass(frozen=True)
class Rebuilt:
    """What :func:`rebuild` wrote.

    Attributes:
        weights: the no-top ``.h5`` weights file.
        keras_model: the full classifier, or None when not asked for.
        layers: Keras convolution layers filled.
        classes: outputs of the classifier taken from the TFLite model.
    """

    weights: Path
    keras_model: Path | None
    layers: int
    classes: int


def _dequantize(model, tensor_index: int, what: str):
    """A constant tensor as float32: int8/int32 values times their (per-channel) scales."""
    import numpy as np

    from edge_runtime.tflite import tensor_type_names

    t = model.subgraphs[0].tensors[tensor_index]
    name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    buf = model.buffers[t.buffer].data
    if buf is None or len(buf) == 0:
        raise EdgekitError(f"{what} {name!r} has no constant data; expected a weight tensor")
    dtype = {"INT8": np.int8, "INT32": np.int32, "FLOAT32": np.float32}.get(
        tensor_type_names().get(t.type, "?"))
    if dtype is None:
        raise EdgekitError(f"{what} {name!r} is {tensor_type_names().get(t.type)}, expected "
                           "INT8, INT32 or FLOAT32")
    values = np.frombuffer(np.asarray(buf, np.uint8).tobytes(), dtype).reshape(t.shape)
    if dtype is np.float32:
        return values.astype(np.float32), name
    q = t.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        raise EdgekitError(f"{what} {name!r} is quantized but has no scales")
    scale = np.asarray(q.scale, np.float32)
    zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.float32)
    if scale.size > 1:  # per-channel: broadcast along the quantized dimension
        shape = [1] * values.ndim
        shape[q.quantizedDimension] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.size > 1 else zero
    return ((values.astype(np.float32) - zero) * scale).astype(np.float32), name


def read_convolutions(path: str | Path) -> list[FloatConv]:
    """Every CONV_2D / DEPTHWISE_CONV_2D of a TFLite model, in execution order, as floats.

    Raises:
        EdgekitError: not a TFLite model, or a convolution without constant weights.
    """
    from edge_runtime.tflite import op_name, read_model

    model = read_model(path)
    codes = [op_name(c) for c in model.operatorCodes]
    out = []
    for op in model.subgraphs[0].operators or []:
        kind = codes[op.opcodeIndex]
        if kind not in CONV_OPS:
            continue
        inputs = [int(i) for i in op.inputs]
        if len(inputs) < 3 or inputs[2] < 0:
            raise EdgekitError(f"a {kind} in {path} has no bias input; expected folded "
                               "BatchNorm biases")
        kernel, name = _dequantize(model, inputs[1], "weights")
        bias, _ = _dequantize(model, inputs[2], "bias")
        out.append(FloatConv(kind, name, kernel, bias.reshape(-1)))
    return out


def _keras_convs(base) -> list:
    import keras

    return [layer for layer in base.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]


def _following_batchnorm(base, conv):
    """The BatchNormalization fed by ``conv`` (MobileNetV2 puts one after every conv)."""
    import keras

    layers = base.layers
    nxt = layers[layers.index(conv) + 1]
    if not isinstance(nxt, keras.layers.BatchNormalization):
        raise EdgekitError(f"Keras layer {conv.name} is not followed by BatchNormalization")
    return nxt


def fill_base(base, convs: list[FloatConv]) -> None:
    """Writes the TFLite convolutions into a Keras MobileNetV2 (alpha 1.0) base in place.

    Raises:
        EdgekitError: the counts, kinds or shapes do not match, naming the first mismatch.
    """
    import keras
    import numpy as np

    layers = _keras_convs(base)
    if len(convs) != len(layers) + 1:
        raise EdgekitError(f"the TFLite model has {len(convs)} convolutions, expected "
                           f"{len(layers) + 1} (MobileNetV2 1.0: {len(layers)} plus the "
                           "classifier)")
    for i, (layer, conv) in enumerate(zip(layers, convs)):
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        if depthwise != (conv.op == "DEPTHWISE_CONV_2D"):
            raise EdgekitError(f"convolution {i} ({conv.name}) is a {conv.op}, but Keras "
                               f"layer {layer.name} is a {type(layer).__name__}")
        # TFLite: (out, kh, kw, in), depthwise (1, kh, kw, channels);
        # Keras: (kh, kw, in, out), depthwise (kh, kw, channels, 1).
        kernel = (conv.kernel[0][..., None] if depthwise
                  else np.transpose(conv.kernel, (1, 2, 3, 0)))
        want = tuple(layer.get_weights()[0].shape)
        if kernel.shape != want:
            raise EdgekitError(f"convolution {i} ({conv.name}) has shape {kernel.shape}, "
                               f"Keras layer {layer.name} expects {want}")
        layer.set_weights([kernel])
        bn = _following_batchnorm(base, layer)
        n = conv.bias.shape[0]
        # Identity BatchNorm: (x - 0) / sqrt(1 - eps + eps) * 1 + bias == x + bias.
        bn.set_weights([np.ones(n, "float32"), conv.bias.astype("float32"),
                        np.zeros(n, "float32"), np.full(n, 1.0 - bn.epsilon, "float32")])


def classifier_weights(convs: list[FloatConv]):
    """The last 1x1 convolution as Dense weights: (kernel (in, classes), bias (classes,))."""
    if len(convs) < 2:
        raise EdgekitError(f"the TFLite model has {len(convs)} convolutions, expected 53 "
                           "(MobileNetV2 1.0: 52 plus the classifier)")
    last = convs[-1]
    if last.op != "CONV_2D" or last.kernel.shape[1:3] != (1, 1):
        raise EdgekitError(f"the last convolution ({last.name}) is not a 1x1 CONV_2D; "
                           "expected the classifier")
    return last.kernel[:, 0, 0, :].T.copy(), last.bias.copy()


def _save_no_top(base, target: Path) -> None:
    """Writes ``base``'s weights in Keras' legacy HDF5 layout (what Keras downloads)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    from edge_runtime.fileio import atomic_path

    with atomic_path(target) as tmp:
        with h5py.File(tmp, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, base)


def rebuild(tflite: str | Path, out: str | Path, keras_model: str | Path | None = None,
            img_size: int = 224) -> Rebuilt:
    """Rebuilds float MobileNetV2 1.0 weights from a full-integer TFLite MobileNetV2.

    Args:
        tflite: the published ``.tflite`` model.
        out: the no-top ``.h5`` weights file to write.
        keras_model: also write the whole classifier (raw 0-255 RGB in, softmax out) here.
        img_size: input size of the Keras base (the weights do not depend on it).

    Returns:
        What was written.

    Raises:
        EdgekitError: unreadable model, or its convolutions do not fit MobileNetV2 1.0.
    """
    out = Path(out)
    if not str(out).endswith(".h5"):
        raise EdgekitError(f"--out {out}: expected a .h5 file")
    if keras_model is not None and not str(keras_model).endswith(".keras"):
        raise EdgekitError(f"--keras-model {keras_model}: expected a .keras file")
    convs = read_convolutions(tflite)
    from .model import build_model

    kernel, bias = classifier_weights(convs)
    model, base = build_model(kernel.shape[1], 1.0, img_size, None, dropout=0.0)
    fill_base(base, convs)
    if kernel.shape[0] != model.get_layer("classifier").get_weights()[0].shape[0]:
        raise EdgekitError(f"the classifier takes {kernel.shape[0]} features, expected "
                           f"{model.get_layer('classifier').get_weights()[0].shape[0]}")
    model.get_layer("classifier").set_weights([kernel, bias])
    _save_no_top(base, out)
    written = None
    if keras_model is not None:
        from edge_runtime.fileio import atomic_path

        written = Path(keras_model)
        with atomic_path(written) as tmp:
            model.save(tmp)
    return Rebuilt(out, written, len(convs) - 1, kernel.shape[1])


def build_parser() -> Parser:
    """The argparse parser for ``python -m train.weights``."""
    p = Parser(prog="python -m train.weights", description=__doc__.split("\n")[0])
    p.add_argument("--from-tflite", required=True, metavar="MODEL.tflite",
                   help="a full-integer MobileNetV2 1.0 TFLite model (e.g. Coral's "
                        "tf2_mobilenet_v2_1.0_224_ptq.tflite)")
    p.add_argument("--out", required=True, metavar="W.h5",
                   help="no-top weights file to write (for python -m train --weights W.h5)")
    p.add_argument("--keras-model", metavar="FULL.keras",
                   help="also write the whole classifier with its head")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    """``python -m train.weights``: rebuild the weights, print what was written."""
    args = build_parser().parse_args(argv)
    from edge_runtime.quiet import quiet_tensorflow

    with quiet_tensorflow():
        r = rebuild(args.from_tflite, args.out, args.keras_model)
    print(f"wrote {r.weights} ({r.layers} convolutions)"
          + (f" and {r.keras_model} ({r.classes} classes)" if r.keras_model else ""))
    return EXIT_OK


if __name__ == "__main__":
    from edge_runtime.errors import exit_with, install_signal_handlers

    install_signal_handlers()
    exit_with(main)
