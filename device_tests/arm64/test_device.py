"""Device tests: the installed edgekit wheel on an (emulated) aarch64 Raspberry Pi 4.

Run by ``make test-arm64`` (device_tests/arm64/run.py) inside the arm64 userland, against
the wheel installed in /opt/edgekit, never the checkout. The x86 answers they compare with
were computed on the host in the same run and written to $EDGEKIT_DEVICE_WORK (/work).
Not part of ``make test``: this folder is outside tests/, and on any machine that is not
aarch64 the whole module skips.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

if platform.machine() != "aarch64":
    pytest.skip(f"device tests run on aarch64 only (this is {platform.machine()}); "
                "use make test-arm64", allow_module_level=True)

WORK = Path(os.environ.get("EDGEKIT_DEVICE_WORK", "/work"))
REFERENCE = json.loads((WORK / "x86_reference.json").read_text())
# Scores may differ across architectures by this many output quantization steps. The
# issue expected 1-2; measured here (qemu cortex-a72 vs x86, ai-edge-litert 2.3.0) Coral's
# photos differ by up to 6 steps end to end (and by 8-10 on cat.bmp with the identical
# input tensor, also without XNNPACK), top-1 always the same. run.py's table shows each.
STEPS = int(os.environ.get("EDGEKIT_ARM64_STEPS", "8"))


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout, cwd="/tmp")


def _record(name: str, row: dict) -> None:
    with open(WORK / f"arm64_{name}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def test_runs_the_installed_wheel_on_aarch64():
    import edge_runtime

    assert platform.machine() == "aarch64"
    assert "/opt/edgekit/" in edge_runtime.__file__, edge_runtime.__file__
    from importlib.metadata import version

    assert version("edgekit-classify") == REFERENCE["edgekit_version"]
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401  -- the device extra must not bring TensorFlow


_CLASSIFIERS: dict = {}


def _classifier(model: str, labels: str, interpolation: str | None = None):
    from edge_runtime import Classifier

    if (model, interpolation) not in _CLASSIFIERS:
        _CLASSIFIERS[model, interpolation] = Classifier(
            Path("/coral") / model, labels=Path("/coral") / labels, interpolation=interpolation)
    return _CLASSIFIERS[model, interpolation]


def _input_tensor(clf, rgb):
    """The exact input tensor the runtime's preprocessing makes from ``rgb``."""
    from edge_runtime.classify import set_input

    set_input(clf.interpreter, clf.spec, rgb, clf.normalization, clf.resize, clf.interpolation)
    return clf.interpreter.get_tensor(clf.spec.index).copy()


@pytest.mark.parametrize("photo", REFERENCE["decoded"])
def test_photos_decode_bit_exact_with_x86(photo):
    import hashlib

    from edge_runtime import load_image

    if not Path("/coral", photo).is_file():
        pytest.skip("Coral reference data not mounted at /coral")
    assert hashlib.sha256(load_image(Path("/coral") / photo)).hexdigest() == \
        REFERENCE["decoded"][photo]


@pytest.mark.parametrize("photo", REFERENCE["linear_inputs"])
def test_linear_preprocessing_is_bit_exact_with_x86(photo):
    """The self-test's input digest needs it. cv2.INTER_LINEAR rounded ~1 value in 5
    differently on aarch64 (this test found it); "linear" is now INTER_LINEAR_EXACT."""
    import hashlib

    import numpy as np

    from edge_runtime import load_image

    if not Path("/coral", photo).is_file():
        pytest.skip("Coral reference data not mounted at /coral")
    clf = _classifier(*REFERENCE["linear_model"], interpolation="linear")
    tensor = _input_tensor(clf, load_image(Path("/coral") / photo))
    want = np.load(WORK / "x86_inputs.npz")[f"linear/{photo}"]
    differ = int(np.count_nonzero(tensor != want))
    _record("linear", {"photo": photo, "values_differing": differ, "of": int(tensor.size),
                       "max_diff": int(np.abs(tensor.astype(int) - want.astype(int)).max())})
    assert hashlib.sha256(tensor).hexdigest() == REFERENCE["linear_inputs"][photo], \
        f"{differ} of {tensor.size} input values differ from x86"


@pytest.mark.parametrize("case", REFERENCE["coral"],
                         ids=[f"{c['model']}-{c['photo']}" for c in REFERENCE["coral"]])
def test_coral_models_answer_as_on_x86(case):
    import numpy as np

    from edge_runtime import load_image

    if not Path("/coral", case["model"]).is_file():
        pytest.skip("Coral reference data not mounted at /coral")
    clf = _classifier(case["model"], case["labels"])
    step = float(clf.interpreter.get_output_details()[0]["quantization"][0])
    assert step == pytest.approx(case["step"])
    rgb = load_image(Path("/coral") / case["photo"])
    x86_input = np.load(WORK / "x86_inputs.npz")[f"{case['model']}/{case['photo']}"]
    # Not asserted: OpenCV's "area" resize rounds a few pixels differently on ARM.
    pixels = int(np.count_nonzero(_input_tensor(clf, rgb) != x86_input))
    got = clf.scores(rgb)
    want = np.asarray(case["scores"], dtype=np.float32)
    top = int(np.argmax(got))
    _record("coral", {"model": case["model"], "photo": case["photo"], "index": top,
                      "score": float(got[top]), "max_diff": float(np.abs(got - want).max()),
                      "step": step, "input_values_differing": pixels})
    assert top == case["index"], (f"top-1 {top} ({clf.labels.get(top)}), "
                                  f"x86 {case['index']} ({case['label']})")
    diff = np.abs(got - want)
    worst = int(np.argmax(diff))
    assert diff[worst] <= STEPS * step + 1e-6, (
        f"class {worst}: {got[worst]:.5f} here, {want[worst]:.5f} on x86 "
        f"({diff[worst] / step:.1f} steps of {step:.5f})")


