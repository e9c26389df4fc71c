"""The Raspberry Pi AI Camera backend on x86, against a stand-in for picamera2's IMX500 helper
(tests/imx500_standin.py): fast, no TensorFlow."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import EdgekitError
from edge_runtime import imx500_backend as ib
from edge_runtime.manifest import Manifest
from tests.conftest import run_cli
from tests.imx500_standin import install

LABELS = ["circle", "square", "triangle", "star"]


def _load(folder: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def standin(tmp_path):
    """The stand-in's (IMX500, Picamera2) in this process; restores picamera2's after."""
    root = install(tmp_path / "site", classes=len(LABELS))
    cam = _load(root / "picamera2", "standin_picamera2")
    dev = _load(root / "picamera2" / "devices", "standin_picamera2_devices")
    ib.set_helper_factory(lambda: (dev.IMX500, cam.Picamera2))
    yield cam
    ib.set_helper_factory(None)


def network(folder: Path, labels=LABELS, size=96) -> Path:
    """A network.rpk (opaque to edgekit) with convert's manifest.json beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    rpk = folder / "network.rpk"
    # An .rpk starts with b"9464" and a big-endian block size (picamera2's IMX500 reads it).
    rpk.write_bytes(b"9464" + (16).to_bytes(4, "big") + bytes(range(16)) * 4)
    Manifest(labels=list(labels), input_size=(size, size)).save(folder / "manifest.json")
    return rpk


def test_each_frame_gets_the_inference_the_camera_made_for_it(tmp_path, standin):
    from edge_runtime.classify import Classifier
    from edge_runtime.infer import FrameClassifier

    clf = Classifier(network(tmp_path / "m"))
    assert clf.input_size == (96, 96) and clf.num_classes == 4 and not clf.apply_softmax
    cap = ib.Imx500Capture(320, 240)  # waits through the stand-in's 3 frames with no result
    fc = FrameClassifier(clf)
    frames = [cap.read()[1] for _ in range(6)]  # the capture thread runs ahead of inference
    for img in frames:
        c = (int(img[0, 0, 0]) - 32) // 64  # the stand-in's picture says its class
        s = fc.scores(img, fc.prepare(img))
        assert int(np.argmax(s)) == c, "a result must belong to its own picture"
        assert s[c] == pytest.approx(0.75, abs=1 / 256)
    assert len({int(f[0, 0, 0]) for f in frames}) == 4
    assert img.shape == (240, 320, 3) and img.dtype == np.uint8
    cap.release()


def test_a_frame_without_its_own_inference_is_skipped_not_guessed(tmp_path, standin):
    from edge_runtime.classify import Classifier

    clf = Classifier(network(tmp_path / "m"))
    with pytest.raises(ValueError, match="no IMX500 inference"):
        clf.scores(np.zeros((50, 50, 3), np.uint8))  # an image file: the sensor never saw it


def test_bad_setups_say_what_to_do(tmp_path, standin, monkeypatch):
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "network.rpk").write_bytes(b"x")
    from edge_runtime.classify import Classifier

    with pytest.raises(EdgekitError, match="needs the manifest.json convert wrote"):
        Classifier(folder / "network.rpk")
    with pytest.raises(EdgekitError, match="the IMX500 returned 4 scores, the manifest has 3"):
        clf = Classifier(network(tmp_path / "three", LABELS[:3]))
        clf.interpreter.bind_frame(ib.tag(np.zeros((4, 4, 3), np.uint8), np.ones(4, np.float32)))
        try:
            clf.interpreter.invoke()
        except ValueError as e:
            raise EdgekitError(str(e)) from None
    ib.set_helper_factory(None)
    monkeypatch.setitem(sys.modules, "picamera2", None)  # not installed: an ImportError
    with pytest.raises(EdgekitError, match="apt install imx500-all python3-picamera2"):
        Classifier(network(tmp_path / "m"))
    ib.set_helper_factory(None)
    with pytest.raises(EdgekitError, match="source 'imx500' needs an IMX500 model"):
        ib.Imx500Capture()


def test_no_inference_within_the_firmware_timeout_is_one_clear_error(tmp_path, standin):
    from edge_runtime.classify import Classifier

    Classifier(network(tmp_path / "m"))
    ib.active_network().helper.get_outputs = lambda md, add_batch=False: None
    with pytest.raises(EdgekitError, match="no inference from the IMX500 in 0 s"):
        ib.Imx500Capture(firmware_timeout_s=0.2)


