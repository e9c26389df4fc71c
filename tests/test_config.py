"""Device profiles: every shipped profile loads; bad keys and values name file and field."""

from __future__ import annotations

import re

import pytest

from edge_runtime import EdgekitError
from edge_runtime.config import load_config
from tests.conftest import ROOT

PROFILES = sorted((ROOT / "device_configs").glob("*.yaml"))


def test_all_expected_profiles_exist():
    names = {p.stem for p in PROFILES}
    assert {"raspberry-pi-4", "raspberry-pi-5", "raspberry-pi-coral-usb", "jetson-nano",
            "jetson-orin-nano", "desktop", "desktop-coral-usb"} <= names


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profile_loads(path):
    cfg = load_config(path, environ={})
    assert cfg.name == path.stem
    assert cfg.model.path.endswith((".tflite", ".onnx", ".rpk"))  # .rpk: the AI Camera
    if cfg.model.path.endswith(".onnx"):  # a Jetson's GPU; the CPU needs a TFLite fallback
        assert cfg.model.fallback and cfg.model.fallback.endswith(".tflite")
        assert cfg.model.provider_list() and "cpu" not in cfg.model.provider_list()
    if cfg.model.delegate == "edgetpu":
        assert cfg.model.fallback, "an Edge TPU profile needs a CPU fallback"


def test_csi_pipeline_from_profile():
    cfg = load_config(ROOT / "device_configs/jetson-nano.yaml", environ={})
    src = cfg.camera.source_string()
    assert src.startswith("nvarguscamerasrc sensor-id=0 sensor-mode=4")
    assert "width=1280,height=720,framerate=30/1" in src and "flip-method=2" in src


def test_precedence_set_over_env_over_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("model:\n  threads: 2\n  path: a.tflite\n")
    assert load_config(f, environ={}).model.threads == 2
    assert load_config(f, environ={"EDGEKIT_MODEL_THREADS": "3"}).model.threads == 3
    cfg = load_config(f, ["model.threads=4"], environ={"EDGEKIT_MODEL_THREADS": "3"})
    assert cfg.model.threads == 4 and cfg.model.path == "a.tflite"
    assert load_config(None, environ={}).model.threads is None  # defaults


@pytest.mark.parametrize("text,message", [
    ("model:\n  thread: 2\n", "unknown key 'model.thread'"),
    ("modle:\n  threads: 2\n", "unknown key 'modle'"),
    ("model:\n  threads: two\n", "model.threads: expected an integer"),
    ("model:\n  delegate: gpu\n", "delegate 'gpu'"),
    ("camera:\n  flip: sideways\n", "flip 'sideways'"),
    ("classify:\n  threshold: 2\n", "threshold 2.0"),
    ("- just\n- a list\n", "expected a mapping"),
    ("model: [\n", "not YAML"),
])
def test_bad_profiles_name_file_and_field(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(EdgekitError, match=r".*" + message.replace("(", r"\(").replace(
            "[", r"\[") + r".*\[.*bad\.yaml\]"):
        load_config(f, environ={})


def test_bad_set_syntax():
    with pytest.raises(EdgekitError, match="section.key=value"):
        load_config(None, ["threads=2"], environ={})


@pytest.mark.parametrize("text,message", [
    ("http:\n  port: 70000\n", "port 70000"),
    ("http:\n  prot: 80\n", "unknown key 'http.prot'"),
    ("smoothing:\n  window: 0\n", "window 0"),
    ("smoothing:\n  hysteresis: 1.5\n", "hysteresis 1.5"),
    ("watchdog:\n  backoff_initial_s: 5\n  backoff_max_s: 1\n", "backoff_max_s 1.0 is below"),
    ("watchdog:\n  stall_s: soon\n", "watchdog.stall_s: expected a number"),
    ("output:\n  max_bytes: lots\n", "output.max_bytes: expected an integer"),
    ("classify:\n  allow: {a: 1}\n", "classify.allow: expected a list"),
    ("classify:\n  allow: [cat]\n  deny: [cat]\n", "both allowed and denied"),
    ("mqtt:\n  topic: a/#\n", "without wildcards"),
    ("camera:\n  realtime: maybe\n", "camera.realtime: expected true or false"),
])
def test_bad_daemon_sections_name_file_and_field(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(EdgekitError, match=r".*" + re.escape(message) + r".*\[.*bad\.yaml\]"):
        load_config(f, environ={})


def test_daemon_sections_lists_and_env(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("classify:\n  allow: [cat, dog]\nsmoothing:\n  window: 5\n  hysteresis: 0.1\n"
                 "http:\n  enabled: true\n  port: 9000\nwatchdog:\n  stall_s: 2.5\n"
                 "output:\n  details: yes\n  max_bytes: 1000000\n")
    cfg = load_config(f, ["classify.deny=bird, fish", "http.port=0"],
                      environ={"EDGEKIT_HTTP_TOKEN": "t0k", "EDGEKIT_SMOOTHING_WINDOW": "7"})
    assert cfg.classify.allow == ("cat", "dog") and cfg.classify.deny == ("bird", "fish")
    assert cfg.smoothing.window == 7 and cfg.smoothing.hysteresis == 0.1
    assert cfg.http.enabled and cfg.http.port == 0 and cfg.http.token == "t0k"
    assert cfg.http.host == "127.0.0.1"  # loopback unless configured
    assert cfg.watchdog.stall_s == 2.5 and cfg.output.details and cfg.output.max_bytes == 10**6
    with pytest.raises(EdgekitError, match=r"http.port \(from environment\): expected an "
                                           r"integer"):
        load_config(f, environ={"EDGEKIT_HTTP_PORT": "eighty"})


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profiles_set_daemon_sections(path):
    import yaml

    data = yaml.safe_load(path.read_text())
    for section in ("model", "camera", "classify", "smoothing", "output", "http", "watchdog"):
        assert section in data, f"{path.name} has no {section} section"
    cfg = load_config(path, environ={})
    assert cfg.http.host == "127.0.0.1" and cfg.smoothing.window > 1
