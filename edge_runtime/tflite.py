"""The TFLite FlatBuffer for the whole project: the TFL3 check, the schema module, the op and
tensor-type names and structural validation (the load check in a child process, that a
native crash cannot take down, is :mod:`edge_runtime.loadcheck`).

A model that fails here is one clear :class:`EdgekitError` line: a corrupt or hostile file
must never reach the interpreter in this process, nor pass a check it did not load for.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgekitError

IDENTIFIER = b"TFL3"
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
# FlatBuffers address at most 2 GiB; a tensor larger than that cannot be a real model's.
MAX_TENSOR_BYTES = 2 ** 31 - 1
# LiteRT first (the device runtime), then old Pi images, then TensorFlow: a desktop with
# only the train extra converts with the schema TensorFlow ships.
_SCHEMA_MODULES = ("ai_edge_litert.schema_py_generated", "tflite_runtime.schema_py_generated",
                   "tensorflow.lite.python.schema_py_generated")
_ITEM_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1,
               "INT16": 2, "COMPLEX64": 8, "INT8": 1, "FLOAT64": 8, "COMPLEX128": 16,
               "UINT64": 8, "UINT32": 4, "UINT16": 2, "INT4": 1, "BFLOAT16": 2, "INT2": 1,
               "UINT4": 1, "FLOAT8_E4M3FN": 1, "FLOAT8_E5M2": 1}


def check_identifier(data: bytes, path: str | Path) -> None:
    """Raises EdgekitError unless ``data`` carries TFLite's file identifier.

    A TFLite FlatBuffer carries "TFL3" at bytes 4..8. A Keras model (a zip, or HDF5) is
    the usual mistake: the message then says how to convert it.
    """
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        if data[:4] == b"PK\x03\x04" or data[:8] == b"\x89HDF\r\n\x1a\n":
            raise EdgekitError(
                f"{path} is a Keras model, not a TFLite one: convert it first: python -m "
                f"convert RUN_FOLDER (or: python -m convert {path} --labels LABELS.txt "
                "--img-size N), then pass export/model_int8.tflite")
        raise EdgekitError(f"not a TFLite model (no TFL3 identifier): {path}")


def require_model_file(path: str | Path) -> Path:
    """``path`` as a Path when it is a file; else EdgekitError, naming a model inside a
    folder given instead (a run or export folder) when there is one."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.glob("*.tflite")) or sorted(path.glob("export/*.tflite"))
        found = sorted(found, key=lambda f: (f.name != "model_int8.tflite", str(f)))
        hint = f", e.g. --model {found[0]}" if found else ""
        raise EdgekitError(f"{path} is a folder: --model takes a model file (.tflite or "
                           f".onnx){hint}")
    if path.suffix.lower() == ".onnx":  # the Jetson profiles' model; convert leaves it out
        raise EdgekitError(f"model not found: {path} (make it with: python -m convert "
                           "runs/NAME --variants float32,int8,onnx -> export/model.onnx)")
    raise EdgekitError(f"model not found: {path}")


def find_schema() -> Any | None:
    """The generated TFLite schema module, or None when no package here ships one."""
    return _find_schema()


@functools.cache
def _find_schema() -> Any | None:
    for name in _SCHEMA_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def schema() -> Any:
    """The generated TFLite schema module (``ModelT``, ``BuiltinOperator``, ...).

    Raises:
        EdgekitError: no installed package ships it (with the install command).
    """
    found = _find_schema()
    if found is None:
        raise EdgekitError("no TFLite schema module found: pip install ai-edge-litert")
    return found


@functools.cache
def _enum(name: str) -> dict[int, str]:
    return {v: k for k, v in vars(getattr(schema(), name)).items() if k.isupper()}


def builtin_op_names() -> dict[int, str]:
    """Builtin operator code -> name ("CONV_2D"), from the schema."""
    return _enum("BuiltinOperator")


def tensor_type_names() -> dict[int, str]:
    """Tensor type code -> name ("UINT8"), from the schema."""
    return _enum("TensorType")


def op_name(code: Any) -> str:
    """The name of an ``OperatorCodeT``: its custom code, else its builtin name.

    Files written before builtin codes passed 127 keep the code in
    ``deprecatedBuiltinCode``; newer ones in ``builtinCode``: the larger is the real one.
    """
    custom = code.customCode
    if custom:
        return custom.decode("utf-8", "replace") if isinstance(custom, bytes) else str(custom)
    number = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    return builtin_op_names().get(number, f"OP_{number}")


def read_model(model: str | Path | bytes, path: str | Path | None = None) -> Any:
    """Parses and validates a model: every index and offset in range, every shape sane.

    Args:
        model: a ``.tflite`` path or its bytes.
        path: how to name the model in errors (default: ``model`` when it is a path).

    Returns:
        The schema's ``ModelT`` (object API).

    Raises:
        EdgekitError: missing, not TFLite, unreadable, or structurally invalid (the message
            names the subgraph, tensor or op).
    """
    if isinstance(model, (bytes, bytearray)):
        data, name = bytes(model), path or "model"
    else:
        name = path or model
        require_model_file(model)
        try:
            data = Path(model).read_bytes()
        except OSError as e:
            raise EdgekitError(f"cannot read {model}: {e.strerror or e}") from None
    check_identifier(data, name)
    s = schema()
    try:  # a corrupt FlatBuffer fails in many ways, all of them "cannot read"
        parsed = s.ModelT.InitFromPackedBuf(data, 0)
    except Exception as e:  # noqa: BLE001
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise EdgekitError(f"cannot read TFLite model {name}: damaged or truncated FlatBuffer "
                           f"({detail})") from None
    problem = validate(parsed, len(data))
    if problem:
        raise EdgekitError(f"invalid TFLite model: {problem} [{name}]")
    return parsed


def _ints(array: Any) -> list[int]:
    return [] if array is None else [int(i) for i in array]


def validate(model: Any, size: int) -> str | None:
    """What is structurally wrong with a parsed ``ModelT`` (None when nothing is).

    Checks what the interpreter would otherwise trip over, so the check does not depend on
    which runtime is installed: subgraphs present; subgraph, op and metadata indices in
    range; known tensor types and operators; no negative dimension; no tensor over 2 GiB;
    external buffer offsets inside the file of ``size`` bytes.
    """
    buffers, codes = model.buffers or [], model.operatorCodes or []
    if not model.subgraphs:
        return "no subgraph"
    types, names = tensor_type_names(), builtin_op_names()
    for ci, code in enumerate(codes):
        number = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        if number not in names and not code.customCode:
            return f"operator code {ci} has unknown builtin operator {number}"
    for bi, buf in enumerate(buffers):
        if buf.offset > 1 and buf.offset + buf.size > size:
            return (f"buffer {bi} lies at bytes {buf.offset}..{buf.offset + buf.size}, past "
                    f"the end of the file ({size} bytes)")
    for gi, g in enumerate(model.subgraphs):
        tensors = g.tensors or []
        n = len(tensors)

        def bad(kind: str, indices: list[int], low: int = 0, _n: int = n, _gi: int = gi
                ) -> str | None:
            for i, t in enumerate(indices):
                if not low <= t < _n:
                    return (f"subgraph {_gi} {kind} {i} is tensor {t}, expected 0..{_n - 1}"
                            f"{' or -1 (none)' if low < 0 else ''}")
            return None

        if problem := bad("input", _ints(g.inputs)) or bad("output", _ints(g.outputs)):
            return problem
        for ti, t in enumerate(tensors):
            where = f"subgraph {gi} tensor {ti}"
            if t.type not in types:
                return f"{where} has unknown type {t.type}"
            if not 0 <= t.buffer < len(buffers):
                return f"{where} uses buffer {t.buffer}, expected 0..{len(buffers) - 1}"
            shape = _ints(t.shape)
            if any(d < 0 for d in shape):
                return f"{where} has a negative dimension {shape}"
            if any(d < -1 for d in _ints(t.shapeSignature)):
                return f"{where} has an invalid shape signature {_ints(t.shapeSignature)}"
            item = _ITEM_BYTES.get(types[t.type])
            if item and shape and float(np.prod(shape, dtype=np.float64)) * item > \
                    MAX_TENSOR_BYTES:
                return f"{where} shape {shape} needs more than 2 GiB"
        made = set(_ints(g.inputs))
        for oi, op in enumerate(g.operators or []):
            where = f"subgraph {gi} op {oi}"
            if not 0 <= op.opcodeIndex < len(codes):
                return f"{where} has operator code {op.opcodeIndex}, expected 0..{len(codes) - 1}"
            if problem := bad(f"op {oi} input", _ints(op.inputs), low=-1) or bad(
                    f"op {oi} output", _ints(op.outputs)):
                return problem
            made.update(_ints(op.outputs))
        for i, t in enumerate(_ints(g.outputs)):
            # An output no op writes, that is neither an input nor a constant, has no data:
            # the interpreter loads such a model and fails on every invoke.
            buf = buffers[tensors[t].buffer]
            if t not in made and not (buf.data is not None and len(buf.data)) and \
                    buf.offset <= 1:
                return f"subgraph {gi} output {i} (tensor {t}) is computed by no operator"
    for mi, md in enumerate(model.metadata or []):
        if not 0 <= md.buffer < len(buffers):
            return f"metadata {mi} uses buffer {md.buffer}, expected 0..{len(buffers) - 1}"
    for si, sig in enumerate(model.signatureDefs or []):
        if not 0 <= sig.subgraphIndex < len(model.subgraphs):
            return f"signature {si} names subgraph {sig.subgraphIndex}, expected " \
                   f"0..{len(model.subgraphs) - 1}"
    return None


__all__ = ["EDGETPU_CUSTOM_OP", "IDENTIFIER", "MAX_TENSOR_BYTES", "builtin_op_names",
           "check_identifier", "find_schema", "op_name", "read_model", "schema",
           "tensor_type_names", "validate"]
