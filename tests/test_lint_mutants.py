"""``convert lint`` on malformed models: every mutant of Coral's MobileNetV2 (byte flips,
truncations, out-of-range indices, bad dimensions, wrong file types) gets one clear error
line and exit 1, or loads in the TFLite interpreter when it passes; never a traceback."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from convert.lint import lint_model, main_lint
from edge_runtime import loadcheck, tflite
from edge_runtime.errors import EdgekitError
from tests.conftest import CORAL, run_cli

SOURCE = CORAL / "mobilenet_v2_1.0_224_quant.tflite"
pytestmark = pytest.mark.skipif(not SOURCE.is_file(), reason=f"Coral reference data not found "
                                f"at {CORAL} (only present in the development checkout)")


def _writable(m) -> None:
    """The object API holds numpy views that are read-only: make the lists editable."""
    for g in m.subgraphs:
        g.inputs, g.outputs = list(g.inputs), list(g.outputs)
        for t in g.tensors:
            t.shape = None if t.shape is None else list(t.shape)
        for op in g.operators:
            op.inputs, op.outputs = list(op.inputs), list(op.outputs)


def _edit(change: Callable) -> Callable[[bytes], bytes]:
    def make(data: bytes) -> bytes:
        import flatbuffers

        m = tflite.schema().ModelT.InitFromPackedBuf(data, 0)
        _writable(m)
        change(m, m.subgraphs[0])
        b = flatbuffers.Builder(len(data) + 1024)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())
    return make


def _const(g):
    return next(t for t in g.tensors if t.shape and len(t.shape) == 4 and t.buffer > 0)


# mutant name -> (maker, what the one error line must say)
STRUCTURAL = {
    "subgraph_input_99999": (_edit(lambda m, g: g.inputs.__setitem__(0, 99999)),
                             "subgraph 0 input 0 is tensor 99999"),
    "subgraph_output_negative": (_edit(lambda m, g: g.outputs.__setitem__(0, -5)),
                                 "subgraph 0 output 0 is tensor -5"),
    "op_input_out_of_range": (_edit(lambda m, g: g.operators[2].inputs.__setitem__(0, 77777)),
                              "op 2 input 0 is tensor 77777"),
    "op_output_out_of_range": (_edit(lambda m, g: g.operators[2].outputs.__setitem__(0, 7777)),
                               "op 2 output 0 is tensor 7777"),
    "opcode_index_out_of_range": (_edit(lambda m, g: setattr(g.operators[3], "opcodeIndex",
                                                             500)), "operator code 500"),
    "buffer_index_out_of_range": (_edit(lambda m, g: setattr(g.tensors[3], "buffer", 10 ** 6)),
                                  "uses buffer 1000000"),
    "metadata_buffer_out_of_range": (_edit(lambda m, g: setattr(m.metadata[0], "buffer",
                                                                10 ** 6) if m.metadata else
                                           setattr(g.tensors[0], "buffer", -1)), "buffer"),
    "negative_dimension": (_edit(lambda m, g: g.tensors[g.inputs[0]].shape.__setitem__(1, -3)),
                           "negative dimension [1, -3, 224, 3]"),
    "dimension_2_pow_30": (_edit(lambda m, g: g.tensors[g.inputs[0]].shape.__setitem__(
        1, 2 ** 30)), "needs more than 2 GiB"),
    "inner_dimension_2_pow_30": (_edit(lambda m, g: g.tensors[5].shape.__setitem__(-1, 2 ** 30)),
                                 "needs more than 2 GiB"),
    "unknown_tensor_type": (_edit(lambda m, g: setattr(g.tensors[5], "type", 99)),
                            "unknown type 99"),
    "unknown_builtin_op": (_edit(lambda m, g: (setattr(m.operatorCodes[0], "builtinCode", 9999),
                                               setattr(m.operatorCodes[0],
                                                       "deprecatedBuiltinCode", 127))),
                           "unknown builtin operator 9999"),
    "no_subgraph": (_edit(lambda m, g: setattr(m, "subgraphs", [])), "no subgraph"),
    # loads, then fails on every invoke ("Tensor data is null")
    "no_operators": (_edit(lambda m, g: setattr(g, "operators", [])),
                     "subgraph 0 output 0 (tensor 173) is computed by no operator"),
    "truncated_to_half": (lambda d: d[:len(d) // 2], "damaged or truncated"),
    "truncated_to_100_bytes": (lambda d: d[:100], "damaged or truncated"),
    "truncated_to_6_bytes": (lambda d: d[:6], "no TFL3 identifier"),
    "jpeg_renamed": (lambda d: b"\xff\xd8\xff\xe0\0\x10JFIF\0" + d[:64], "no TFL3 identifier"),
    "empty_file": (lambda d: b"", "no TFL3 identifier"),
}
# Structurally valid, but the interpreter refuses it: only the load check can tell.
REFUSED = {
    # a weight tensor claims twice the data its buffer holds
    "weights_shape_doubled": _edit(lambda m, g: _const(g).shape.__setitem__(
        0, 2 * _const(g).shape[0])),
}


def _flips(data: bytes, where: str, seed: int) -> bytes:
    rng, b = random.Random(seed), bytearray(data)
    lo, hi = {"header": (8, 256), "middle": (len(b) // 2 - 4096, len(b) // 2),
              "tail": (len(b) - 4096, len(b))}[where]
    for _ in range(8):
        i = rng.randrange(lo, hi)
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _one_error(capsys, path: Path) -> str:
    assert main_lint([str(path)]) == 1
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert out.out == "" and len(lines) == 1 and lines[0].startswith("error: "), out
    assert "Traceback" not in out.err
    return lines[0]


@pytest.fixture(scope="module")
def source() -> bytes:
    return SOURCE.read_bytes()


@pytest.mark.parametrize("name", sorted(STRUCTURAL))
def test_structural_mutant_is_one_clear_error(name, source, tmp_path, capsys):
    make, expected = STRUCTURAL[name]
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(make(source))
    line = _one_error(capsys, path)
    assert expected in line and str(path) in line


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_model_the_interpreter_refuses_never_passes(name, source, tmp_path, capsys):
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(REFUSED[name](source))
    tflite.read_model(path)  # structurally fine: the interpreter is what says no
    line = _one_error(capsys, path)
    assert "the TFLite interpreter cannot load" in line


def _loads(path: Path) -> bool:
    code = ("import sys; from ai_edge_litert.interpreter import Interpreter as I; "
            "i = I(model_path=sys.argv[1]); i.allocate_tensors()")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          timeout=120).returncode == 0


@pytest.mark.parametrize("where", ["header", "middle", "tail"])
def test_byte_flips_pass_only_when_the_model_loads(where, source, tmp_path, capsys):
    for seed in range(2):
        path = tmp_path / f"flip_{where}_{seed}.tflite"
        path.write_bytes(_flips(source, where, seed))
        status = main_lint([str(path)])
        out = capsys.readouterr()
        assert "Traceback" not in out.err + out.out
        if status == 0:
            assert out.out.strip().splitlines()[-1].startswith("PASS") and _loads(path)
        else:
            assert status == 1 and len(out.err.strip().splitlines()) == 1
            assert out.err.startswith("error: ")


def test_the_cli_prints_one_line_for_a_bad_index(source, tmp_path):
    path = tmp_path / "bad.tflite"
    path.write_bytes(STRUCTURAL["subgraph_input_99999"][0](source))
    r = run_cli("convert", "lint", str(path))
    assert r.returncode == 1 and r.stdout == ""
    assert "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [
        f"error: invalid TFLite model: subgraph 0 input 0 is tensor 99999, expected 0..173 "
        f"[{path}]"]


def test_a_crash_in_the_interpreter_is_one_error(monkeypatch):
    monkeypatch.setattr(loadcheck, "_CHILD", "import os, signal; os.kill(os.getpid(), "
                        "signal.SIGSEGV)")
    with pytest.raises(EdgekitError, match=r"crashed loading .*\(SIGSEGV\)"):
        lint_model(SOURCE)
    monkeypatch.setattr(loadcheck, "_CHILD", "import time; time.sleep(30)")
    with pytest.raises(EdgekitError, match="did not load .* within 0.5 s"):
        loadcheck.load_check(SOURCE, timeout=0.5)
