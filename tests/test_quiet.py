"""Quiet by default: native and TensorFlow log noise hidden, everything else kept; the
benchmarks print a summary, not the whole report (fast, in-process, but the one convert run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edge_runtime.quiet import is_noise, quiet_native
from tests.conftest import ROOT, run_cli

XNNPACK = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
MODEL = "mobilenet_v2_1.0_224_quant.tflite"


def test_noise_is_exactly_the_known_lines():
    assert is_noise(XNNPACK)
    assert is_noise(b"fully_quantize: 0, inference_type: 6, input_inference_type: UINT8, "
                    b"output_inference_type: UINT8")
    assert is_noise(b"WARNING:tensorflow:5 out of the last 5 calls to <function Trainer."
                    b"make_predict_function.<locals>.step at 0x7f> triggered tf.function "
                    b"retracing. Tracing is expensive")
    assert not is_noise(XNNPACK + b" and something else")
    assert not is_noise(b"WARNING:tensorflow:a real warning")
    assert not is_noise(b"error: cannot load model x.tflite")


def test_quiet_native_keeps_every_other_line_in_order(capfd):
    with quiet_native():
        os.write(2, b"first\n" + XNNPACK + b"\nsecond\n")
        os.write(2, b"third")  # an unfinished last line is kept too
    os.write(2, b"\nafter\n")
    assert capfd.readouterr().err.splitlines() == ["first", "second", "third", "after"]
    with quiet_native(verbose=True):
        os.write(2, XNNPACK + b"\n")
    assert capfd.readouterr().err == XNNPACK.decode() + "\n"


def test_classify_prints_no_xnnpack_line(coral):
    # LiteRT prints the line once per process, on the first allocation: a fresh process
    # each, the bare interpreter first, to show the check below can fail.
    bare = ("import sys\nfrom edge_runtime.backend import backend\n"
            "backend().interpreter_cls(model_path=sys.argv[1]).allocate_tensors()\n")
    r = subprocess.run([sys.executable, "-c", bare, str(coral / MODEL)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert XNNPACK.decode() in r.stderr.splitlines()
    r = run_cli("edge_runtime", "classify", "--model", str(coral / MODEL), "--top-k", "1",
                str(coral / "cat.bmp"))
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[0] == "0.7773"
    assert r.stderr == ""


def test_benchmarks_print_a_summary_and_the_report_path(tmp_path, monkeypatch, capsys):
    import benchmarks.core
    from benchmarks.__main__ import main

    row = {"variant": "int8", "threads": 2, "accelerator": "cpu", "top1": 0.96875,
           "latency_ms": {"p50": 3.25}, "throughput_fps": 290.4}
    results = {"rows": [row], "warnings": ["system load was 9 on 2 core(s)"]}
    report = tmp_path / "bench" / "report.md"
    report.parent.mkdir()
    report.write_text("# edgekit benchmark\n\n| variant | threads |\n")
    monkeypatch.setattr(benchmarks.core, "benchmark", lambda *a, **k: (report, results))
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "      int8  2 thread(s)  cpu: top-1 0.9688, p50 3.250 ms, 290 fps",
        "warning: system load was 9 on 2 core(s)",
        f"wrote {report.parent} (the full report: {report})"]


@pytest.mark.slow  # converts a model twice (TensorFlow in two subprocesses)
def test_convert_is_quiet_unless_verbose(trained_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}

    def convert(*extra: str) -> list[str]:
        r = subprocess.run([sys.executable, "-m", "convert", str(trained_run), "--variants",
                            "int8", "--calib", "20", "--out", str(tmp_path / "x"), *extra],
                           cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
        assert r.returncode == 0, r.stderr
        return r.stderr.splitlines()

    quiet = convert()
    assert [ln for ln in quiet if is_noise(ln.encode()) or "oneDNN" in ln] == []
    assert any(ln.startswith("int8: converted in") for ln in quiet)
    loud = convert("--verbose")
    assert any("oneDNN custom operations" in ln for ln in loud)
    assert any(ln.startswith("fully_quantize: ") for ln in loud)
    assert json.loads((tmp_path / "x" / "convert_report.json").read_text())["variants"]
