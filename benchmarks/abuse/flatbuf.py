"""Where each value the abuse suite's structural mutators change lies in a TFLite model: a
minimal read-only FlatBuffer walker and the model's layout, by the schema's field numbers
(tensorflow/lite/schema/schema.fbs)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace


class FlatBuffer:
    """A minimal read-only walker over a flatbuffer: where each field of a table lies.

    Only what the mutators need: positions of scalar fields and of offsets, vectors and
    their elements. Positions are absolute byte offsets into the buffer.
    """

    def __init__(self, data: bytes) -> None:
        self.b = data

    def u16(self, p: int) -> int:
        return struct.unpack_from("<H", self.b, p)[0]

    def u32(self, p: int) -> int:
        return struct.unpack_from("<I", self.b, p)[0]

    def i32(self, p: int) -> int:
        return struct.unpack_from("<i", self.b, p)[0]

    def fields(self, table: int) -> dict[int, int]:
        """{field index: absolute position} of the fields present in the table at ``table``."""
        vt = table - self.i32(table)
        n = (self.u16(vt) - 4) // 2
        out = {}
        for i in range(n):
            fo = self.u16(vt + 4 + 2 * i)
            if fo:
                out[i] = table + fo
        return out

    def deref(self, p: int) -> int:
        """Where the uoffset stored at ``p`` points."""
        return p + self.u32(p)

    def vector(self, p: int) -> tuple[int, int, int]:
        """(position of the length word, first element, length) of the vector at field ``p``."""
        v = self.deref(p)
        return v, v + 4, self.u32(v)

    def tables(self, p: int) -> list[int]:
        """The tables of the vector of tables at field ``p``."""
        _, start, n = self.vector(p)
        return [self.deref(start + 4 * i) for i in range(n)]


@dataclass(frozen=True)
class Layout:
    """Positions in a TFLite model that the structural mutators write to (lists of
    absolute byte positions, each with the struct format of the value there)."""

    root_field: int
    subgraph_inputs: list[int]          # int32 elements of subgraphs[*].inputs
    subgraph_outputs: list[int]
    op_inputs: list[int]                # int32 elements of operators[*].inputs
    op_outputs: list[int]
    op_opcode_index: list[int]          # uint32
    tensor_buffer: list[int]            # uint32 Tensor.buffer
    tensor_type: list[int]              # int8 Tensor.type
    input_shape_dims: list[int]         # int32 elements of the input tensors' shapes
    tensor_shape_dims: list[int]        # int32 elements of every tensor's shape
    opcode_builtin: list[int]           # int32 OperatorCode.builtin_code
    opcode_deprecated: list[int]        # int8 OperatorCode.deprecated_builtin_code
    vector_lengths: dict[str, list[int]]  # uint32 length words, by what the vector holds
    offsets: dict[str, list[int]]       # uoffset fields, by what they point to
    n_tensors: int
    n_buffers: int


# Field numbers of the TFLite schema (schema.fbs) that the layout reads.
_MODEL_OPERATOR_CODES, _MODEL_SUBGRAPHS, _MODEL_BUFFERS = 1, 2, 4
_OPCODE_DEPRECATED_BUILTIN, _OPCODE_BUILTIN = 0, 3
_BUFFER_DATA = 0
_SUBGRAPH_TENSORS, _SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS, _SUBGRAPH_OPERATORS = 0, 1, 2, 3
_TENSOR_SHAPE, _TENSOR_TYPE, _TENSOR_BUFFER, _TENSOR_NAME, _TENSOR_QUANTIZATION = 0, 1, 2, 3, 4
_QUANTIZATION_SCALE = 2
_OPERATOR_OPCODE_INDEX, _OPERATOR_INPUTS, _OPERATOR_OUTPUTS = 0, 1, 2


def layout(model: bytes) -> Layout:
    """Walks ``model``'s FlatBuffer and records where each mutable value lies."""
    fb = FlatBuffer(model)
    root = fb.u32(0)
    mf = fb.fields(root)
    lens: dict[str, list[int]] = {"tensors": [], "operators": [], "buffers": [],
                                  "buffer_data": [], "shape": [], "op_inputs": [],
                                  "subgraphs": [], "operator_codes": [], "quant_scale": []}
    offs: dict[str, list[int]] = {"subgraphs": [], "buffers": [], "operator_codes": [],
                                  "tensor": [], "tensor_name": [], "operator": [],
                                  "buffer_data": [], "quantization": []}
    out = Layout(root, [], [], [], [], [], [], [], [], [], [], [], lens, offs, 0, 0)
    n_tensors = n_buffers = 0
    if _MODEL_OPERATOR_CODES in mf:
        _operator_codes(fb, out, mf[_MODEL_OPERATOR_CODES])
    if _MODEL_BUFFERS in mf:
        n_buffers = _buffers(fb, out, mf[_MODEL_BUFFERS])
    if _MODEL_SUBGRAPHS in mf:
        offs["subgraphs"].append(mf[_MODEL_SUBGRAPHS])
        lens["subgraphs"].append(fb.vector(mf[_MODEL_SUBGRAPHS])[0])
        n_tensors = sum(_subgraph(fb, out, sg) for sg in fb.tables(mf[_MODEL_SUBGRAPHS]))
    return replace(out, n_tensors=n_tensors, n_buffers=n_buffers)


