"""Thermal gauges on /metrics: a fake sysfs tree and a fake ``vcgencmd`` on PATH (fast)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edge_runtime.metrics import Metrics
from edge_runtime.thermal import ThermalReader


def sysfs(root: Path, **zones: str) -> Path:
    for name, temp in zones.items():
        (root / "sys/class/thermal" / name).mkdir(parents=True)
        (root / "sys/class/thermal" / name / "temp").write_text(temp)
    return root


@pytest.fixture()
def vcgencmd(tmp_path, monkeypatch):
    """A fake ``vcgencmd`` first on PATH; write its script body with the returned function.
    Each run appends a line to ``calls``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")

    def script(body: str) -> Path:
        exe = bin_dir / "vcgencmd"
        exe.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n{body}\n")
        exe.chmod(0o755)
        return calls

    return script


def gauges(m: Metrics) -> dict[str, str]:
    return {ln.split()[0]: ln.split()[1] for ln in m.render().splitlines()
            if ln.startswith(("edgekit_temperature_celsius ", "edgekit_throttled "))}


def metrics(root: Path, **kw) -> Metrics:
    m = Metrics()
    m.thermal = ThermalReader(root, **kw)
    return m


def test_hottest_zone_and_throttled_bits_now_cached_between_scrapes(tmp_path, vcgencmd):
    # zone2's sensor is off (unreadable): skipped, not fatal.
    root = sysfs(tmp_path / "root", thermal_zone0="45000\n", thermal_zone1="61234\n",
                 thermal_zone2="")
    state = tmp_path / "state"
    state.write_text("0x50000")  # throttled and under-volted since boot, not now: 0
    calls = vcgencmd(f"echo throttled=$(cat {state})")
    m = metrics(root, cache_s=60.0)
    assert gauges(m) == {"edgekit_temperature_celsius": "61.234", "edgekit_throttled": "0.0"}
    assert calls.read_text() == "get_throttled\n"
    state.write_text("0x4")
    assert gauges(m)["edgekit_throttled"] == "0.0"  # the cached reading
    assert calls.read_text().count("\n") == 1  # one vcgencmd per cache period
    for value in ("0x1", "0x2", "0x4", "0x8", "0x50005"):  # each "now" bit alone says 1
        state.write_text(value)
        assert gauges(metrics(root, cache_s=0.0))["edgekit_throttled"] == "1.0", value


@pytest.mark.parametrize("body", ["exit 1", "echo 'VCHI initialization failed'",
                                  "exec sleep 5"])
def test_a_failing_vcgencmd_leaves_only_the_temperature(tmp_path, vcgencmd, body):
    vcgencmd(body)
    t0 = time.monotonic()
    found = gauges(metrics(sysfs(tmp_path / "root", thermal_zone0="50000"), timeout_s=0.3))
    assert found == {"edgekit_temperature_celsius": "50.0"}
    assert time.monotonic() - t0 < 3.0  # a hung vcgencmd is abandoned at the timeout


def test_no_vcgencmd_and_no_thermal_zone_means_no_gauges(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a Jetson or a PC: no vcgencmd
    (tmp_path / "root").mkdir()
    assert gauges(metrics(tmp_path / "root")) == {}
    found = gauges(metrics(sysfs(tmp_path / "jetson", thermal_zone0="38500",
                                 thermal_zone1="41000")))
    assert found == {"edgekit_temperature_celsius": "41.0"}
