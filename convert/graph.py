"""A TFLite model's main subgraph as plain typed records, for the Edge TPU lint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import loadcheck, tflite

_NUMPY = {"INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64}


@dataclass(frozen=True, eq=False)
class Tensor:
    """One tensor: ``dtype`` the schema's name ("UINT8"), ``signature`` the shape with -1
    for dynamic dimensions (None when the file has none), ``const`` it holds data (weights,
    bias, shapes), ``values`` that data for integer types, ``zero_point`` its first."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    signature: tuple[int, ...] | None
    const: bool
    values: np.ndarray | None
    zero_point: int

    def describe(self) -> str:
        """``name dtype [shape]``, the signature's -1 shown for dynamic dimensions."""
        return f"{self.name} {self.dtype.lower()} {list(self.signature or self.shape)}"


@dataclass(frozen=True, eq=False)
class Op:
    """One operator: its name ("CONV_2D" or the custom code), builtin options object, and
    tensors (None for an omitted optional input)."""

    index: int
    name: str
    custom: bool
    options: Any
    inputs: tuple[Tensor | None, ...]
    outputs: tuple[Tensor, ...]


@dataclass(frozen=True)
class Graph:
    """The main subgraph: its tensors, ops in execution order, and input/output indices."""

    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    @property
    def compiled(self) -> bool:
        """It holds ``edgetpu-custom-op`` (made by edgetpu_compiler)."""
        return any(op.name == tflite.EDGETPU_CUSTOM_OP for op in self.ops)


def _ints(array: Any) -> tuple[int, ...]:
    return () if array is None else tuple(int(i) for i in array)


def _tensor(model: Any, i: int, t: Any, types: dict[int, str]) -> Tensor:
    buf = model.buffers[t.buffer]
    raw = buf.data if buf.data is not None and len(buf.data) else None
    dtype = types[t.type]
    zp = t.quantization.zeroPoint if t.quantization is not None else None
    return Tensor(
        index=i, name=(t.name or b"").decode("utf-8", "replace") if isinstance(
            t.name, bytes) else str(t.name or ""), dtype=dtype, shape=_ints(t.shape),
        signature=None if t.shapeSignature is None else _ints(t.shapeSignature),
        const=raw is not None or buf.offset > 1,  # over 2 GB, data lies at an offset
        values=np.asarray(raw, np.uint8).view(_NUMPY[dtype])
        if raw is not None and dtype in _NUMPY and len(raw) % np.dtype(_NUMPY[dtype]).itemsize
        == 0 else None,
        zero_point=int(zp[0]) if zp is not None and len(zp) else 0)


def read_graph(path: str | Path, load: bool = True) -> Graph:
    """Reads, validates and (``load``) loads a model with the interpreter, then returns its
    main subgraph.

    Raises:
        EdgekitError: missing, not TFLite, damaged, structurally invalid, or refused (or
            crashed on) by the TFLite interpreter: a model lint would pass must load.
    """
    model = tflite.read_model(path)
    types = tflite.tensor_type_names()
    g = model.subgraphs[0]
    tensors = tuple(_tensor(model, i, t, types) for i, t in enumerate(g.tensors or []))
    ops = []
    for i, op in enumerate(g.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        ops.append(Op(index=i, name=tflite.op_name(code), custom=bool(code.customCode),
                      options=op.builtinOptions,
                      inputs=tuple(tensors[j] if j >= 0 else None for j in _ints(op.inputs)),
                      outputs=tuple(tensors[j] for j in _ints(op.outputs))))
    graph = Graph(tensors, tuple(ops), _ints(g.inputs), _ints(g.outputs))
    if load:  # an Edge TPU model's custom op has no CPU kernel: build, don't allocate
        loadcheck.load_check(path, allocate=not graph.compiled)
    return graph
