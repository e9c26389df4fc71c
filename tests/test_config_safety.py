"""Hostile or careless profiles: aliases, duplicate keys, huge values, absurd thread counts.

Each case asserts the exact one-line error (naming the file and, where YAML has one, the
line) and that it comes fast and short: a profile must not be able to hang the loader or
print a gigabyte.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import time

import pytest

from edge_runtime import EdgekitError
from edge_runtime import config as config_module
from edge_runtime.config import MAX_PROFILE_BYTES, load_config
from edge_runtime.settings import CameraSettings, ModelSettings, max_threads

CORES = os.cpu_count() or 1


def alias_bomb(levels: int = 9) -> str:
    """The billion-laughs profile: 9 levels of 9 aliases under ``model.threads`` (~600 B,
    9^9 = 387 million strings once expanded)."""
    lines = ["model:", "  threads:", '    - &a ["lol","lol","lol","lol","lol","lol","lol","lol",'
             '"lol"]']
    prev = "a"
    for name in "bcdefghijklm"[:levels - 1]:
        lines.append(f"    - &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    return "\n".join(lines) + "\n"


def load_error(tmp_path, text: str | bytes, name: str = "p.yaml") -> str:
    """The EdgekitError message loading ``text`` gives (fails the test if none)."""
    f = tmp_path / name
    if isinstance(text, bytes):
        f.write_bytes(text)
    else:
        f.write_text(text)
    with pytest.raises(EdgekitError) as e:
        load_config(f, environ={})
    return str(e.value)


def test_alias_bomb_is_refused_at_once_in_one_short_line(tmp_path):
    text = alias_bomb()
    assert len(text) < 700
    t0 = time.monotonic()
    msg = load_error(tmp_path, text, "bomb.yaml")
    assert time.monotonic() - t0 < 1.0
    assert msg == (f"invalid config file: line 4: YAML aliases (*a) are not allowed in a "
                   f"profile [{tmp_path / 'bomb.yaml'}]")


def test_a_single_harmless_alias_is_refused_too(tmp_path):
    msg = load_error(tmp_path, "model:\n  path: &p m.tflite\n  fallback: *p\n")
    assert "line 3: YAML aliases (*p) are not allowed" in msg


@pytest.mark.parametrize("text,line,first,key", [
    ("camera:\n  source: 0\nmodel:\n  threads: 2\ncamera:\n  flip: none\n", 5, 1, "camera"),
    ("camera:\n  source: 0\n  flip: none\n  source: 1\n", 4, 2, "source"),
    ("name: a\nname: b\n", 2, 1, "name"),
])
def test_duplicate_keys_name_key_line_and_file(tmp_path, text, line, first, key):
    msg = load_error(tmp_path, text, "dup.yaml")
    assert msg == (f"invalid config file: line {line}: duplicate key '{key}' (first at line "
                   f"{first}) [{tmp_path / 'dup.yaml'}]")


def test_profile_larger_than_the_cap_is_refused_without_parsing(tmp_path):
    msg = load_error(tmp_path, "# padding\n" * (MAX_PROFILE_BYTES // 10 + 1), "big.yaml")
    assert msg == (f"invalid config file: larger than {MAX_PROFILE_BYTES // 1024} KiB, "
                   f"expected a small YAML profile [{tmp_path / 'big.yaml'}]")


def test_deep_nesting_is_one_line(tmp_path):
    msg = load_error(tmp_path, "a: " + "[" * 20000 + "]" * 20000 + "\n", "deep.yaml")
    assert msg == f"invalid config file: nested too deeply [{tmp_path / 'deep.yaml'}]"


@pytest.mark.parametrize("text,fragment", [
    ("camera:\n  flip: " + "x" * 200_000 + "\n", "flip 'xxxx"),
    ("model:\n  threads: " + "7" * 4000 + "\n", "threads 7777"),
    ("classify:\n  allow: {" + ", ".join(f"k{i}: {i}" for i in range(5000)) + "}\n",
     "classify.allow: expected a list, got {"),
    ("x" * 1000 + ": 1\n", "unknown key 'xxxx"),
    ("model:\n  " + "y" * 1000 + ": 1\n", "unknown key 'model.yyyy"),
    ("model:\n  threads: " + "9" * 6000 + "\n", "a value YAML cannot build"),
    (b"model:\n  path: \xff\xfe\n", "not UTF-8 text"),
])
def test_huge_values_are_quoted_briefly(tmp_path, text, fragment):
    msg = load_error(tmp_path, text, "huge.yaml")
    assert fragment in msg and msg.endswith(f"[{tmp_path / 'huge.yaml'}]"), msg[:300]
    # Short apart from the file's path (said up to twice: the layer and the file).
    assert len(msg.replace(str(tmp_path / "huge.yaml"), "")) < 300, len(msg)


@pytest.mark.parametrize("how", ["file", "env", "set", "flag"])
def test_threads_bounded_to_four_times_the_cores_everywhere(tmp_path, how):
    f = tmp_path / "p.yaml"
    f.write_text("model:\n  threads: 100000\n" if how == "file" else "name: p\n")
    kwargs = {"environ": {"EDGEKIT_MODEL_THREADS": "100000"} if how == "env" else {}}
    if how == "set":
        kwargs["overrides"] = ["model.threads=100000"]
    if how == "flag":
        kwargs["flags"] = {"model": {"threads": 100000}}
    with pytest.raises(EdgekitError, match=re.escape(
            f"threads 100000, expected 1..{4 * CORES} (4 x {CORES} CPU cores)")):
        load_config(f, **kwargs)


def test_threads_at_the_bound_are_accepted():
    assert max_threads() == 4 * CORES
    assert ModelSettings(threads=max_threads()).threads == 4 * CORES
    with pytest.raises(ValueError, match=r"threads 0, expected 1\.\."):
        ModelSettings(threads=0)


def test_typed_flags_beat_set_env_and_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("model:\n  threads: 1\n  path: file.tflite\nhttp:\n  port: 8000\n")
    cfg = load_config(f, ["model.threads=2", "http.port=8001"],
                      environ={"EDGEKIT_MODEL_THREADS": "3"},
                      flags={"model": {"threads": 4, "path": tmp_path / "flag.tflite"},
                             "http": {"enabled": True}})
    assert cfg.model.threads == 4 and cfg.model.path == str(tmp_path / "flag.tflite")
    assert cfg.http.port == 8001 and cfg.http.enabled is True


def test_a_bad_typed_flag_names_its_layer():
    with pytest.raises(EdgekitError, match=re.escape(
            "classify.threshold (from command line): expected a number, got 'high'")):
        load_config(None, environ={}, flags={"classify": {"threshold": "high"}})


def test_field_types_come_from_get_type_hints_not_eval():
    source = inspect.getsource(config_module)
    assert "eval(" not in source
    types = config_module._field_types(CameraSettings)
    assert types["width"] == int | None and types["source"] is str
    assert set(types) == {f.name for f in dataclasses.fields(CameraSettings)}


def test_csi_pipeline_is_built_by_the_camera_module():
    from edge_runtime.camera import jetson_csi_pipeline

    cam = CameraSettings(source="csi", width=640, height=480, fps=59.9, flip="vertical",
                         sensor_id=1)
    assert cam.source_string() == jetson_csi_pipeline(1, None, 640, 480, 59.9, "vertical")
    assert cam.source_string() == (
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=640,height=480,"
        "framerate=60/1 ! nvvidconv flip-method=6 ! video/x-raw,format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1")
