"""TensorFlow's quantization debugger: which layers lose the most, and keeping them float."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgekitError

from .quantization import Quantization

Representative = Callable[[], Iterable[list[np.ndarray]]]


def _converter(saved_model: Path, representative: Representative):
    # The debugger quantizes itself from a calibrated float model: float io here; the
    # requested io is set on its result (set_io).
    return Quantization.int8(representative, io="float").converter(saved_model)


def layer_errors(saved_model: Path, representative: Representative, top: int = 5) -> list[dict]:
    """The ``top`` layers by RMSE/scale (quantization error in units of one quantization step).

    Returns:
        Dicts with op, tensor (exact name for ``--float-layers``), short_name,
        rmse_per_scale, best first.
    """
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        # The debugger runs models with tf.lite.Interpreter, which warns it is deprecated.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=_converter(saved_model, representative), debug_dataset=representative)
        debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    rows = []
    for r in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(r["scale"] or 0)
        if scale <= 0:
            continue
        name = r["tensor_name"]
        rows.append({"op": r["op_name"], "tensor": name, "short_name": short_name(name),
                     "rmse_per_scale": float(np.sqrt(float(r["mean_squared_error"])) / scale)})
    rows.sort(key=lambda r: -r["rmse_per_scale"])
    return rows[:top]


def short_name(tensor: str) -> str:
    """A readable name: the Keras layer and the op, e.g. ``block_3_project_BN/add_1``."""
    parts = tensor.split(";")[0].split("/")
    inner = [p for p in parts if p != parts[0]]
    if len(inner) >= 2:
        return f"{inner[0]}/{inner[-1]}"
    return inner[0] if inner else tensor


def resolve_layers(requested: list[str], known: list[str]) -> list[str]:
    """Maps each requested name to one tensor: exact tensor name, exact short name, or a
    substring of exactly one tensor name.

    Raises:
        EdgekitError: a name matches no tensor or several.
    """
    out = []
    for name in requested:
        if name in known:
            out.append(name)
            continue
        hits = [k for k in known if short_name(k) == name] or [k for k in known if name in k]
        if len(hits) != 1:
            raise EdgekitError(
                f"--float-layers {name!r} matches {len(hits)} tensors"
                + (f" (e.g. {hits[:3]})" if hits else "; see convert_report.md for names"))
        out.append(hits[0])
    return out


def selective_int8(saved_model: Path, representative: Representative,
                   float_layers: list[str], io: str = "uint8") -> bytes:
    """An int8 model with ``float_layers`` kept in float, with ``io`` input and output.

    Raises:
        EdgekitError: a name matches no tensor or several, or ``io`` cannot be set.
    """
    import tensorflow as tf

    known = [r["tensor"] for r in layer_errors(saved_model, representative, top=10_000)]
    nodes = resolve_layers(float_layers, known)
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes,
                                                            fully_quantize=False)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=_converter(saved_model, representative), debug_dataset=representative,
        debug_options=options)
    return set_io(debugger.get_nondebug_quantized_model(), io)


def set_io(model: bytes, io: str) -> bytes:
    """``model`` (float input and output around int8 ops) with ``io`` input and output: the
    boundary QUANTIZE/DEQUANTIZE removed, as TFLiteConverter does for
    ``inference_input_type``.

    Raises:
        EdgekitError: the model's input or output is not quantized.
    """
    if io == "float":
        return model
    import tensorflow as tf
    from tensorflow.lite.python import util

    from edge_runtime.backend import backend

    dtype = {"uint8": tf.uint8, "int8": tf.int8}[io]
    try:
        out = bytes(util.modify_model_io_type(model, dtype, dtype))
    except (ValueError, RuntimeError) as e:
        raise EdgekitError(f"cannot give the selectively quantized model {io} input and "
                           f"output ({e}); pass --io float") from None
    # A float layer at the model's edge keeps that edge float: TensorFlow only logs it.
    it = backend().interpreter_cls(model_content=out)
    got = sorted({np.dtype(d["dtype"]).name for d in
                  it.get_input_details() + it.get_output_details()})
    if got != [io]:
        raise EdgekitError(f"with these --float-layers the model's input/output stays "
                           f"{'/'.join(got)}, not {io}: keep layers away from the input and "
                           "output in float, or pass --io float")
    return out
