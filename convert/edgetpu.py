"""Lints a TFLite model for the Coral Edge TPU before compiling, and wraps edgetpu_compiler."""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import numpy as np

from edge_runtime.errors import EXIT_ERROR, EXIT_OK, EdgekitError

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
FIX_INT8 = "quantize with full-integer int8 (python -m convert RUN --variants int8)"
FIX_BATCH = "fix the batch size to 1 (convert from an input signature of [1, H, W, 3])"
FIX_STATIC = "give every tensor a static shape (a fixed [1, H, W, 3] input signature)"
INSTALL_HINT = (
    "edgetpu_compiler not found on PATH: it runs only on x86-64 Linux; add Coral's apt "
    "repository (https://coral.ai/docs/edgetpu/compiler/) and 'sudo apt install edgetpu-compiler'"
    " (there is no build for ARM boards such as the Raspberry Pi or Jetson, nor for macOS)")
_QUANT = ("INT8", "UINT8")
_CONST_OK = ("INT8", "UINT8", "INT32", "INT64")  # weights; int32 bias, shape, axis, paddings
_NUMPY = {"INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64}


@functools.cache
def _schema() -> Any:
    """The TFLite flatbuffer schema module that ships with LiteRT (TensorFlow's otherwise)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # a conversion machine always has TensorFlow
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


@dataclass(frozen=True)
class Finding:
    """One lint result: ``severity`` "error" (the model will not map fully), "warning" or
    "info"; ``code`` e.g. "float", "dynamic_batch", "unsupported_op"; ``fix`` one sentence."""

    severity: str
    code: str
    message: str
    op_index: int | None = None
    op: str | None = None
    fix: str | None = None


@dataclass(frozen=True)
class OpPlacement:
    """Where one operator should run ("edgetpu" or "cpu") and, on the CPU, why."""

    index: int
    op: str
    device: str
    reason: str = ""


@dataclass(frozen=True)
class LintReport:
    """What :func:`lint_model` found. ``ok``: the model should map fully to the Edge TPU
    (float<->int conversions at its boundary may still run on the CPU: warnings);
    ``compiled``: it already holds ``edgetpu-custom-op``; ``first_cpu_op``: the first op the
    compiler cannot map (it and every op after it run on the CPU); ``fix``: one sentence, None
    when ok; ``inputs``/``outputs``: "name dtype [shape]"; ``findings``: errors first;
    ``ops``: every op's placement. Op counts are of the main subgraph."""

    path: str
    compiled: bool
    ok: bool
    total_ops: int
    tpu_ops: int
    cpu_ops: int
    first_cpu_op: OpPlacement | None
    fix: str | None
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    findings: tuple[Finding, ...]
    ops: tuple[OpPlacement, ...]

    @property
    def summary(self) -> str:
        """The verdict in one line."""
        if self.compiled:
            return (f"already compiled for the Edge TPU: {self.tpu_ops} edgetpu-custom-op(s), "
                    f"{self.cpu_ops} other op(s) on the CPU; nothing to compile")
        if self.ok:
            edge = (f"; {self.cpu_ops} float conversion op(s) at the boundary run on the CPU"
                    if self.cpu_ops else "")
            return f"PASS: all {self.tpu_ops} compute op(s) should map to the Edge TPU{edge}"
        f = self.first_cpu_op
        where = f"op {f.index} {f.op} and the {self.total_ops - f.index - 1} op(s) after it" \
            if f else "the model"
        return f"FAIL: {where} would run on the CPU ({self.tpu_ops}/{self.total_ops} on the " \
            f"Edge TPU); fix: {self.fix}"

    def to_dict(self) -> dict:
        """A JSON-serialisable dict, ``summary`` included."""
        return {**asdict(self), "summary": self.summary}


def lint_summary(report: LintReport) -> dict:
    """The short JSON form of a report (for convert_report.json): no per-op list."""
    return {**{k: v for k, v in report.to_dict().items() if k not in ("findings", "ops")},
            **{f"{s}s": [f.message for f in report.findings if f.severity == s]
               for s in ("error", "warning")}}


def _load(path: str | Path) -> tuple[Any, list[NS], list[NS]]:
    """The model, and its main subgraph's tensors and ops as plain records."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"model not found: {path}")
    data = path.read_bytes()
    # A TFLite flatbuffer carries the file identifier "TFL3" at bytes 4..8.
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise EdgekitError(f"not a TFLite model (no TFL3 identifier): {path}")
    try:  # a corrupt flatbuffer fails in many ways, all of them "cannot read"
        return _records(_schema().ModelT.InitFromPackedBuf(data, 0))
    except Exception as e:  # noqa: BLE001
        raise EdgekitError(f"cannot read TFLite model {path}: {e or type(e).__name__}") from None


def _ints(array: Any) -> list[int]:
    return [] if array is None else [int(i) for i in array]


def _records(model: Any) -> tuple[Any, list[NS], list[NS]]:
    g = model.subgraphs[0]
    types, names = ({v: k for k, v in vars(getattr(_schema(), enum)).items() if k.isupper()}
                    for enum in ("TensorType", "BuiltinOperator"))
    tensors = []
    for i, t in enumerate(g.tensors or []):
        buf = model.buffers[t.buffer] if t.buffer < len(model.buffers or []) else None
        raw = buf.data if buf is not None and buf.data is not None and len(buf.data) else None
        dtype = types.get(t.type, str(t.type))
        zp = t.quantization.zeroPoint if t.quantization is not None else None
        tensors.append(NS(
            index=i, name=(t.name or b"").decode("utf-8", "replace"), dtype=dtype,
            shape=tuple(int(d) for d in (t.shape if t.shape is not None else ())),
            signature=None if t.shapeSignature is None else tuple(int(d) for d in
                                                                  t.shapeSignature),
            const=raw is not None or (buf is not None and buf.offset > 1),  # >2 GB: offset
            values=raw.view(_NUMPY[dtype]) if raw is not None and dtype in _NUMPY else None,
            zero_point=int(zp[0]) if zp is not None and len(zp) else 0))
    ops = []
    for i, op in enumerate(g.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        custom = (code.customCode or b"").decode("utf-8", "replace")
        number = max(code.builtinCode, code.deprecatedBuiltinCode)
        ops.append(NS(index=i, name=custom or names.get(number, f"OP_{number}"),
                      custom=bool(custom), options=op.builtinOptions,
                      inputs=[tensors[j] if j >= 0 else None for j in _ints(op.inputs)],
                      outputs=[tensors[j] for j in _ints(op.outputs)]))
    return model, tensors, ops


# Supported ops and their limits: Coral, "TensorFlow models on the Edge TPU", https://coral.ai/
# docs/edgetpu/models-intro/#supported-operations (compiler 16; also reproduced at developer.
# axis.com/computer-vision/on-device/system-on-chip/artpec-7/supported-ops/). Model-wide rules
# there: 8-bit quantized tensors, sizes and parameters constant at compile time, and tensors
# of more than 3 dimensions larger than 1 only in the 3 innermost. What the flatbuffer cannot
# show (large reshapes, resize precision, on-chip memory, op versions) is left to the compiler.
SUPPORTED_OPS = frozenset((
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D",
    "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN",
    "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
    "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE",
    "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
    "UNIDIRECTIONAL_SEQUENCE_LSTM"))
Problem = tuple[str, str, str]  # (code, message, fix)


def _limits(op: NS) -> list[Problem]:
    """The op-specific "known limitations" of Coral's table that the flatbuffer shows."""
    name, o, ins, p = op.name, op.options, op.inputs, []
    arg = (lambda i: ins[i] if len(ins) > i else None)  # noqa: E731
    opt = (lambda attr: getattr(o, attr, 0))  # noqa: E731
    flat = (lambda t: sum(d > 1 for d in t.shape) <= 1)  # noqa: E731
    if name in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION") \
            and opt("fusedActivationFunction"):
        p.append(("fused_activation", f"{name} has a fused activation function",
                  "apply the activation as a separate layer after it"))
    if name.endswith("CONV_2D") and opt("dilationHFactor") != opt("dilationWFactor"):
        p.append(("dilation", f"{name} dilation differs in x and y", "use the same dilation "
                  "rate in x and y"))
    data, axes, verb = arg(0), None, "reduce"
    if name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN") and arg(1) is not None:
        axes, n = arg(1).values, len(data.shape)
        if name == "MEAN" and axes is not None and n and data.shape[-1] % 4 and any(
                int(a) % n == n - 1 for a in axes):
            p.append(("z_reduction", f"MEAN over channels needs a multiple of 4 channels, got "
                      f"{data.shape[-1]}", "reduce over height and width only"))
    elif name == "SPLIT":  # inputs: axis, data
        data, axes, verb = arg(1), arg(0).values, "split"
    elif name == "PACK":
        axes, verb = np.array([opt("axis")]), "pack"
    elif name == "PAD":
        pads, verb = arg(1).values if arg(1) is not None else None, "pad"
        if pads is None:
            p.append(("non_const", "PAD paddings are not constant", "use constant paddings"))
        axes = np.array([0]) if pads is not None and pads.size >= 2 and pads[:2].any() else None
    if axes is not None and data is not None and len(data.shape) >= 2 and any(
            int(a) % len(data.shape) == 0 for a in axes):
        p.append(("batch_axis", f"{name} {verb}s along the batch dimension",
                  f"do not {verb} along the batch dimension"))
    consts = [t for t in ins if t is not None and t.const]
    if name == "CONCATENATION" and consts and (len(ins) != 2 or any(
            t.values is None or np.any(t.values != t.zero_point) for t in consts)):
        p.append(("concat_const", "CONCATENATION with a constant input needs exactly 2 inputs "
                  "and an all-zero constant", "concatenate only computed tensors"))
    if name == "FULLY_CONNECTED" and opt("weightsFormat"):
        p.append(("fc_weights_format", "FULLY_CONNECTED weights are not in the default format",
                  "convert with the default fully-connected weights format"))
    if name == "FULLY_CONNECTED" and op.outputs and not flat(op.outputs[0]):
        p.append(("fc_output", f"FULLY_CONNECTED output {list(op.outputs[0].shape)} is not "
                  "one-dimensional", "flatten to [1, N] before the Dense layer"))
    if name == "SOFTMAX" and (not flat(data) or int(np.prod(data.shape or (1,))) > 16000):
        p.append(("softmax_shape", f"SOFTMAX input {list(data.shape)} is not 1-D with at most "
                  "16,000 elements", "apply softmax to a flat vector of <= 16,000 values"))
    strides = arg(3).values if name == "STRIDED_SLICE" and arg(3) is not None else None
    if name == "STRIDED_SLICE" and (strides is None or np.any(strides != 1) or opt(
            "ellipsisMask") or opt("newAxisMask")):
        p.append(("strided_slice", "STRIDED_SLICE needs constant unit strides and no ellipsis "
                  "or new-axis mask", "slice with stride 1 and no ellipsis or new axis"))
    if name == "PRELU" and arg(1) is not None and any(d > 1 for d in arg(1).shape[:-1]):
        p.append(("prelu_alpha", "PRELU alpha is not 1-dimensional",
                  "share PReLU parameters over height and width (Keras shared_axes=[1, 2])"))
    return p


def _check_op(op: NS) -> list[Problem]:
    """Everything that stops one op mapping to the Edge TPU, one entry per kind of problem."""
    found: dict[str, list] = {}

    def add(code: str, message: str, fix: str) -> None:
        found.setdefault(code, [message, fix, 0])[2] += 1

    for t in [t for t in op.inputs + op.outputs if t is not None]:
        if t.const:
            if t.dtype not in _CONST_OK:
                add("float", f"constant '{t.name}' is {t.dtype.lower()}", FIX_INT8)
            continue
        if t.signature is not None and min(t.signature, default=0) < 0:
            batch = t.signature[0] < 0
            add("dynamic_batch" if batch else "dynamic_shape", f"tensor '{t.name}' has a "
                f"dynamic {'batch size' if batch else 'shape'} {list(t.signature)}",
                FIX_BATCH if batch else FIX_STATIC)
        if t.dtype not in _QUANT:
            add("float" if t.dtype.startswith("FLOAT") else "dtype", f"tensor '{t.name}' is "
                f"{t.dtype.lower()}; the Edge TPU computes only int8/uint8", FIX_INT8)
        if len(t.shape) > 3 and any(d > 1 for d in t.shape[:-3]):
            add("rank", f"tensor '{t.name}' {list(t.shape)} is larger than 1 outside its 3 "
                "innermost dimensions", FIX_BATCH if t.shape[0] > 1 else
                "reshape so that only the 3 innermost dimensions exceed 1")
    if op.name not in SUPPORTED_OPS:
        add("unsupported_op", f"{'custom op' if op.custom else 'op'} {op.name} is not "
            "supported by the Edge TPU", f"replace {op.name} with a supported op "
            "(g.co/coral/model-reqs) or move it to the end of the model")
    elif not {"float", "dtype"} & found.keys():
        for problem in _limits(op):
            add(*problem)
    return [(code, msg + (f" (and {n - 1} more)" if n > 1 else ""), fix)
            for code, (msg, fix, n) in found.items()]


def _boundary(op: NS, graph_in: list[int], graph_out: list[int]) -> bool:
    """A float<->int conversion at the model's edge: it runs on the CPU but the ops between
    still map (the compiler leaves such a QUANTIZE and DEQUANTIZE on the CPU and maps the
    rest: the mnist4 log in github.com/system-software-lab/nrf20 convert/quantize/README.md)."""
    src, dst = (op.inputs or [None])[0], op.outputs
    if len(op.inputs) != 1 or src is None:
        return False
    if op.name == "QUANTIZE":
        return src.index in graph_in and src.dtype.startswith("FLOAT") and all(
            t.dtype in _QUANT for t in dst)
    return op.name == "DEQUANTIZE" and src.dtype in _QUANT and not src.const and all(
        t.index in graph_out and t.dtype.startswith("FLOAT") for t in dst)


def lint_model(path: str | Path) -> LintReport:
    """Checks a .tflite model against the Edge TPU's requirements without compiling it.

    The compiler maps ops in order and stops at the first one it cannot map: that op and
    every op after it run on the CPU. The report names that op and says how to fix it.

    Raises:
        EdgekitError: missing file, or not a readable TFLite model.
    """
    model, tensors, ops = _load(path)
    g_in, g_out = _ints(model.subgraphs[0].inputs), _ints(model.subgraphs[0].outputs)
    desc = [f"{t.name} {t.dtype.lower()} {list(t.signature or t.shape)}" for t in tensors]
    io = tuple(desc[i] for i in g_in), tuple(desc[i] for i in g_out)
    if any(op.name == EDGETPU_CUSTOM_OP for op in ops):
        placed = tuple(OpPlacement(op.index, op.name, "edgetpu" if op.name == EDGETPU_CUSTOM_OP
                                   else "cpu") for op in ops)
        tpu = sum(p.device == "edgetpu" for p in placed)
        note = Finding("info", "compiled", f"already compiled (contains {EDGETPU_CUSTOM_OP}): "
                       "run it with the Edge TPU delegate, or lint the model it came from")
        return LintReport(str(path), True, True, len(ops), tpu, len(ops) - tpu, None, None,
                          *io, (note,), placed)
    status = [None if _boundary(op, g_in, g_out) else _check_op(op) for op in ops]
    end = next((i for i, problems in enumerate(status) if problems), len(ops))
    first = None if end == len(ops) else OpPlacement(
        end, ops[end].name, "cpu", "; ".join(m for _, m, _ in status[end]))
    findings = [Finding("warning", "boundary", f"op {op.index} {op.name} converts "
                         f"'{op.inputs[0].name}' ({op.inputs[0].dtype.lower()} -> "
                         f"{op.outputs[0].dtype.lower()}) on the CPU at the model boundary",
                         op.index, op.name, "convert with --io uint8 (or int8)")
                 for op, problems in zip(ops[:end], status) if problems is None]
    findings += [Finding("error", code, f"op {end} {first.op}: {message}", end, first.op, fix)
                 for code, message, fix in (status[end] if first else [])]
    placed = []
    for op, problems in zip(ops, status):
        reason = ("float/int conversion at the model boundary" if problems is None else
                  first.reason if op.index == end else f"after op {end}" if op.index > end else "")
        placed.append(OpPlacement(op.index, op.name, "cpu" if reason else "edgetpu", reason))
    errors = [f for f in findings if f.severity == "error"]
    fix = "; ".join(dict.fromkeys(f.fix for f in errors if f.fix)) or None
    findings.sort(key=lambda f: ("error", "warning", "info").index(f.severity))
    tpu = sum(p.device == "edgetpu" for p in placed)
    return LintReport(str(path), False, not errors, len(ops), tpu, len(ops) - tpu, first, fix,
                      *io, tuple(findings), tuple(placed))


def format_report(report: LintReport) -> str:
    """Readable text: a header line, one line per finding, the summary line."""
    lines = [f"{report.path}: {report.total_ops} op(s); input {', '.join(report.inputs)}; "
             f"output {', '.join(report.outputs)}"]
    for f in report.findings:
        fix = f"; fix: {f.fix}" if f.fix and f.severity != "info" else ""
        lines.append(f"  {f.severity:<7} {f.message}{fix}")
    return "\n".join([*lines, report.summary])


def main_lint(argv: list[str] | None = None) -> int:
    """``python -m convert lint MODEL.tflite [--json]``: exit 0 when the model should map
    fully to the Edge TPU (or is already compiled), 1 when not or on bad input."""
    p = argparse.ArgumentParser(prog="python -m convert lint", description=__doc__)
    p.add_argument("model", help="a .tflite model")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = lint_model(args.model)
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return EXIT_OK if report.ok else EXIT_ERROR


@dataclass(frozen=True)
class CompileResult:
    """What :func:`compile_edgetpu` did. ``available``: edgetpu_compiler is on PATH (else
    nothing ran and ``message`` says how to install it); ``output_path``/``log_path``: the
    ``<name>_edgetpu.tflite`` and its operation log; ``log``: the compiler's stdout and
    stderr; ``info``: :func:`parse_compiler_log` of it; ``command``: what was run."""

    available: bool
    message: str
    output_path: Path | None = None
    log_path: Path | None = None
    log: str = ""
    info: dict = field(default_factory=dict)
    command: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-serialisable: the parsed log's keys, ``cpu_ops`` and ``summary`` (the log)."""
        paths = {k: str(v) if v else None for k, v in (("output_path", self.output_path),
                                                        ("log_path", self.log_path))}
        return {"available": self.available, "message": self.message, **paths,
                "command": list(self.command), **self.info,
                "cpu_ops": int(self.info.get("cpu_ops") or 0), "summary": self.log.strip()}


_FIELDS = {  # log line label -> key
    "Input model": "input_model", "Input": "input_model", "Output model": "output_model",
    "Output": "output_model", "Input size": "input_size", "Output size": "output_size",
    "On-chip memory used for caching model parameters": "on_chip_memory_used",
    "On-chip memory remaining for caching model parameters": "on_chip_memory_remaining",
    "Off-chip memory used for streaming uncached model parameters": "off_chip_memory_used",
    "Number of Edge TPU subgraphs": "edgetpu_subgraphs", "Operation log": "operation_log",
    "Total number of operations": "total_ops",
    "Number of operations that will run on Edge TPU": "tpu_ops",
    "Number of operations that will run on CPU": "cpu_ops"}
_SIZES = [k for k in dict.fromkeys(_FIELDS.values()) if k.endswith(("size", "used", "remaining"))]
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}