def _operator_codes(fb: FlatBuffer, out: Layout, field: int) -> None:
    out.offsets["operator_codes"].append(field)
    out.vector_lengths["operator_codes"].append(fb.vector(field)[0])
    for oc in fb.tables(field):
        f = fb.fields(oc)
        if _OPCODE_BUILTIN in f:
            out.opcode_builtin.append(f[_OPCODE_BUILTIN])
        if _OPCODE_DEPRECATED_BUILTIN in f:
            out.opcode_deprecated.append(f[_OPCODE_DEPRECATED_BUILTIN])


def _buffers(fb: FlatBuffer, out: Layout, field: int) -> int:
    """Records the buffers; returns how many there are."""
    out.offsets["buffers"].append(field)
    out.vector_lengths["buffers"].append(fb.vector(field)[0])
    for buf in fb.tables(field):
        f = fb.fields(buf)
        if _BUFFER_DATA in f:
            out.offsets["buffer_data"].append(f[_BUFFER_DATA])
            out.vector_lengths["buffer_data"].append(fb.vector(f[_BUFFER_DATA])[0])
    return fb.vector(field)[2]


def _subgraph(fb: FlatBuffer, out: Layout, sg: int) -> int:
    """Records one subgraph; returns its number of tensors."""
    f = fb.fields(sg)
    inputs: list[int] = []
    if _SUBGRAPH_INPUTS in f:
        _, start, n = fb.vector(f[_SUBGRAPH_INPUTS])
        out.subgraph_inputs.extend(start + 4 * i for i in range(n))
        inputs = [fb.i32(start + 4 * i) for i in range(n)]
    if _SUBGRAPH_OUTPUTS in f:
        _, start, n = fb.vector(f[_SUBGRAPH_OUTPUTS])
        out.subgraph_outputs.extend(start + 4 * i for i in range(n))
    n_tensors = 0
    if _SUBGRAPH_TENSORS in f:
        out.vector_lengths["tensors"].append(fb.vector(f[_SUBGRAPH_TENSORS])[0])
        _, tstart, n_tensors = fb.vector(f[_SUBGRAPH_TENSORS])
        for ti, t in enumerate(fb.tables(f[_SUBGRAPH_TENSORS])):
            out.offsets["tensor"].append(tstart + 4 * ti)
            _tensor(fb, out, fb.fields(t), ti in inputs)
    if _SUBGRAPH_OPERATORS in f:
        out.vector_lengths["operators"].append(fb.vector(f[_SUBGRAPH_OPERATORS])[0])
        _, ostart, _ = fb.vector(f[_SUBGRAPH_OPERATORS])
        for oi, op in enumerate(fb.tables(f[_SUBGRAPH_OPERATORS])):
            out.offsets["operator"].append(ostart + 4 * oi)
            _operator(fb, out, fb.fields(op))
    return n_tensors


def _tensor(fb: FlatBuffer, out: Layout, tf: dict[int, int], is_input: bool) -> None:
    if _TENSOR_SHAPE in tf:
        out.vector_lengths["shape"].append(fb.vector(tf[_TENSOR_SHAPE])[0])
        _, s0, sn = fb.vector(tf[_TENSOR_SHAPE])
        dims = [s0 + 4 * k for k in range(sn)]
        out.tensor_shape_dims.extend(dims)
        if is_input:
            out.input_shape_dims.extend(dims)
    if _TENSOR_TYPE in tf:
        out.tensor_type.append(tf[_TENSOR_TYPE])
    if _TENSOR_BUFFER in tf:
        out.tensor_buffer.append(tf[_TENSOR_BUFFER])
    if _TENSOR_NAME in tf:
        out.offsets["tensor_name"].append(tf[_TENSOR_NAME])
    if _TENSOR_QUANTIZATION in tf:
        out.offsets["quantization"].append(tf[_TENSOR_QUANTIZATION])
        qf = fb.fields(fb.deref(tf[_TENSOR_QUANTIZATION]))
        if _QUANTIZATION_SCALE in qf:
            out.vector_lengths["quant_scale"].append(fb.vector(qf[_QUANTIZATION_SCALE])[0])


def _operator(fb: FlatBuffer, out: Layout, of: dict[int, int]) -> None:
    if _OPERATOR_OPCODE_INDEX in of:
        out.op_opcode_index.append(of[_OPERATOR_OPCODE_INDEX])
    if _OPERATOR_INPUTS in of:
        out.vector_lengths["op_inputs"].append(fb.vector(of[_OPERATOR_INPUTS])[0])
        _, s0, sn = fb.vector(of[_OPERATOR_INPUTS])
        out.op_inputs.extend(s0 + 4 * k for k in range(sn))
    if _OPERATOR_OUTPUTS in of:
        _, s0, sn = fb.vector(of[_OPERATOR_OUTPUTS])
        out.op_outputs.extend(s0 + 4 * k for k in range(sn))


__all__ = ["FlatBuffer", "Layout", "layout"]
