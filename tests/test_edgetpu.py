"""Edge TPU pre-compile linter and edgetpu_compiler wrapper: Coral's models, tiny TF models,
the ``convert lint`` CLI body, and the compiler log parser on real compiler output."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from convert.edgetpu import (
    FIX_BATCH,
    FIX_INT8,
    compile_edgetpu,
    lint_model,
    lint_summary,
    main_lint,
    parse_compiler_log,
)
from convert.graph import read_graph
from edge_runtime.errors import EdgekitError

# Verbatim `edgetpu_compiler -sa` output (compiler 16, some ops on the CPU), from
# github.com/jveitchmichaelis/edgetpu-yolo, export.md at commit
# 7d83969181740275e8ae06b568a6a768d019f2d8.
LOG_V16 = """\
edgetpu_compiler -sa yolov5s-int8-224.tflite
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 3173 ms.

Input model: yolov5s-int8-224.tflite
Input size: 7.37MiB
Output model: yolov5s-int8-224_edgetpu.tflite
Output size: 8.34MiB
On-chip memory used for caching model parameters: 6.08MiB
On-chip memory remaining for caching model parameters: 0.00B
Off-chip memory used for streaming uncached model parameters: 1.70MiB
Number of Edge TPU subgraphs: 2
Total number of operations: 294
Operation log: yolov5s-int8-224_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 289
Number of operations that will run on CPU: 5

Operator                       Count      Status

RESIZE_NEAREST_NEIGHBOR        2          Mapped to Edge TPU
CONCATENATION                  1          Operation is otherwise supported, but not mapped due to some unspecified limitation
CONCATENATION                  17         Mapped to Edge TPU
STRIDED_SLICE                  13         Mapped to Edge TPU
TRANSPOSE                      1          Operation is otherwise supported, but not mapped due to some unspecified limitation
TRANSPOSE                      2          Mapped to Edge TPU
MAX_POOL_2D                    3          Mapped to Edge TPU
LOGISTIC                       62         Mapped to Edge TPU
QUANTIZE                       2          Operation is otherwise supported, but not mapped due to some unspecified limitation
QUANTIZE                       24         Mapped to Edge TPU
SUB                            3          Mapped to Edge TPU
PAD                            6          Mapped to Edge TPU
RESHAPE                        1          Operation is otherwise supported, but not mapped due to some unspecified limitation
RESHAPE                        5          Mapped to Edge TPU
ADD                            10         Mapped to Edge TPU
MUL                            80         Mapped to Edge TPU
CONV_2D                        62         Mapped to Edge TPU
Compilation child process completed within timeout period.
Compilation succeeded!
"""  # noqa: E501

# Verbatim `edgetpu_compiler -s -o DIR MODEL` output (compiler 15, stopped at LEAKY_RELU), from
# github.com/tetutaro/yolo_various_framework, weights/README.md at commit
# 7a90ba341d9d4d03fa94cc90cf87d7108b03d38f (its weights/compile_edgetpu.sh runs `-s ... -o`).
LOG_V15 = """\
> ./compile_edgetpu.sh yolo/yolov3-tiny_int8.tflite
Edge TPU Compiler version 15.0.340273435

Model compiled successfully in 577 ms.

Input model: /home/yolo/yolov3-tiny_int8.tflite
Input size: 8.58MiB
Output model: /home/yolo/yolov3-tiny_int8_edgetpu.tflite
Output size: 8.70MiB
On-chip memory used for caching model parameters: 3.00KiB
On-chip memory remaining for caching model parameters: 7.67MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 36
Operation log: /home/yolo/yolov3-tiny_int8_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 2
Number of operations that will run on CPU: 34

Operator                       Count      Status

MAX_POOL_2D                    6          More than one subgraph is not supported
QUANTIZE                       2          Operation is otherwise supported, but not mapped due to some unspecified limitation
QUANTIZE                       1          Mapped to Edge TPU
QUANTIZE                       1          More than one subgraph is not supported
CONV_2D                        1          Mapped to Edge TPU
CONV_2D                        12         More than one subgraph is not supported
RESIZE_NEAREST_NEIGHBOR        1          Operation version not supported
LEAKY_RELU                     11         Operation not supported
CONCATENATION                  1          More than one subgraph is not supported
"""  # noqa: E501

# Verbatim operation logs (*_edgetpu.log) of two models, the second fully mapped, from
# github.com/system-software-lab/nrf20, convert/quantize/README.md at commit
# 35b0d9f90d2eeae2cfc6f4edfd63e011613dd935.
OPERATION_LOGS = """\
Edge TPU Compiler version 15.0.340273435
Input: mnist4.tflite
Output: mnist4_edgetpu.tflite