def parse_compiler_log(text: str) -> dict:
    """Parses ``edgetpu_compiler -s`` output (or its ``*_edgetpu.log``) into a dict: the keys
    of ``_FIELDS`` (None when absent; sizes also as ``<key>_bytes``), compiler_version,
    success, compile_ms, and ``operations``, the per-op table as {"op", "count", "status",
    "on_edgetpu"} rows. Only the first model of a multi-model log is read."""
    info: dict[str, Any] = dict.fromkeys(_FIELDS.values())
    info.update(compiler_version=None, success=False, compile_ms=None, operations=[])
    for line in (ln.strip() for ln in text.splitlines()):
        label, colon, value = (s.strip() for s in line.partition(":"))
        if m := re.match(r"Edge TPU Compiler version (\S+)", line):
            if info["compiler_version"] and (info["operations"] or info["total_ops"]):
                break  # the next model of a multi-model log
            info["compiler_version"] = m.group(1)
        elif m := re.match(r"Models? compiled successfully in (\d+) ms", line):
            info["success"], info["compile_ms"] = True, int(m.group(1))
        elif line.startswith("Compilation succeeded"):
            info["success"] = True
        elif colon and label in _FIELDS and info[_FIELDS[label]] is None:
            key = _FIELDS[label]
            info[key] = int(value) if key.endswith(("ops", "graphs")) and value.isdigit() \
                else value
        elif m := re.fullmatch(r"([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*)", line):
            info["operations"].append({"op": m.group(1), "count": int(m.group(2)),
                                       "status": m.group(3),
                                       "on_edgetpu": m.group(3) == "Mapped to Edge TPU"})
    for key in _SIZES:
        m = re.fullmatch(r"([\d.]+)\s*(B|KiB|MiB|GiB)", info[key] or "")
        info[f"{key}_bytes"] = round(float(m.group(1)) * _UNITS[m.group(2)]) if m else None
    rows = info["operations"]
    tpu = sum(r["count"] for r in rows if r["on_edgetpu"])
    if rows:
        info["total_ops"] = info["total_ops"] or sum(r["count"] for r in rows)
        info["tpu_ops"] = tpu if info["tpu_ops"] is None else info["tpu_ops"]
        info["cpu_ops"] = info["total_ops"] - tpu if info["cpu_ops"] is None else info["cpu_ops"]
    elif info["total_ops"] is not None and info["tpu_ops"] is None \
            and "not all operations are supported" not in text:
        info["tpu_ops"], info["cpu_ops"] = info["total_ops"], 0
    return info


