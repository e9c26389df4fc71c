"""The live page in a real headless Chromium: stream playing, result, FPS and latency shown."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

import pytest

from tests.conftest import wait_for
from tests.test_daemon import LABELS, DaemonProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage"]


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="edgekit-chromium-") as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs "
                    "it with apt-get install -y chromium when run as root)")
def test_live_page_in_headless_chromium(exported, sample, tmp_path):
    d = DaemonProcess("--model", str(exported / "model_int8.tflite"), "--source",
                      str(sample / "video.avi"), "--loop", "--http", "127.0.0.1:0",
                      "--set", "camera.realtime=true", "--set", "output.jsonl=off",
                      "--set", "http.token=tok")
    try:
        wait_for(lambda: d.get("healthz")[0] == 200)
        url = d.url + "?token=tok"
        r = chromium("--virtual-time-budget=3000", "--dump-dom", url)
        dom = r.stdout
        assert r.returncode == 0 and "<html" in dom, r.stderr[-2000:]
        text = {k: re.search(rf'id="{k}"[^>]*>([^<]*)<', dom).group(1)
                for k in ("label", "score", "fps", "latency", "stream-status", "backend")}
        assert text["label"] in LABELS | {"(none)"}, text
        assert float(text["score"]) > 0 and float(text["fps"]) > 0, text
        assert re.fullmatch(r"[0-9.]+ ms", text["latency"]), text
        assert text["stream-status"] == "live 320x240", text  # the MJPEG stream played
        assert text["backend"].startswith("ai-edge-litert"), text
        assert "<title>edgekit - custom</title>" in dom
        shot = tmp_path / "page.png"
        r = chromium("--virtual-time-budget=2000", "--window-size=1000,600",
                     f"--screenshot={shot}", url)
        assert shot.is_file() and shot.stat().st_size > 10_000, r.stderr[-2000:]
        # A browser without the token gets nothing but the refusal.
        r = chromium("--dump-dom", d.url + "latest")
        assert "missing or wrong bearer token" in r.stdout
        rc, took = d.stop()
    finally:
        d.proc.kill()
    assert rc == 0 and took < 2.0
