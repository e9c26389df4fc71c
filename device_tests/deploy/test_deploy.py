"""`python -m deploy` against real OpenSSH servers on 127.0.0.1 (see conftest.py).

The tests share three devices and run in file order: first deploy, idempotent second,
corrupted model refused, rollback, interrupted deploys, concurrent deploy refused, fleet.
Each prints the time it measured (pytest -s shows them; the Makefile target passes -s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROFILE = """\
name: test-device
description: deploy test profile
model:
  path: models/whatever.tflite
  threads: 1
camera:
  source: /dev/video0
http:
  enabled: true
  port: 18080
"""


@pytest.fixture(scope="session")
def profile(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("profile") / "test-device.yaml"
    p.write_text(PROFILE)
    return p


@pytest.fixture(scope="session")
def deploy_cmd(ssh_args, wheel, wheelhouse, profile):
    """The argv of ``python -m deploy deploy`` for a model to one device (or --inventory)."""

    def cmd(model: Path, *target: str) -> list[str]:
        return [sys.executable, "-m", "deploy", "deploy", *target, *ssh_args,
                "--config", str(profile), "--model", str(model), "--wheel", str(wheel),
                "--wheelhouse", str(wheelhouse), "--health-timeout", "20"]

    return cmd


def run(argv: list[str], timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return p, time.monotonic() - t0


def table(p: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """The summary table's rows by host: [result, release, seconds, reason...]."""
    rows = {}
    lines = p.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("host "))
    for ln in lines[start + 1:]:
        parts = ln.split(None, 4)
        rows[parts[0]] = parts[1:]
    return rows


def one(dev, model, deploy_cmd, timeout=300):
    p, secs = run(deploy_cmd(model, "--host", dev.host, "--port", str(dev.port)), timeout)
    return p, secs, table(p).get(dev.host)


def _say(what: str, secs: float) -> None:
    print(f"\nMEASURE {what}: {secs:.1f} s")


