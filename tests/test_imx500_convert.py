"""The ``imx500`` convert variant: bad input (fast, no TensorFlow) and the real conversion in
the pinned environment (slow; ``make test-imx500``, and CI's ``make test-slow``). Without
``.venv-imx500`` the two tests that need it skip, except where ``EDGEKIT_IMX500_REQUIRED``
is set (CI, ``make test-imx500``): there they fail with convert's own message."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from convert import imx500
from edge_runtime import EdgekitError
from tests.conftest import ROOT, error_lines, run_cli

ENV = Path(os.environ.get(imx500.ENV_VAR) or ROOT / ".venv-imx500")
needs_env = pytest.mark.skipif(
    not (ENV / ".key").is_file() and not os.environ.get("EDGEKIT_IMX500_REQUIRED"),
    reason="no .venv-imx500: make imx500-env")


def fake_env(tmp_path: Path, key: str | None = None, result: dict | None = None) -> Path:
    """An environment whose python writes ``result`` as the worker's result.json."""
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    py = env / "bin" / "python"
    if result is None:  # dies before writing result.json, as a broken environment does
        body = ("import sys\nsys.stderr.write('ModuleNotFoundError: No module named "
                "tensorflow\\n')\nsys.exit(1)\n")
    else:
        body = (f"import json, sys, pathlib\npathlib.Path(sys.argv[2], 'result.json')"
                f".write_text(json.dumps({result!r}))\n")
    py.write_text(f"#!{sys.executable}\n{body}")
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    real = __import__("hashlib").sha256(imx500.REQUIREMENTS.read_bytes()).hexdigest()[:16]
    (env / ".key").write_text(key if key is not None else real)
    return env


def test_a_missing_or_stale_environment_names_make_imx500_env(tmp_path, monkeypatch):
    monkeypatch.setenv(imx500.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(EdgekitError, match=r"environment .*nowhere is missing: run `make "
                       r"imx500-env`"):
        imx500.env_python()
    monkeypatch.setenv(imx500.ENV_VAR, str(fake_env(tmp_path, key="0123456789abcdef")))
    with pytest.raises(EdgekitError, match=r"is not the pinned one \(key 0123456789abcdef, "
                       r"expected [0-9a-f]{16}\): run `make imx500-env`"):
        imx500.env_python()


def test_java_missing_names_the_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EdgekitError, match="java not found: install Java 17: apt-get install "
                       "openjdk-17-jre-headless"):
        imx500.require_java()