Operator                       Count      Status

RESHAPE                        1          Mapped to Edge TPU
CONV_2D                        2          Mapped to Edge TPU
SOFTMAX                        1          Mapped to Edge TPU
QUANTIZE                       1          Operation is otherwise supported, but not mapped due to some unspecified limitation
DEQUANTIZE                     1          Operation is working on an unsupported data type
MAX_POOL_2D                    2          Mapped to Edge TPU
FULLY_CONNECTED                2          Mapped to Edge TPU

Edge TPU Compiler version 15.0.340273435
Input: mnist7.tflite
Output: mnist7_edgetpu.tflite

Operator                       Count      Status

SOFTMAX                        1          Mapped to Edge TPU
FULLY_CONNECTED                2          Mapped to Edge TPU
RESHAPE                        1          Mapped to Edge TPU
CONV_2D                        2          Mapped to Edge TPU
MAX_POOL_2D                    2          Mapped to Edge TPU
"""  # noqa: E501


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny Keras conv nets converted with TFLiteConverter (a few seconds in all)."""
    tf = pytest.importorskip("tensorflow")
    out = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)

    def net(batch: int | None = 1, leaky: bool = False):
        inp = tf.keras.Input((8, 8, 3), batch_size=batch)
        x = tf.keras.layers.Conv2D(4, 3)(inp)
        x = tf.keras.layers.LeakyReLU()(x) if leaky else tf.keras.layers.ReLU()(x)
        x = tf.keras.layers.GlobalAveragePooling2D()(x)
        return tf.keras.Model(inp, tf.keras.layers.Dense(2, activation="softmax")(x))

    def convert(model, int8: bool = True, io=tf.uint8) -> bytes:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if int8:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: (
                [rng.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)] for _ in range(8))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if io is not None:
                conv.inference_input_type = conv.inference_output_type = io
        return conv.convert()

    models = {"float": convert(net(), int8=False), "int8": convert(net()),
              "dynamic": convert(net(batch=None)), "float_io": convert(net(), io=None),
              "leaky": convert(net(leaky=True))}
    paths = {}
    for name, data in models.items():
        paths[name] = out / f"{name}.tflite"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("name", ["mobilenet_v2_1.0_224_quant.tflite",
                                  "tf2_mobilenet_v2_1.0_224_ptq.tflite"])