def test_the_daemon_runs_on_the_camera_s_inference(tmp_path):
    """The real CLI with the stand-in as picamera2: outputs, labels, keep sidecars."""
    site = install(tmp_path / "site", classes=len(LABELS))
    rpk = network(tmp_path / "m")
    out, keep = tmp_path / "out.jsonl", tmp_path / "keep"
    r = run_cli("edge_runtime", "run", "--model", str(rpk), "--source", "imx500",
                "--max-frames", "12", "--output", str(out), "--keep-dir", str(keep),
                "--set", "keep.random=1.0", "--keep-max-per-minute", "0",
                env={"PYTHONPATH": str(site)}, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(lines) == 12
    assert {ln["label"] for ln in lines} <= set(LABELS)
    assert all(ln["score"] == pytest.approx(0.75, abs=1 / 256) for ln in lines)
    sidecars = sorted(keep.rglob("*.json"))
    assert sidecars, "keep: random_rate 1 keeps frames"
    import cv2

    for side in sidecars:
        meta = json.loads(side.read_text())
        grey = int(np.median(cv2.imread(str(side.with_suffix(".jpg")))))
        assert meta["raw"]["index"] == round((grey - 32) / 64), \
            "the kept picture is the one classified"
        assert meta["model"] == "network.rpk"


def test_a_missing_camera_names_the_check(tmp_path):
    root = install(tmp_path / "site", classes=len(LABELS), no_camera=True)
    cam = _load(root / "picamera2", "standin_nocam_picamera2")
    dev = _load(root / "picamera2" / "devices", "standin_nocam_devices")
    ib.set_helper_factory(lambda: (dev.IMX500, cam.Picamera2))
    from edge_runtime.classify import Classifier

    try:
        with pytest.raises(EdgekitError, match=r"cannot load network.rpk on the IMX500: IMX500: "
                           r"Requested camera dev-node not found \(is the AI Camera connected"):
            Classifier(network(tmp_path / "m"))
    finally:
        ib.set_helper_factory(None)


def test_doctor_names_what_the_ai_camera_lacks_with_the_fix(tmp_path, monkeypatch):
    root = tmp_path / "root"

    def p(path):
        return root / path.lstrip("/")

    (root / "lib/firmware").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "picamera2", None)
    checks = {c[0]: c for c in ib.doctor_checks(p, "models/imx500/network.rpk", lambda _: None)}
    assert {k: v[1] for k, v in checks.items()} == {
        "picamera2": "fail", "imx500_firmware": "fail", "imx500_camera": "fail",
        "imx500_tools": "fail"}
    assert "sudo apt install imx500-all" in checks["imx500_firmware"][3]
    assert "rpicam-hello --list-cameras" in checks["imx500_camera"][3]
    assert "imx500-package -i packerOut.zip" in checks["imx500_tools"][3]
    (root / "lib/firmware/imx500_loader.fpk").write_bytes(b"x")
    dev = root / "sys/class/video4linux/v4l-subdev2/device/driver"
    dev.mkdir(parents=True)
    (dev / "module").symlink_to(tmp_path / "module" / "imx500")
    checks = {c[0]: c for c in ib.doctor_checks(p, None, lambda _: "/usr/bin/imx500-package")}
    assert checks["imx500_firmware"][1:3] == ("ok", "imx500_loader.fpk")
    assert checks["imx500_camera"][1:3] == ("ok", "v4l-subdev2 (imx500 driver)")
    assert checks["imx500_tools"][1] == "ok"
    assert ib.uses_imx500("imx500", "m.tflite") and ib.uses_imx500("0", "a/network.rpk")
    assert not ib.uses_imx500("picamera2", "m.tflite")


def test_a_center_crop_model_sets_the_sensor_s_centred_crop(tmp_path, standin):
    from edge_runtime.classify import Classifier

    Classifier(network(tmp_path / "stretch"))
    assert ib.active_network().helper.roi == "full sensor"
    rpk = network(tmp_path / "crop")
    Manifest(labels=LABELS, input_size=(96, 96), resize="center_crop").save(
        rpk.parent / "manifest.json")
    Classifier(rpk)
    assert ib.active_network().helper.roi == "centred crop"


def test_permission_denied_names_the_upgrade_not_the_cable(tmp_path, standin, monkeypatch):
    from edge_runtime.classify import Classifier

    def denied(*_a, **_k):
        raise PermissionError(13, "Permission denied", "/sys/kernel/debug/imx500-fw:10-001a")

    ib.set_helper_factory(lambda: (denied, standin.Picamera2))
    with pytest.raises(EdgekitError) as e:
        Classifier(network(tmp_path / "m"))
    assert "permission denied on /sys/kernel/debug/imx500-fw:10-001a" in str(e.value)
    assert "python3-picamera2" in str(e.value) and "connected" not in str(e.value)


def test_doctor_imports_picamera2_and_names_a_broken_one(tmp_path, monkeypatch):
    """A picamera2 that is found but fails to import (apt's beside a pip numpy 2) fails."""
    broken = tmp_path / "broken" / "picamera2"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        "raise ValueError('numpy.dtype size changed, may indicate binary incompatibility')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "broken"))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    name, status, detail, fix = ib.doctor_checks(lambda x: tmp_path / x.lstrip("/"), None,
                                                 lambda _: None)[0]
    assert (name, status) == ("picamera2", "fail")
    assert "ValueError: numpy.dtype size changed" in detail and "--system-site-packages" in fix
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    install(tmp_path / "good", classes=4)
    monkeypatch.syspath_prepend(str(tmp_path / "good"))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    import importlib
    importlib.invalidate_caches()
    sys.path.remove(str(tmp_path / "broken"))
    assert ib.doctor_checks(lambda x: tmp_path / x.lstrip("/"), None,
                            lambda _: None)[0][:3] == ("picamera2", "ok", "importable")
