"""Lints a TFLite model for the Coral Edge TPU before compiling: which op the compiler would
stop at, and how to fix it. A model that does not load never passes."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import EXIT_ERROR, EXIT_OK, EdgekitError, Parser
from edge_runtime.tflite import EDGETPU_CUSTOM_OP

from .graph import Op, read_graph

FIX_INT8 = "quantize with full-integer int8 (python -m convert RUN --variants int8)"
FIX_BATCH = "fix the batch size to 1 (convert from an input signature of [1, H, W, 3])"
FIX_STATIC = "give every tensor a static shape (a fixed [1, H, W, 3] input signature)"
_QUANT = ("INT8", "UINT8")
_CONST_OK = ("INT8", "UINT8", "INT32", "INT64")  # weights; int32 bias, shape, axis, paddings


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


def _limits(op: Op) -> list[Problem]:
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


def _check_op(op: Op) -> list[Problem]:
    """Everything that stops one op mapping to the Edge TPU, one entry per kind of problem
    (its message names every tensor it applies to)."""
    found: dict[str, tuple[dict[str, None], str]] = {}

    def add(code: str, message: str, fix: str) -> None:
        found.setdefault(code, ({}, fix))[0][message] = None

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
        try:
            problems = _limits(op)
        except (AttributeError, TypeError, IndexError, ValueError):
            # The interpreter loaded it, but the tensors are not what this op takes.
            problems = [("malformed", f"{op.name} has inputs of unexpected shape or kind",
                         "re-convert the model with TensorFlow's converter")]
        for problem in problems:
            add(*problem)
    return [(code, "; ".join(messages), fix) for code, (messages, fix) in found.items()]


def _boundary(op: Op, graph_in: tuple[int, ...], graph_out: tuple[int, ...]) -> bool:
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
        EdgekitError: missing file, not a TFLite model, damaged or structurally invalid, or
            one the TFLite interpreter does not load (a model lint passes always loads).
    """
    graph = read_graph(path)
    ops, g_in, g_out = graph.ops, graph.inputs, graph.outputs
    io = (tuple(graph.tensors[i].describe() for i in g_in),
          tuple(graph.tensors[i].describe() for i in g_out))
    if graph.compiled:
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
    p = Parser(prog="python -m convert lint", description=__doc__)
    p.add_argument("model", help="a .tflite model")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = lint_model(args.model)
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - a hostile file must never print a traceback
        print(f"error: cannot lint {args.model}: {type(e).__name__}: {e}"[:500], file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return EXIT_OK if report.ok else EXIT_ERROR


__all__ = ["FIX_BATCH", "FIX_INT8", "FIX_STATIC", "SUPPORTED_OPS", "Finding", "LintReport",
           "OpPlacement", "format_report", "lint_model", "lint_summary", "main_lint"]