def test_first_deploy_installs_selftests_and_switches(devices, models, deploy_cmd):
    dev = devices[0]
    dev.reset()
    p, secs, row = one(dev, models["golden"], deploy_cmd)
    assert p.returncode == 0, p.stdout + p.stderr
    assert row[0] == "deployed", row
    rid = dev.current()
    assert rid == row[1]
    rel = dev.ek / "releases" / rid
    assert (rel / "model" / "model.tflite").read_bytes() == models["golden"].read_bytes()
    assert (rel / "model" / "manifest.json").is_file()
    assert f"{dev.ek}/current/model/model.tflite" in (rel / "profile.yaml").read_text()
    report = json.loads((rel / "selftest.json").read_text())
    assert report["status"] == "pass" and len(report["cases"]) == 4  # 3 widest + the narrowest decisive margin
    # ~/edgekit/venv is the release's venv, with edgekit from this checkout's wheel.
    py = dev.ek / "venv" / "bin" / "python"
    out = subprocess.run([str(py), "-c", "import edge_runtime, deploy; print('ok')"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
    assert "no service manager (systemd) found" in row[3]
    assert f"cd {dev.ek}/current" in row[3]
    assert dev.lock_free()
    _say("first deploy to 1 device (venv created from the wheelhouse)", secs)


def test_second_deploy_is_idempotent(devices, models, deploy_cmd):
    dev = devices[0]
    before, releases = dev.current(), dev.releases()
    p, secs, row = one(dev, models["golden"], deploy_cmd)
    assert p.returncode == 0, p.stdout + p.stderr
    assert row[0] == "unchanged" and row[1] == before
    assert dev.current() == before and dev.releases() == releases
    _say("warm deploy to 1 device, nothing changed", secs)


def test_new_model_deploys_warm(devices, models, deploy_cmd):
    dev = devices[0]
    before = dev.current()
    p, secs, row = one(dev, models["plain"], deploy_cmd)
    assert p.returncode == 0, p.stdout + p.stderr
    assert row[0] == "deployed" and dev.current() == row[1] != before
    assert "selftest skipped" in row[3]  # Coral's model has no golden cases
    assert len(list((dev.ek / "venvs").iterdir())) == 1  # the same wheel: the venv is reused
    _say("warm deploy of a new model to 1 device", secs)


def test_corrupted_model_is_refused_and_current_untouched(devices, models, deploy_cmd):
    dev = devices[0]
    before, releases = dev.current(), dev.releases()
    target = os.readlink(dev.ek / "current")
    p, secs, row = one(dev, models["corrupt"], deploy_cmd)
    assert p.returncode == 1
    assert row[0] == "failed"
    assert "self-test failed" in row[3] and "differs from the manifest" in row[3], row
    assert dev.current() == before and os.readlink(dev.ek / "current") == target
    assert dev.releases() == releases  # the refused release was removed
    assert not list((dev.ek / "releases").glob(".tmp-*"))
    assert dev.lock_free()
    _say("deploy of a corrupted model: time to refusal", secs)


def test_rollback_returns_to_the_previous_release(devices, ssh_args):
    dev = devices[0]
    releases = dev.releases()
    assert len(releases) >= 2 and dev.current() == releases[-1]
    p, secs = run([sys.executable, "-m", "deploy", "rollback", "--host", dev.host, "--port",
                   str(dev.port), *ssh_args])
    assert p.returncode == 0, p.stdout + p.stderr
    row = table(p)[dev.host]
    assert row[0] == "rolled-back" and row[1] == releases[-2]
    assert dev.current() == releases[-2]
    assert dev.lock_free()
    _say("rollback of 1 device", secs)


def test_rollback_with_nothing_older_fails_clearly(devices, ssh_args):
    dev = devices[1]
    dev.reset()
    p, _ = run([sys.executable, "-m", "deploy", "rollback", "--host", dev.host, "--port",
                str(dev.port), *ssh_args])
    assert p.returncode == 1
    row = table(p)[dev.host]
    assert row[0] == "failed" and "nothing deployed" in row[3]
    assert "Traceback" not in p.stderr


def _wait_lock_free(dev, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dev.lock_free():
            return
        time.sleep(0.2)
    raise AssertionError(f"the deploy lock of {dev.user} still held after {timeout} s")


def _parent(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return 0


def _until_ssh(root: int, timeout: float = 120) -> None:
    """Waits until an ssh client descended from ``root`` (the deploy) runs. (Ansible starts
    ssh in a session of its own, so the session id does not tell.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() != "ssh":
                    continue
                p, hops = int(pid), 0
                while p > 1 and hops < 20:
                    p, hops = _parent(p), hops + 1
                    if p == root:
                        return
            except (OSError, ValueError):
                continue
        time.sleep(0.05)
    raise AssertionError("the deploy opened no ssh connection")


def _owner_pid(dev, timeout: float = 120) -> int:
    """The pid of the remote.sh that holds the lock (from ~/edgekit/.deploy.owner)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not dev.lock_free():
            try:
                return int((dev.ek / ".deploy.owner").read_text().split()[1])
            except (OSError, ValueError, IndexError):
                pass
        time.sleep(0.05)
    raise AssertionError("no deploy took the lock")


@pytest.mark.parametrize("when", ["upload", "remote+0.2", "remote+2"])
def test_desktop_killed_mid_deploy_leaves_old_or_new(devices, models, deploy_cmd, when):
    """The deploying process group is SIGKILLed before the device's step runs, or once
    remote.sh holds the device's lock: the device ends on the old or the new release
    (remote.sh finishes on its own), releases the lock, and the next deploy works."""
    dev = devices[1]
    if when == "upload":
        dev.reset()
    p, _, row = one(dev, models["plain"], deploy_cmd)
    assert row[0] in ("deployed", "unchanged"), p.stdout + p.stderr
    old = dev.current()
    proc = subprocess.Popen(deploy_cmd(models["golden"], "--host", dev.host, "--port",
                                       str(dev.port)), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if when == "upload":  # once the deploy has an ssh connection open: mid-upload
        _until_ssh(proc.pid)
        time.sleep(0.2)
    else:
        _owner_pid(dev)
        time.sleep(float(when.split("+")[1]))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    _wait_lock_free(dev)
    now = dev.current()
    assert now == old or (now in dev.releases() and now != old), now
    assert not list((dev.ek / "releases").glob(".tmp-*"))
    rel = dev.ek / "releases" / now
    assert (rel / "venv" / ".complete").is_file() and (rel / "selftest.json").is_file()
    p, _, row = one(dev, models["golden"], deploy_cmd)
    assert p.returncode == 0 and row[0] in ("deployed", "unchanged"), p.stdout + p.stderr
    print(f"\nkilled at {when}: device on {'the new' if now != old else 'the old'} release")


def test_device_side_killed_mid_deploy_leaves_old(devices, models, deploy_cmd, wheel):
    """remote.sh itself is SIGKILLed (its process group) once it holds the lock: a new
    venv is being made (a changed wheel), so the kill lands before the switch."""
    dev = devices[1]
    old = dev.current()
    assert old is not None
    for v in (dev.ek / "venvs").iterdir():  # force a fresh venv: the slow part
        (v / ".complete").unlink()
    proc = subprocess.Popen(deploy_cmd(models["plain"], "--host", dev.host, "--port",
                                       str(dev.port)), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid = _owner_pid(dev)
    time.sleep(1.0)
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    _wait_lock_free(dev)
    assert dev.current() == old  # the release was never switched
    assert proc.returncode == 1, out
    p, _, row = one(dev, models["plain"], deploy_cmd)
    assert p.returncode == 0 and row[0] == "deployed", p.stdout + p.stderr
    assert not list((dev.ek / "releases").glob(".tmp-*"))


def test_concurrent_deploy_is_refused(devices, models, deploy_cmd):
    dev = devices[2]
    dev.reset()
    first = subprocess.Popen(deploy_cmd(models["golden"], "--host", dev.host, "--port",
                                        str(dev.port)), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    _owner_pid(dev)  # the first one holds the device's lock
    p, _, row = one(dev, models["plain"], deploy_cmd)
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    assert p.returncode == 1
    assert row[0] == "refused" and "another deploy is running" in row[3], row
    assert dev.current() == table(subprocess.CompletedProcess([], 0, out, ""))[dev.host][1]
    assert dev.lock_free()


def test_fleet_of_three_via_inventory(devices, models, deploy_cmd, ssh_args, tmp_path):
    inv = tmp_path / "hosts.ini"
    inv.write_text("[edgekit]\n" + "".join(
        f"{d.user} ansible_host=127.0.0.1 ansible_port={d.port} ansible_user={d.user}\n"
        for d in devices))
    p, secs = run(deploy_cmd(models["plain"], "--inventory", str(inv)))
    assert p.returncode == 0, p.stdout + p.stderr
    rows = table(p)
    assert sorted(rows) == sorted(d.user for d in devices)
    assert all(r[0] in ("deployed", "unchanged") for r in rows.values()), rows
    _say("deploy to 3 devices (parallel), some venvs warm", secs)
    p, secs = run(deploy_cmd(models["golden"], "--inventory", str(inv)))
    assert p.returncode == 0, p.stdout + p.stderr
    rows = table(p)
    assert all(r[0] == "deployed" for r in rows.values()), rows
    releases = {r[1] for r in rows.values()}
    assert len(releases) == 1 and all(d.current() in releases for d in devices)
    _say("warm deploy to 3 devices (parallel)", secs)
    # A corrupted model: every host refuses it, max_fail_percentage stops the play.
    p, secs = run(deploy_cmd(models["corrupt"], "--inventory", str(inv)) + ["--serial", "1"])
    assert p.returncode == 1
    rows = table(p)
    assert rows[devices[0].user][0] == "failed"
    assert all(d.current() in releases for d in devices)
    assert sum(r[0] == "failed" for r in rows.values()) == 1, rows  # rolling: stopped at 1
    assert sum(r[0] == "not-run" for r in rows.values()) == 2, rows
    p, secs = run([sys.executable, "-m", "deploy", "rollback", "--inventory", str(inv),
                   *ssh_args])
    assert p.returncode == 0, p.stdout + p.stderr
    _say("rollback of 3 devices (parallel)", secs)