def test_worker_failures_come_back_as_one_line_with_the_fix(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    broken = fake_env(tmp_path / "a") / "bin" / "python"
    with pytest.raises(EdgekitError, match=r"environment is broken \(ModuleNotFoundError: No "
                       r"module named tensorflow\): run `make imx500-env`"):
        imx500.run_worker(broken, job, 10)
    full = fake_env(tmp_path / "b", result={
        "ok": False, "kind": "memory",
        "error": "the network needs 9.5MB of the IMX500's 8.00MB (imxconv-tf's memory report)"})
    with pytest.raises(EdgekitError, match=r"needs 9.5MB of the IMX500's 8.00MB .*: the IMX500 "
                       r"holds at most 8 MB .* use a smaller --alpha or --img-size"):
        imx500.run_worker(full / "bin" / "python", job, 10)


class _Layer(SimpleNamespace):
    def get_weights(self):
        return self.weights


class _Model(SimpleNamespace):
    def get_layer(self, name):
        return next(x for x in self.layers if x.name == name)

    def count_params(self):
        return self.params


def _model(base="mobilenetv2_0.35_96", top=("to_minus1_1", "dropout", "classifier"),
           params=415_332):
    inner = _Model(name=base, layers=[_Layer(name="Conv1", weights=[np.ones((3, 3, 3, 16))])])
    layers = [_Layer(name=n, weights=[], rate=0.2) for n in top]
    return _Model(name="m", layers=[layers[0], inner, *layers[1:]], params=params)


def test_only_edgekit_s_mobilenetv2_is_rebuilt_and_a_huge_one_is_refused():
    arch = imx500.architecture(_model(), ["a", "b"])
    assert arch == {"alpha": 0.35, "img_size": 96, "classes": 2, "dropout": 0.2,
                    "params": 415_332}
    assert list(imx500.portable_weights(_model())) == ["Conv1/0"]
    with pytest.raises(EdgekitError, match="'m' is not edgekit's MobileNetV2 \\+ classifier: "
                       "the imx500 variant rebuilds edgekit's MobileNetV2"):
        imx500.architecture(_model(base="efficientnetb0"), ["a", "b"])
    with pytest.raises(EdgekitError, match="a SavedModel cannot be rebuilt"):
        imx500.architecture(None, ["a"])
    with pytest.raises(EdgekitError, match=r"9.0 M parameters .* do not fit the IMX500"):
        imx500.check_size(imx500.architecture(_model(params=9_000_000), ["a", "b"]))


def test_a_failure_is_reported_in_the_row_never_raised(tmp_path, monkeypatch):
    monkeypatch.setenv(imx500.ENV_VAR, str(tmp_path / "nowhere"))
    row, failed = imx500.imx500_stage(SimpleNamespace(), SimpleNamespace(), None, tmp_path, {})
    assert row["status"].startswith("failed: the IMX500 converter environment")
    assert failed.startswith("IMX500 conversion failed:") and "make imx500-env" in failed


def test_max_drop_holds_the_imx500_row_to_it_as_int8():
    assert imx500.promise({"top1_drop_points": 0.5}, 2.0) is None
    assert imx500.promise({"status": "failed: x"}, 2.0) is None  # its own failure says it
    assert imx500.promise({"top1_drop_points": 3.25}, None) is None
    assert imx500.promise({"top1_drop_points": 3.25}, 2.0) == \
        "imx500 top-1 is 3.25 points below float32 (limit 2.0)"


@pytest.mark.slow
def test_missing_environment_keeps_the_other_variants(trained_run, tmp_path):
    out = tmp_path / "export"
    r = run_cli("convert", str(trained_run), "--variants", "float32,imx500", "--out", str(out),
                env={imx500.ENV_VAR: str(tmp_path / "nowhere")})
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert error_lines(r.stderr)[-1].startswith("error: IMX500 conversion failed: the IMX500 "
                                                "converter environment")
    assert r.stderr.count("the IMX500 converter environment") == 1  # said once, last
    assert (out / "model_float32.tflite").is_file()
    report = json.loads((out / "convert_report.json").read_text())
    assert report["variants"]["imx500"]["status"].startswith("failed:")


@pytest.mark.slow
@needs_env
def test_real_conversion_matches_float32(trained_run, tmp_path):
    imx500.env_python()  # missing or stale: its one line, not a convert failure to decode
    out = tmp_path / "export"
    r = run_cli("convert", str(trained_run), "--variants", "float32,imx500", "--out", str(out),
                "--calib", "100", timeout=2400)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "convert_report.json").read_text())
    row = report["variants"]["imx500"]
    assert row["status"] == "converted"
    assert row["rebuild_max_abs_diff"] <= imx500.TOLERANCE
    assert row["memory"]["Fit In Chip"] is True
    assert row["calibration_images"] == 100
    assert row["top1_drop_points"] <= 1.0 + 1e-9, row  # the goal: within 1 point
    assert row["top1"] >= 0.9
    folder = out / "imx500"
    assert (folder / "packerOut.zip").read_bytes()[:2] == b"PK"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["labels"] == (folder / "labels.txt").read_text().split()
    assert manifest["input_size"] == {"height": 96, "width": 96}
    assert list(manifest["drift_baseline"]["models"]) == ["network.rpk"]
    # the input component too: the Pi prepares each frame's model input for it
    assert manifest["drift_baseline"]["models"]["network.rpk"]["input"]["n"] > 0
    golden = json.loads((folder / "golden.json").read_text())
    assert golden["cases"] and all(c["top"][0]["label"] in manifest["labels"]
                                   for c in golden["cases"])
    assert "| imx500 |" in (out / "convert_report.md").read_text()


def test_deploy_bundles_the_package_and_points_the_profile_at_network_rpk(tmp_path):
    import zipfile

    import yaml

    from deploy.core import make_bundle
    from edge_runtime.manifest import Manifest

    model_dir = tmp_path / "export" / "imx500"
    model_dir.mkdir(parents=True)
    with zipfile.ZipFile(model_dir / "packerOut.zip", "w") as z:
        z.writestr("network.fpk", b"\0" * 64)
    Manifest(labels=["a", "b"], input_size=(96, 96)).save(model_dir / "manifest.json")
    (model_dir / "labels.txt").write_text("a\nb\n")
    wheel = tmp_path / "edgekit_classify-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("edge_runtime/__init__.py", "")
    env = make_bundle(tmp_path / "bundle", model_dir / "packerOut.zip",
                      ROOT / "device_configs" / "raspberry-pi-ai-camera.yaml", wheel)
    model = tmp_path / "bundle" / "release" / "model"
    assert sorted(p.name for p in model.iterdir()) == ["labels.txt", "manifest.json",
                                                       "packerOut.zip"]
    assert env["MODEL_NAME"] == "packerOut.zip"  # remote.sh runs imx500-package on it
    assert env["SYSTEM_SITE"] == "1"  # the venv must see apt's python3-picamera2
    profile = yaml.safe_load((tmp_path / "bundle" / "release" / "profile.yaml").read_text())
    assert profile["model"]["path"].endswith("/model/network.rpk")
    assert profile["camera"]["source"] == "imx500"
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(EdgekitError, match="not a TFLite model"):
        make_bundle(tmp_path / "b2", tmp_path / "text.zip",
                    ROOT / "device_configs" / "raspberry-pi-ai-camera.yaml", wheel)


