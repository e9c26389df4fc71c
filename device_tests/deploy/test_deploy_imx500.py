"""The Raspberry Pi AI Camera's release over real SSH (see conftest.py).

convert's IMX500 package (``packerOut.zip`` with its manifest and labels) is deployed with
device_configs/raspberry-pi-ai-camera.yaml to a loopback device of its own, whose sshd puts
``~/bin`` on the session's PATH (``SetEnv``). With a stand-in for Raspberry Pi OS's
``imx500-package`` there, the release goes live with the ``network.rpk`` it made and the
deployed daemon runs on the camera's inferences (tests/imx500_standin.py as picamera2);
without it, the deploy fails with the one line that names ``sudo apt install imx500-tools``
and the previous release stays current. The tests run in file order.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import (  # this suite's conftest
    SSHD,
    Device,
    _add_user,
    _free_port,
    _wait_port,
    stop_sshd,
)

from tests.imx500_standin import install  # python -m pytest from the checkout

ROOT = Path(__file__).resolve().parents[2]

USER = "edgekit-imx500"
PROFILE = ROOT / "device_configs" / "raspberry-pi-ai-camera.yaml"
LABELS = ["circle", "square", "star", "triangle"]
NO_TOOLS = ("model/packerOut.zip is an IMX500 package: sudo apt install imx500-tools "
            "(imx500-package makes network.rpk)")
# What imx500-tools' imx500-package does for edgekit, on the device's own python3: reads
# convert's packerOut.zip and writes OUT/network.rpk (an .rpk starts with b"9464" and a
# big-endian block size; the payload here is the package's sha256, so the test can tell
# which package the .rpk was made from).
STANDIN_PACKAGE = """#!/usr/bin/python3
import argparse, hashlib, pathlib, sys, zipfile
p = argparse.ArgumentParser(prog="imx500-package")
p.add_argument("-i", required=True)
p.add_argument("-o", required=True)
a = p.parse_args()
with zipfile.ZipFile(a.i) as z:
    if "dnnParams.xml" not in z.namelist():
        sys.exit(f"{a.i}: not a packerOut.zip (no dnnParams.xml)")
digest = hashlib.sha256(pathlib.Path(a.i).read_bytes()).digest()
out = pathlib.Path(a.o, "network.rpk")
out.write_bytes(b"9464" + len(digest).to_bytes(4, "big") + digest)
print(f"wrote {out}")
"""


def _own(path: Path, user: str) -> None:
    pw = pwd.getpwnam(user)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chown(p, pw.pw_uid, pw.pw_gid)


@pytest.fixture(scope="module")
def camera_pi(keys, tmp_path_factory):
    """(device, ssh options without the key): a user behind an sshd of its own whose
    sessions have ~/bin first on PATH, as /usr/bin is for a Pi's apt-installed tools."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    home = _add_user(USER, (keys / "client.pub").read_text())
    port = _free_port()
    conf = tmp_path_factory.mktemp("imx500-sshd") / "sshd.conf"
    conf.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
        f"PidFile {conf.parent / 'sshd.pid'}\nAllowUsers {USER}\n"
        f"SetEnv PATH={home}/bin:/usr/local/bin:/usr/bin:/bin\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin no\nStrictModes yes\nSubsystem sftp internal-sftp\n"
        "LogLevel ERROR\nPrintMotd no\n")
    hostpub = " ".join((keys / "host.pub").read_text().split()[:2])
    known = conf.parent / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {hostpub}\n")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dev = Device(USER, port, home, proc)
    try:
        _wait_port(port, proc)
        dev.reset()
        shutil.rmtree(home / "bin", ignore_errors=True)
        shutil.rmtree(home / "standin", ignore_errors=True)
        (home / "results.jsonl").unlink(missing_ok=True)
        yield dev, [f"-oUserKnownHostsFile={known}", "-oStrictHostKeyChecking=yes",
                    "-oIdentitiesOnly=yes", "-oBatchMode=yes"]
    finally:
        stop_sshd(proc)


def package(folder: Path, tag: bytes) -> Path:
    """A packerOut.zip (the members imxconv-tf writes; ``tag`` makes it a new one) with the
    manifest.json and labels.txt convert writes beside it."""
    from edge_runtime.manifest import Manifest

    folder.mkdir(parents=True)
    zpath = folder / "packerOut.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for name in ("dnnParams.xml", "cfgA.bin", "l2staticData.bin", "verTable.txt"):
            z.writestr(name, name.encode() + tag)
    Manifest(labels=LABELS, input_size=(224, 224)).save(folder / "manifest.json")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return zpath