def test_corals_quantized_models_map_fully(coral, name, capsys):
    report = lint_model(coral / name)
    assert report.ok and not report.compiled
    assert report.tpu_ops == report.total_ops > 60 and report.cpu_ops == 0
    assert report.first_cpu_op is None and report.fix is None
    assert not [f for f in report.findings if f.severity == "error"]
    assert main_lint([str(coral / name)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS")


def test_compiled_model_is_recognised(coral, capsys):
    path = coral / "mobilenet_v1_1.0_224_quant_embedding_extractor_edgetpu.tflite"
    report = lint_model(path)
    assert report.compiled and report.ok
    assert [f.code for f in report.findings] == ["compiled"]
    assert report.ops[0].op == "edgetpu-custom-op" and report.ops[0].device == "edgetpu"
    assert main_lint([str(path)]) == 0
    assert "already compiled" in capsys.readouterr().out


def test_int8_model_maps_fully(tiny):
    report = lint_model(tiny["int8"])
    assert report.ok and report.tpu_ops == report.total_ops and report.cpu_ops == 0
    assert [p.op for p in report.ops][:2] == ["QUANTIZE", "CONV_2D"]
    assert all(p.device == "edgetpu" for p in report.ops)


def test_float_model_stops_at_the_first_op(tiny, capsys):
    report = lint_model(tiny["float"])
    assert not report.ok
    assert (report.first_cpu_op.index, report.first_cpu_op.op) == (0, "CONV_2D")
    assert report.tpu_ops == 0 and report.cpu_ops == report.total_ops
    assert report.fix == FIX_INT8 and "--variants int8" in report.fix
    assert {f.code for f in report.findings if f.severity == "error"} == {"float"}
    assert all(p.reason == "after op 0" for p in report.ops[1:])
    # One finding names every float tensor of the op, not "(and 3 more)".
    (error,) = [f for f in report.findings if f.severity == "error"]
    op = read_graph(tiny["float"], load=False).ops[0]
    names = [t.name for t in op.inputs + op.outputs if t is not None]
    assert len(names) > 1 and all(f"'{n}'" in error.message for n in names), error.message
    assert main_lint([str(tiny["float"])]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("FAIL: op 0 CONV_2D") and "int8" in out[-1]


def test_dynamic_batch_is_reported(tiny):
    report = lint_model(tiny["dynamic"])
    assert not report.ok and report.inputs[0].endswith("[-1, 8, 8, 3]")
    errors = [f for f in report.findings if f.severity == "error"]
    assert errors[0].code == "dynamic_batch" and "dynamic batch size" in errors[0].message
    assert report.fix == FIX_BATCH and report.first_cpu_op.index == 0


def test_float_io_is_a_cpu_boundary_not_a_failure(tiny):
    report = lint_model(tiny["float_io"])
    assert report.ok and report.first_cpu_op is None and report.cpu_ops == 2
    boundary = [f for f in report.findings if f.code == "boundary"]
    assert [f.op for f in boundary] == ["QUANTIZE", "DEQUANTIZE"]
    assert all(f.severity == "warning" for f in boundary)
    assert (report.ops[0].device, report.ops[-1].device) == ("cpu", "cpu")
    assert "boundary" in report.summary


def test_unsupported_op_forces_the_rest_onto_the_cpu(tiny):
    report = lint_model(tiny["leaky"])
    first = report.first_cpu_op
    assert not report.ok and first.op == "LEAKY_RELU"
    assert report.tpu_ops == first.index == 2
    assert [p.device for p in report.ops[first.index:]] == ["cpu"] * (report.total_ops - 2)
    assert [f.code for f in report.findings if f.severity == "error"] == ["unsupported_op"]
    assert "LEAKY_RELU" in report.fix


def test_json_output_and_summary_are_serialisable(tiny, capsys):
    assert main_lint([str(tiny["leaky"]), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["first_cpu_op"]["op"] == "LEAKY_RELU" and len(data["ops"]) == data["total_ops"]
    short = json.loads(json.dumps(lint_summary(lint_model(tiny["leaky"]))))
    assert short["ok"] is False and short["errors"] and "ops" not in short


@pytest.mark.parametrize("content", [b"hello, not a model\n", b"\x1c\0\0\0TFL3" + b"\0" * 8])
def test_bad_input_is_one_error_line(tmp_path, capsys, content):
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    for argv in ([str(path)], [str(tmp_path / "missing.tflite")]):
        assert main_lint(argv) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert len(captured.err.strip().splitlines()) == 1
        assert captured.err.startswith("error: ") and "Traceback" not in captured.err
    with pytest.raises(EdgekitError):
        lint_model(path)


def test_parse_compiler_16_log():
    info = parse_compiler_log(LOG_V16)
    assert info["compiler_version"] == "16.0.384591198" and info["success"]
    assert info["compile_ms"] == 3173
    assert (info["tpu_ops"], info["cpu_ops"], info["total_ops"]) == (289, 5, 294)
    assert info["edgetpu_subgraphs"] == 2
    assert info["on_chip_memory_used"] == "6.08MiB"
    assert info["on_chip_memory_used_bytes"] == round(6.08 * 2 ** 20)
    assert info["on_chip_memory_remaining_bytes"] == 0
    assert info["off_chip_memory_used_bytes"] == round(1.70 * 2 ** 20)
    assert info["output_model"] == "yolov5s-int8-224_edgetpu.tflite"
    rows = info["operations"]
    assert len(rows) == 17 and sum(r["count"] for r in rows) == 294
    assert sum(r["count"] for r in rows if r["on_edgetpu"]) == 289
    assert rows[1] == {"op": "CONCATENATION", "count": 1, "on_edgetpu": False, "status":
                       "Operation is otherwise supported, but not mapped due to some "
                       "unspecified limitation"}


def test_parse_compiler_15_log():
    info = parse_compiler_log(LOG_V15)
    assert info["compiler_version"] == "15.0.340273435"
    assert (info["tpu_ops"], info["cpu_ops"], info["total_ops"]) == (2, 34, 36)
    assert info["on_chip_memory_used_bytes"] == 3 * 1024
    assert info["operation_log"] == "/home/yolo/yolov3-tiny_int8_edgetpu.log"
    leaky = [r for r in info["operations"] if r["op"] == "LEAKY_RELU"]
    assert leaky == [{"op": "LEAKY_RELU", "count": 11, "status": "Operation not supported",
                      "on_edgetpu": False}]


def test_parse_operation_logs():
    first = parse_compiler_log(OPERATION_LOGS)  # only the first model of the two
    assert first["input_model"] == "mnist4.tflite"
    assert (first["tpu_ops"], first["cpu_ops"], first["total_ops"]) == (8, 2, 10)
    second = parse_compiler_log(OPERATION_LOGS[OPERATION_LOGS.index("Edge TPU Compiler", 1):])
    assert second["output_model"] == "mnist7_edgetpu.tflite"
    assert (second["tpu_ops"], second["cpu_ops"]) == (8, 0)
    assert parse_compiler_log("")["tpu_ops"] is None


def test_compile_without_compiler_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = compile_edgetpu(tmp_path / "model_int8.tflite", tmp_path / "out")
    assert not result.available and result.output_path is None
    assert "\n" not in result.message
    assert "apt install edgetpu-compiler" in result.message and "x86-64" in result.message
    assert result.to_dict()["cpu_ops"] == 0 and not (tmp_path / "out").exists()


def _fake_compiler(folder: Path, body: str) -> None:
    script = folder / "edgetpu_compiler"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.fixture()
def fake_path(tmp_path, monkeypatch) -> Path:
    """A folder put first on PATH for a fake ``edgetpu_compiler``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    return folder


def test_compile_with_a_fake_compiler(tmp_path, fake_path, tiny):
    (fake_path / "sample.log").write_text(LOG_V16)
    _fake_compiler(fake_path, """\
out=.
while [ $# -gt 1 ]; do case "$1" in -o) out="$2"; shift 2;; *) shift;; esac; done
stem=$(basename "$1" .tflite)
cp "$1" "$out/${stem}_edgetpu.tflite"
echo "operation log" > "$out/${stem}_edgetpu.log"
cat "$(dirname "$0")/sample.log"
""")
    out = tmp_path / "export"
    result = compile_edgetpu(tiny["int8"], out)
    assert result.available and result.output_path == out / "int8_edgetpu.tflite"
    assert result.output_path.read_bytes() == tiny["int8"].read_bytes()
    assert result.log_path == out / "int8_edgetpu.log" and result.log_path.is_file()
    assert sorted(p.name for p in out.iterdir()) == ["int8_edgetpu.log", "int8_edgetpu.tflite"]
    assert result.command[1:3] == ("-s", "-o") and result.command[4] == str(tiny["int8"])
    assert Path(result.command[3]).parent == out  # a temporary folder, renamed from
    assert result.info["compiler_version"] == "16.0.384591198"
    data = json.loads(json.dumps(result.to_dict()))
    assert (data["tpu_ops"], data["cpu_ops"]) == (289, 5)
    assert data["output_model"] == str(out / "int8_edgetpu.tflite")
    assert data["summary"].startswith("edgetpu_compiler -sa")
    assert "289 op(s) on the Edge TPU, 5 on the CPU" in result.message


def test_compiler_failure_and_timeout_leave_nothing(tmp_path, fake_path, tiny):
    _fake_compiler(fake_path, 'echo "Edge TPU Compiler version 16.0.384591198"\n'
                   'echo "Compilation failed: Model failed in Tflite interpreter."\nexit 1\n')
    out = tmp_path / "export"
    with pytest.raises(EdgekitError, match="exit 1.*Compilation failed"):
        compile_edgetpu(tiny["int8"], out)
    assert list(out.iterdir()) == []
    _fake_compiler(fake_path, "exec sleep 5\n")
    with pytest.raises(EdgekitError, match="did not finish"):
        compile_edgetpu(tiny["int8"], out, timeout=0.5)
    assert list(out.iterdir()) == []
    with pytest.raises(EdgekitError, match="model not found"):
        compile_edgetpu(tmp_path / "missing.tflite", out)
