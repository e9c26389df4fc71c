"""The deploy tool's fast parts: CLI errors, the bundle, and remote.sh run on this machine.

The SSH deploys themselves (real sshd, Ansible) are in device_tests/deploy (make test-deploy).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from deploy import core

ROOT = Path(__file__).resolve().parents[1]
REMOTE = ROOT / "deploy" / "remote.sh"
PROFILE = "name: t\nmodel:\n  path: x.tflite\n  threads: 1\ncamera:\n  source: /dev/video0\n"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture()
def model(tmp_path) -> Path:
    """A file that starts like a TFLite model (the deploy checks only the identifier)."""
    m = tmp_path / "m" / "model.tflite"
    m.parent.mkdir()
    m.write_bytes(b"\x1c\x00\x00\x00TFL3" + os.urandom(256))
    (m.parent / "manifest.json").write_text("{}")
    (m.parent / "labels.txt").write_text("a\nb\n")
    return m


@pytest.fixture()
def profile(tmp_path) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(PROFILE)
    return p


@pytest.fixture()
def wheel(tmp_path) -> Path:
    w = tmp_path / "edgekit-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(w, "w") as z:
        z.writestr("edge_runtime/__init__.py", "x = 1\n")
    return w


def _one_error_line(p: subprocess.CompletedProcess, status: int, text: str) -> None:
    assert p.returncode == status, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_cli_needs_a_target():
    _one_error_line(cli("deploy", "--config", "c", "--model", "m"), 2,
                    "one of the arguments --host --inventory is required")


def test_cli_refuses_a_bad_host(profile, model):
    _one_error_line(cli("deploy", "--host", "a b@c;rm", "--config", str(profile), "--model",
                        str(model)), 1, "expected [USER@]HOST")


@pytest.mark.parametrize("flag,value,text", [("--serial", "0", "hosts per batch"),
                                             ("--serial", "120%", "hosts per batch"),
                                             ("--port", "70000", "port 1..65535"),
                                             ("--max-fail-percent", "101", "0..100"),
                                             ("--keep", "0", "an integer >= 1")])
def test_cli_refuses_bad_numbers(flag, value, text):
    _one_error_line(cli("deploy", "--host", "u@h", "--config", "c", "--model", "m", flag,
                        value), 2, text)


def test_cli_refuses_a_missing_or_non_tflite_model(profile, tmp_path, wheel):
    _one_error_line(cli("deploy", "--host", "u@h", "--config", str(profile), "--model",
                        str(tmp_path / "nope.tflite"), "--wheel", str(wheel)), 1,
                    "model not found")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"<html>not a model</html>")
    _one_error_line(cli("deploy", "--host", "u@h", "--config", str(profile), "--model",
                        str(bad), "--wheel", str(wheel)), 1, "not a TFLite model")


def test_cli_refuses_a_bad_profile(tmp_path, model, wheel):
    p = tmp_path / "p.yaml"
    p.write_text("model:\n  colour: red\n")
    _one_error_line(cli("deploy", "--host", "u@h", "--config", str(p), "--model", str(model),
                        "--wheel", str(wheel)), 1, "unknown key 'model.colour'")


def test_bundle_holds_the_model_its_files_and_a_rewritten_profile(tmp_path, model, profile,
                                                                 wheel):
    env = core.make_bundle(tmp_path / "b", model, profile, wheel, release_id="r1")
    rel = tmp_path / "b" / "release"
    assert sorted(p.name for p in (rel / "model").iterdir()) == [
        "labels.txt", "manifest.json", "model.tflite"]
    assert "@EDGEKIT_CURRENT@/model/model.tflite" in (rel / "profile.yaml").read_text()
    assert (rel / "profile.source.yaml").read_text() == PROFILE
    assert env["RELEASE_ID"] == "r1" and env["MODEL_NAME"] == "model.tflite"
    assert "SYSTEM_SITE" not in env  # only a picamera2/imx500 source needs apt's packages
    assert (tmp_path / "b" / wheel.name).is_file()
    again = core.make_bundle(tmp_path / "b2", model, profile, wheel)
    assert again["BUNDLE_SHA256"] == env["BUNDLE_SHA256"]  # same inputs: "unchanged"
    model.write_bytes(model.read_bytes() + b"\0")
    assert core.make_bundle(tmp_path / "b3", model, profile, wheel)["BUNDLE_SHA256"] \
        != env["BUNDLE_SHA256"]


def test_wheel_key_ignores_zip_timestamps(tmp_path):
    keys = []
    for i, when in enumerate([(2020, 1, 1, 0, 0, 0), (2026, 6, 1, 12, 0, 0)]):
        w = tmp_path / f"w{i}.whl"
        with zipfile.ZipFile(w, "w") as z:
            z.writestr(zipfile.ZipInfo("a.py", when), "x = 1\n")
        keys.append(core.wheel_key(w))
    assert keys[0] == keys[1]
    with pytest.raises(core.EdgekitError, match="not a wheel"):
        core.wheel_key(tmp_path / "w0.whl.missing")


def _remote(home: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    # --no-service: a CI runner with systemd must not get its services restarted.
    if args[0] != "status":
        args = (*args, "--no-service")
    p = subprocess.run(["sh", str(REMOTE), *args], capture_output=True, text=True, timeout=60,
                       env={"HOME": str(home), "PATH": os.environ["PATH"]})
    last = [ln for ln in p.stdout.splitlines() if ln.startswith("EDGEKIT-RESULT ")]
    return p, json.loads(last[-1][15:]) if last else {}


@pytest.mark.skipif(shutil.which("flock") is None, reason="no flock(1)")
def test_remote_refuses_while_another_run_holds_the_lock(tmp_path):
    (tmp_path / "edgekit").mkdir()
    with open(tmp_path / "edgekit" / ".deploy.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        p, res = _remote(tmp_path, "rollback")
    assert p.returncode == 3
    assert res["result"] == "refused" and "another deploy is running" in res["reason"]


@pytest.mark.skipif(shutil.which("flock") is None, reason="no flock(1)")
def test_remote_rollback_switches_current_to_the_older_release(tmp_path):
    ek = tmp_path / "edgekit"
    p, res = _remote(tmp_path, "rollback")
    assert p.returncode == 1 and "nothing deployed" in res["reason"]
    for rid in ("20260101T000000Z-a", "20260102T000000Z-b"):
        (ek / "releases" / rid).mkdir(parents=True)
    os.symlink("releases/20260101T000000Z-a", ek / "current")
    p, res = _remote(tmp_path, "rollback")
    assert p.returncode == 1 and "no release older than 20260101T000000Z-a" in res["reason"]
    os.replace(ek / "current", ek / "old")
    os.symlink("releases/20260102T000000Z-b", ek / "current")
    p, res = _remote(tmp_path, "rollback")
    assert p.returncode == 0, p.stdout
    assert res["result"] == "rolled-back" and res["release"] == "20260101T000000Z-a"
    assert os.readlink(ek / "current") == "releases/20260101T000000Z-a"
    assert os.readlink(ek / "venv") == "current/venv"
    assert "service left alone (--no-service)" in res["reason"]


def test_remote_usage_and_missing_bundle(tmp_path):
    p = subprocess.run(["sh", str(REMOTE), "explode"], capture_output=True, text=True,
                       timeout=30, env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]})
    assert p.returncode == 2 and "usage" in p.stderr
    p, res = _remote(tmp_path, "deploy", "nothing-here.tar")
    assert p.returncode == 2 and "no bundle" in res["reason"]


def test_unreachable_host_is_reported_not_raised(profile, model, wheel):
    if not shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)):
        pytest.skip("ansible-core not installed (pip install -e '.[deploy]')")
    with socket.socket() as s:  # a closed loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = cli("deploy", "--host", "nobody@127.0.0.1", "--port", str(port), "--config",
            str(profile), "--model", str(model), "--wheel", str(wheel), "--quiet",
            "--ssh-args", "-o BatchMode=yes -o ConnectTimeout=5", timeout=180)
    assert p.returncode == 1
    row = next(ln for ln in p.stdout.splitlines() if ln.startswith("nobody@127.0.0.1"))
    assert "unreachable" in row