def deploy(dev: Device, opts: list[str], keys: Path, model: Path, wheel: Path,
           wheelhouse: Path):
    """``python -m deploy deploy`` to ``dev``: (process, seconds, its summary row)."""
    argv = [sys.executable, "-m", "deploy", "deploy", "--host", dev.host, "--port",
            str(dev.port), "--ssh-key", str(keys / "client"), "--ssh-args", " ".join(opts),
            "--config", str(PROFILE), "--model", str(model), "--wheel", str(wheel),
            "--wheelhouse", str(wheelhouse), "--health-timeout", "20"]
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    secs = time.monotonic() - t0
    lines = p.stdout.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("host ")), None)
    assert start is not None, p.stdout + p.stderr
    row = next(ln.split(None, 4)[1:] for ln in lines[start + 1:] if ln.startswith(dev.host))
    return p, secs, row


def test_with_imx500_package_the_rpk_release_goes_live_and_the_daemon_runs(
        camera_pi, keys, wheel, wheelhouse, tmp_path):
    dev, opts = camera_pi
    (dev.home / "bin").mkdir()
    tool = dev.home / "bin" / "imx500-package"
    tool.write_text(STANDIN_PACKAGE)
    tool.chmod(0o755)
    _own(dev.home / "bin", USER)
    zpath = package(tmp_path / "imx500", b"v1")
    p, secs, row = deploy(dev, opts, keys, zpath, wheel, wheelhouse)
    assert p.returncode == 0, p.stdout + p.stderr
    assert row[0] == "deployed" and dev.current() == row[1], row
    rel = dev.ek / "releases" / row[1]
    assert sorted(f.name for f in (rel / "model").iterdir()) == [
        "labels.txt", "manifest.json", "network.rpk", "packerOut.zip"]
    rpk = (rel / "model" / "network.rpk").read_bytes()
    assert rpk == b"9464" + (32).to_bytes(4, "big") + hashlib.sha256(
        zpath.read_bytes()).digest(), "network.rpk was made on the device from the package"
    profile = yaml.safe_load((rel / "profile.yaml").read_text())
    assert profile["model"]["path"] == f"{dev.ek}/current/model/network.rpk"
    assert profile["camera"]["source"] == "imx500"
    selftest = json.loads((rel / "selftest.json").read_text())
    assert selftest["status"] == "skip" and selftest["model"] == "model/network.rpk"
    print(f"\nMEASURE first deploy of an IMX500 package (venv from the wheelhouse): {secs:.1f} s")

    # The deployed daemon with the release's own profile, on the camera's inferences: the
    # stand-in picamera2 on PYTHONPATH plays apt's python3-picamera2, which the release's
    # venv sees on a real Pi because remote.sh makes it with --system-site-packages.
    cfg = (rel / "venv" / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg, cfg
    install(dev.home / "standin", classes=len(LABELS))
    _own(dev.home / "standin", USER)
    cmd = ("cd ~/edgekit/current && PYTHONPATH=$HOME/standin ~/edgekit/venv/bin/python -m "
           "edge_runtime run --config profile.yaml --max-frames 12 --output ~/results.jsonl "
           "--set http.enabled=false")
    r = subprocess.run(["ssh", "-p", str(dev.port), *opts, "-i", str(keys / "client"),
                        dev.host, cmd], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(ln) for ln in (dev.home / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 12
    assert {ln["raw"]["label"] for ln in lines} <= set(LABELS)
    assert len({ln["raw"]["label"] for ln in lines}) >= 2  # per-frame answers, not one stuck
    assert all(ln["raw"]["score"] == pytest.approx(0.75, abs=1 / 256) for ln in lines)


def test_without_imx500_tools_one_line_names_the_package_and_current_stays(
        camera_pi, keys, wheel, wheelhouse, tmp_path):
    dev, opts = camera_pi
    before, releases = dev.current(), dev.releases()
    assert before is not None, "runs after the deploy above"
    (dev.home / "bin" / "imx500-package").unlink()
    p, secs, row = deploy(dev, opts, keys, package(tmp_path / "imx500", b"v2"), wheel,
                          wheelhouse)
    assert p.returncode == 1
    assert row[0] == "failed" and row[3] == NO_TOOLS, row
    assert "Traceback" not in p.stderr
    assert dev.current() == before and dev.releases() == releases
    assert not list((dev.ek / "releases").glob(".tmp-*"))
    assert dev.lock_free()
    print(f"\nMEASURE IMX500 deploy refused without imx500-tools: {secs:.1f} s")