def compile_edgetpu(model_path: str | Path, out_dir: str | Path,
                    timeout: float = 180) -> CompileResult:
    """Runs ``edgetpu_compiler -s -o OUT_DIR MODEL``; without the compiler, returns
    ``available=False`` and an install hint. The compiler writes into a temporary folder in
    ``out_dir``, then its model and log are renamed into ``out_dir``, so a failed or
    interrupted compile leaves no partial file.

    Args:
        model_path: a full-integer .tflite model.
        out_dir: where ``<name>_edgetpu.tflite`` and ``<name>_edgetpu.log`` go.
        timeout: seconds before the compiler is stopped.

    Raises:
        EdgekitError: missing model, or the compiler failed or timed out.
    """
    exe = shutil.which("edgetpu_compiler")
    if exe is None:
        return CompileResult(False, f"{INSTALL_HINT} [this machine: {platform.system()} "
                             f"{platform.machine()}]")
    model_path, out_dir = Path(model_path), Path(out_dir)
    if not model_path.is_file():
        raise EdgekitError(f"model not found: {model_path}")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".edgetpu-", dir=out_dir))
    cmd = (exe, "-s", "-o", str(work), str(model_path))
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgekitError(f"edgetpu_compiler did not finish {model_path.name} in "
                               f"{timeout:g} s") from None
        log = (proc.stdout + proc.stderr).replace(str(work), str(out_dir))
        made = sorted(work.glob("*_edgetpu.tflite"))
        if proc.returncode != 0 or not made:
            lines = [ln.strip() for ln in log.splitlines() if ln.strip()] or ["no output"]
            why = next((ln for ln in lines if re.search(r"fail|error", ln, re.I)), lines[-1])
            raise EdgekitError(f"edgetpu_compiler failed on {model_path.name} "
                               f"(exit {proc.returncode}): {why}")
        for f in sorted(work.iterdir(), key=lambda f: f.suffix != ".log"):  # model last
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = parse_compiler_log(log)
    output = out_dir / made[0].name
    log_path = output.with_suffix(".log")
    info["output_model"] = str(output)
    message = (f"compiled {output.name} with edgetpu_compiler {info['compiler_version']}: "
               f"{info['tpu_ops']} op(s) on the Edge TPU, {info['cpu_ops'] or 0} on the CPU")
    return CompileResult(True, message, output, log_path if log_path.is_file() else None, log,
                         info, cmd)


__all__ = ["CompileResult", "Finding", "LintReport", "OpPlacement", "SUPPORTED_OPS",
           "compile_edgetpu", "format_report", "lint_model", "lint_summary", "main_lint",
           "parse_compiler_log"]