def _converter(tmp_path: Path, script: str):
    """A stand-in for imxconv-tf started as the worker starts it (own session, log file)."""
    import subprocess

    out = tmp_path / "imxconv"
    out.mkdir()
    with open(tmp_path / "imxconv.log", "wb") as log:
        proc = subprocess.Popen(["sh", "-c", script], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, out


def _gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:  # a zombie nobody reaps is gone too
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_a_converter_over_its_time_is_ended_with_its_java_children(tmp_path):
    import time

    from convert import imx500_worker as worker
    from tests.conftest import wait_for

    pid_file = tmp_path / "child.pid"
    proc, out = _converter(tmp_path, f"sleep 60 & echo $! > {pid_file}; wait")
    wait_for(pid_file.is_file)
    with pytest.raises(worker.JobError, match=r"^imxconv-tf ran over 1 s$"):
        worker.finish_converter(proc, time.time(), out, 1.0)
    assert proc.returncode is not None
    assert wait_for(lambda: _gone(int(pid_file.read_text())), timeout=10)


def test_converter_failures_are_one_line_of_the_right_kind(tmp_path):
    import time

    from convert import imx500_worker as worker

    (tmp_path / "a").mkdir()
    proc, out = _converter(tmp_path / "a",
                           "echo 'INFO : start'; echo 'ERROR : layer x not supported'; exit 3")
    with pytest.raises(worker.JobError, match=r"^imxconv-tf exit 3: ERROR : layer x not "
                       r"supported$") as e:
        worker.finish_converter(proc, time.time(), out, 30)
    assert e.value.kind == "converter"
    (tmp_path / "b").mkdir()
    proc, out = _converter(tmp_path / "b", "exit 0")
    proc.wait()
    (out / "m_MemoryReport.json").write_text(json.dumps({"Memory Report": {
        "Memory Usage": "9.10MB", "Total Memory Available On Chip": "8.00MB",
        "Fit In Chip": False}}))
    with pytest.raises(worker.JobError, match=r"needs 9.10MB of the IMX500's 8.00MB") as e:
        worker.finish_converter(proc, time.time(), out, 30)
    assert e.value.kind == "memory"


_SAME_QUANTIZATION = """
import sys
import numpy as np
import tensorflow as tf
sys.path.insert(0, sys.argv[1])
import imx500_worker as w
import model_compression_toolkit as mct
from model_compression_toolkit.core.common.collectors import statistics_collector as sc
tf.keras.utils.set_random_seed(0)
m = w.build_model(tf, {"img_size": 32, "alpha": 0.35, "dropout": 0.2, "classes": 3})
w.set_scaling(m)
x = np.random.default_rng(0).uniform(0, 255, (24, 32, 32, 3)).astype(np.float32)
original = sc.StatsCollector.update_statistics
fast = w.quantize(mct, m, x, 8).predict(x, verbose=0)
assert sc.StatsCollector.update_statistics is original, "patch left in place"
tpc = mct.get_target_platform_capabilities("tensorflow", "imx500", target_platform_version="v1")
full, _ = mct.ptq.keras_post_training_quantization(
    m, lambda: ([x[i:i + 8]] for i in range(0, len(x), 8)), target_platform_capabilities=tpc)
print("MAXDIFF", float(np.abs(full.predict(x, verbose=0) - fast).max()))
"""


@pytest.mark.slow
@needs_env
def test_skipping_mct_s_unused_histogram_quantizes_the_same(tmp_path):
    import subprocess

    py = imx500.env_python()
    script = tmp_path / "same.py"
    script.write_text(_SAME_QUANTIZATION)
    r = subprocess.run([str(py), str(script), str(ROOT / "convert")],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MAXDIFF 0.0" in r.stdout.splitlines(), r.stdout[-500:]
