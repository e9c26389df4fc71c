"""The systemd path of a real device, on the virtual Raspberry Pi (see conftest.py).

The tests share one VM and run in file order: boot, first deploy (unit, Type=notify,
watchdog, service user), fresh frames, kill -9, reload, reboot, a second release, a
release that never gets healthy (switched back, errors in journald), rollback, and a hung
daemon killed by the watchdog. Each prints what it measured (MEASURE lines; run.py
passes -s).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import VIDEO, wait_for

PROFILE = """\
name: virtual-pi
description: make test-vm's virtual Raspberry Pi, a looped video file as its camera
model:
  path: models/model_int8.tflite
  threads: 2
camera:
  source: {source}
  loop: true
  realtime: true
  fps: 5
classify:
  top_k: 2
  threshold: {threshold}
output:
  jsonl: /var/log/edgekit/results.jsonl
  details: true
http:
  enabled: true
  port: 8080
watchdog:
  health_max_age_s: 10
"""
STATE: dict[str, str] = {}  # release ids, shared by the tests in order


def _profile(tmp: Path, name: str, source: str = VIDEO, threshold: float = 0.0) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(PROFILE.format(source=source, threshold=threshold))
    return p


def _say(what: str, secs: float) -> None:
    print(f"\nMEASURE {what}: {secs:.1f} s")


def _ok(p, row, result="deployed"):
    assert p.returncode == 0 and row and row[0] == result, \
        f"exit {p.returncode}, row {row}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"


def test_boots_arm64_with_systemd(vm):
    assert vm.ssh("uname -m").stdout.strip() == "aarch64"
    assert vm.ssh("cat /proc/1/comm").stdout.strip() == "systemd"
    state = wait_for("boot finished", lambda: vm.ssh(
        "systemctl is-system-running", check=False).stdout.strip() not in
        ("", "initializing", "starting") and vm.ssh("systemctl is-system-running",
                                                    check=False).stdout.strip(), 180)
    failed = vm.ssh("systemctl --failed --no-legend --plain", check=False).stdout
    assert state == "running", f"system {state}; failed units: {failed}"
    assert vm.ssh("sudo -n id -u").stdout.strip() == "0"


def test_first_deploy_installs_the_unit(vm, deploy, tmp_path_factory):
    profile = _profile(tmp_path_factory.mktemp("p"), "virtual-pi")
    p, secs, row = deploy("deploy", profile, "--health-timeout", "180")
    _ok(p, row)
    assert "service restarted, healthz ok" in row[3], row
    STATE["first"] = row[1]
    assert vm.current() == row[1]
    props = vm.show("Type", "User", "WatchdogUSec", "ActiveState", "SubState", "MainPID",
                    "NotifyAccess", "Restart", "UnitFileState", "WorkingDirectory")
    assert props["Type"] == "notify" and props["NotifyAccess"] == "main", props
    assert props["WatchdogUSec"] == "30s" and props["Restart"] == "always", props
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["UnitFileState"] == "enabled", props
    assert props["User"] == "pi" and props["WorkingDirectory"] == "/home/pi/edgekit/current"
    owner = vm.ssh(f"ps -o user= -p {props['MainPID']}").stdout.strip()
    assert owner == "pi"
    _say("first deploy into the VM (venv from the wheelhouse, unit, healthz)", secs)


def test_healthz_shows_fresh_frames_and_the_watchdog_is_fed(vm):
    first = wait_for("fresh frames", vm.fresh, 60)
    assert first["model"] == "model_int8.tflite" and first["selftest"] == "pass", first
    time.sleep(4)
    second = vm.fresh(after=first["frames_total"])
    assert second, f"no new frames in 4 s: {first} then {vm.healthz()}"
    # systemd records each WATCHDOG=1; a fed watchdog has a timestamp within WatchdogSec.
    mono = int(vm.show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
    now = float(vm.ssh("cut -d' ' -f1 /proc/uptime").stdout) * 1e6
    assert 0 < now - mono < 30e6, (now, mono)


def test_kill_9_is_restarted_by_systemd(vm):
    before = vm.show("MainPID", "NRestarts")
    t0 = time.monotonic()
    vm.ssh(f"sudo kill -9 {before['MainPID']}")
    wait_for("a new daemon", lambda: vm.show("MainPID", "ActiveState")["MainPID"] not in
             ("0", before["MainPID"]), 60)
    doc = wait_for("fresh frames after kill -9", vm.fresh, 120)
    secs = time.monotonic() - t0
    after = vm.show("MainPID", "NRestarts", "ActiveState")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, (before, after)
    assert after["ActiveState"] == "active" and doc["status"] == "ok"
    _say("kill -9 to fresh frames (RestartSec=5)", secs)


def test_reload_swaps_without_losing_frames(vm):
    wait_for("fresh frames", vm.fresh, 60)
    pid = vm.show("MainPID")["MainPID"]
    before = vm.healthz()
    t0 = time.monotonic()
    vm.ssh("sudo systemctl reload edgekit")
    after = wait_for("the reload", lambda: (d := vm.healthz()).get("reloads_total", 0) >
                     before["reloads_total"] and d, 120)
    secs = time.monotonic() - t0
    time.sleep(3)
    later = vm.fresh(after=after["frames_total"])
    assert later, f"no frames after the reload: {vm.healthz()}"
    assert vm.show("MainPID")["MainPID"] == pid  # the same process: not a restart
    assert later["reload_failures_total"] == before["reload_failures_total"], later
    assert later["dropped_total"] == before["dropped_total"], (before, later)
    _say("systemctl reload to swapped model (0 frames dropped)", secs)


def test_reboot_comes_back_on_the_same_release(vm):
    release = vm.current()
    t0 = time.monotonic()
    secs_ssh = vm.reboot()
    doc = wait_for("fresh frames after reboot", vm.fresh, 180)
    secs = time.monotonic() - t0
    assert vm.current() == release == STATE["first"]
    assert doc["status"] == "ok"
    assert vm.show("NRestarts")["NRestarts"] == "0"  # started once by boot, not by retries
    _say("reboot to sshd", secs_ssh)
    _say("reboot to fresh frames", secs)


def test_second_release_deploys_warm(vm, deploy, tmp_path_factory):
    profile = _profile(tmp_path_factory.mktemp("p"), "virtual-pi", threshold=0.05)
    p, secs, row = deploy("deploy", profile, "--health-timeout", "180")
    _ok(p, row)
    assert row[1] != STATE["first"] and vm.current() == row[1]
    STATE["second"] = row[1]
    _say("second deploy (venv reused)", secs)


def test_never_healthy_release_is_switched_back(vm, deploy, tmp_path_factory):
    missing = "/srv/edgekit/no-such-camera.avi"
    profile = _profile(tmp_path_factory.mktemp("p"), "virtual-pi", source=missing)
    since = vm.ssh("date -u '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    p, secs, row = deploy("deploy", profile, "--health-timeout", "40")
    assert p.returncode != 0 and row and row[0] == "failed", (row, p.stdout[-3000:])
    assert "switched back to " + STATE["second"] in row[3], row
    assert vm.current() == STATE["second"]
    assert wait_for("fresh frames on the old release", vm.fresh, 120)
    # The daemon's error is one line in the journal, naming the source; no traceback.
    journal = vm.ssh(f"sudo journalctl -u edgekit --no-pager -o cat --since '{since}'"
                     ).stdout
    errors = [ln for ln in journal.splitlines() if missing in ln]
    assert errors, journal[-3000:]
    assert "Traceback" not in journal, journal[-3000:]
    _say("never-healthy release: deploy, wait, switch back", secs)


def test_make_rollback_returns_to_the_previous_release(vm, deploy):
    p, secs, row = deploy("rollback", None, "--health-timeout", "180")
    _ok(p, row, "rolled-back")
    assert row[1] == STATE["first"] and vm.current() == STATE["first"]
    assert wait_for("fresh frames after rollback", vm.fresh, 120)
    _say("make rollback", secs)


def test_hung_daemon_is_killed_by_the_watchdog(vm):
    wait_for("fresh frames", vm.fresh, 60)
    before = vm.show("MainPID", "NRestarts")
    t0 = time.monotonic()
    vm.ssh(f"sudo kill -STOP {before['MainPID']}")  # hung: alive, but no WATCHDOG=1
    wait_for("the watchdog's restart", lambda: vm.show("MainPID")["MainPID"] not in
             ("0", before["MainPID"]), 90, every=2)
    assert wait_for("fresh frames after the watchdog", vm.fresh, 120)
    secs = time.monotonic() - t0
    assert int(vm.show("NRestarts")["NRestarts"]) == int(before["NRestarts"]) + 1
    journal = vm.ssh("sudo journalctl -u edgekit --no-pager -o cat -n 50").stdout
    assert "Watchdog timeout" in journal, journal[-2000:]
    _say("hung daemon to fresh frames (WatchdogSec=30)", secs)


@pytest.fixture(autouse=True)
def _needs_first(request):
    if request.node.name not in ("test_boots_arm64_with_systemd",
                                 "test_first_deploy_installs_the_unit") and "first" not in STATE:
        pytest.skip("the first deploy failed")