def _get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_daemon_serves_a_video_with_http():
    daemon = REFERENCE["daemon"]
    frames, n_video = daemon["frames"], daemon["video_frames"]
    out = WORK / "daemon" / "arm64.jsonl"
    out.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "run", "--model", str(WORK / daemon["model"]),
         "--source", str(WORK / daemon["video"]), "--loop", "--max-frames", str(frames),
         "--http", "127.0.0.1:0", "--output", str(out), *daemon["args"]],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/tmp")
    lines: list[str] = []
    try:
        t0 = time.monotonic()
        url = None
        while url is None and time.monotonic() - t0 < 120:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("error:"):
                break
            if line.startswith("edgekit:") and "http://" in line:
                url = line.split("http ")[-1].strip().rstrip("/") + "/"
        assert url, "daemon did not start: " + "".join(lines)
        deadline = time.monotonic() + 60
        while _get(url + "healthz")[0] != 200:
            assert time.monotonic() < deadline, "/healthz never answered 200"
            time.sleep(0.2)
        code, body = _get(url + "latest")
        doc = json.loads(body)
        assert code == 200 and doc["label"] in daemon["labels"], doc
        assert doc["backend"].startswith("ai-edge-litert"), doc
        code, text = _get(url + "metrics")
        assert code == 200
        for name in ("edgekit_frames_total", "edgekit_inference_seconds_bucket",
                     'edgekit_info{backend="ai-edge-litert"'):
            assert name in text.decode(), name
        _, rest = proc.communicate(timeout=600)
        lines.append(rest or "")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            finally:
                proc.kill()
    log = "".join(lines)
    assert proc.returncode == 0, log
    assert "Traceback" not in log, log
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) >= frames * 0.9, f"{len(rows)} results for {frames} frames"
    # Answers, not just a live server: each frame's scores against x86 on the same frame.
    x86 = {r["frame"]: r for r in map(json.loads, (WORK / daemon["x86_jsonl"]).read_text()
                                      .splitlines())}
    step, worst, compared = daemon["step"], 0.0, 0
    for r in rows:
        ref = x86[r["frame"] % n_video]
        mine = {c["index"]: c["score"] for c in r["top"]}
        theirs = {c["index"]: c["score"] for c in ref["top"]}
        assert mine.keys() == theirs.keys(), (r, ref)
        worst = max(worst, max(abs(mine[i] - theirs[i]) for i in mine))
        compared += 1
    _record("daemon", {"frames": len(rows), "compared": compared, "max_diff": worst,
                       "step": step})
    assert worst <= STEPS * step + 1e-6, f"scores differ from x86 by {worst / step:.1f} steps"


def test_doctor_recognises_a_raspberry_pi_4():
    prof = WORK / "raspberry-pi-4.yaml"
    r = _cli("edge_runtime", "doctor", "--config", str(prof), "--json",
             "--set", f"model.path={WORK / REFERENCE['daemon']['model']}")
    checks = {}
    for line in r.stdout.splitlines():
        c = json.loads(line)
        checks.setdefault(c["name"], c)
    assert "Raspberry Pi 4 Model B" in checks["board"]["detail"], checks["board"]
    assert "aarch64" in checks["system"]["detail"] and checks["system"]["status"] == "ok"
    assert checks["interpreter"]["status"] == "ok", checks["interpreter"]
    assert checks["interpreter"]["detail"].startswith("ai-edge-litert")
    # No camera on an emulated board: the profile's /dev/video0 is the one expected failure.
    failed = {n for n, c in checks.items() if c["status"] == "fail"}
    assert failed <= {"camera"}, {n: checks[n] for n in failed}


def test_raspberry_pi_4_profile_loads_and_validates():
    from edge_runtime.config import load_config

    cfg = load_config(WORK / "raspberry-pi-4.yaml")
    assert cfg.name == "raspberry-pi-4"
    assert cfg.model.threads == 4 and cfg.model.delegate == "cpu"


def test_systemd_unit_from_the_installed_package():
    r = _cli("edge_runtime", "unit", "--config", str(WORK / "raspberry-pi-4.yaml"),
             "--user", "pi", "--python", "/opt/edgekit/bin/python", "--workdir", "/opt/edgekit")
    assert r.returncode == 0, r.stderr
    unit = r.stdout
    assert "Type=notify" in unit and "User=pi" in unit
    assert (f"ExecStart=/opt/edgekit/bin/python -m edge_runtime run --config "
            f"{WORK / 'raspberry-pi-4.yaml'}") in unit, unit
    assert not re.search(r"@[A-Z]+@", unit), "a placeholder was left unfilled"
    # The host verifies it with systemd-analyze (the userland has no systemd).
    (WORK / "edgekit.service").write_text(unit)


@pytest.mark.parametrize("model", ["demo/model_int8.tflite", "daemon/model_int8.tflite"])
def test_selftest_of_models_made_on_x86(model):
    """Hook for issue 12's self-test: models converted on x86 must pass it on the device."""
    path = WORK / model
    if not path.is_file():
        pytest.skip(f"no {model} (the demo model comes from make demo)")
    if _cli("edge_runtime", "selftest", "--help").returncode != 0:
        pytest.skip("python -m edge_runtime selftest is not in this build yet")
    r = _cli("edge_runtime", "selftest", "--model", str(path))
    if r.returncode == 0 and "selftest skipped" in r.stdout + r.stderr:
        pytest.skip(f"{model} has no golden cases (convert stores them only for a run "
                    "folder's held-out split)")
    assert r.returncode == 0, r.stdout + r.stderr
