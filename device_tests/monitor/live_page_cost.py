"""What the live page costs the daemon: fps and CPU with the page closed, then open.

Usage:
    python device_tests/monitor/live_page_cost.py --model M.tflite --video V.avi
                                                  [--seconds 30] [--realtime]

Runs one daemon (a looped video, unpaced unless --realtime) and measures its frames per
second and CPU share from /metrics (``edgekit_frames_total``, ``process_cpu_seconds_total``)
over the same span with no browser, then with headless Chromium showing the page (its
polls and the MJPEG stream), then with the page's polls only (``/latest`` twice a second,
``/healthz``, ``/metrics`` and ``/kept`` every 10 s, no stream). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.test_daemon import DaemonProcess  # noqa: E402
from tests.test_daemon_browser import FLAGS  # noqa: E402

TOKEN = "cost"


def _sample(d: DaemonProcess) -> tuple[float, float, float]:
    _, body = d.get("metrics", token=TOKEN)
    text = body.decode()
    frames = float(re.search(r"^edgekit_frames_total (\S+)", text, re.M).group(1))
    cpu = float(re.search(r"^process_cpu_seconds_total (\S+)", text, re.M).group(1))
    viewers = float(re.search(r"^edgekit_stream_clients (\S+)", text, re.M).group(1))
    return time.monotonic(), frames, cpu, viewers


def _span(d: DaemonProcess, seconds: float) -> dict:
    t0, f0, c0, _ = _sample(d)
    time.sleep(seconds)
    t1, f1, c1, viewers = _sample(d)
    return {"fps": round((f1 - f0) / (t1 - t0), 2),
            "cpu_pct": round(100 * (c1 - c0) / (t1 - t0), 1), "stream_clients": int(viewers)}


def _polls_only(url: str, stop: threading.Event) -> None:
    """The page's requests without a browser: what a tab costs apart from the stream."""
    n = 0
    while not stop.is_set():
        paths = ["latest"] + (["healthz", "metrics", "kept"] if n % 20 == 0 else [])
        for p in paths:
            req = urllib.request.Request(url + p, headers={"Authorization": f"Bearer {TOKEN}"})
            try:
                urllib.request.urlopen(req, timeout=5).read()
            except OSError:
                pass
        n += 1
        stop.wait(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--model", required=True)
    ap.add_argument("--video", required=True)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--realtime", action="store_true")
    a = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    d = DaemonProcess("--model", a.model, "--source", a.video, "--loop", "--http",
                      "127.0.0.1:0", "--set", f"camera.realtime={str(a.realtime).lower()}",
                      "--set", "output.jsonl=off", env={"EDGEKIT_HTTP_TOKEN": TOKEN})
    out: dict = {"seconds": a.seconds, "realtime": a.realtime,
                 "page_bytes": len(d.get("", token=TOKEN)[1])}
    try:
        time.sleep(3)
        out["closed"] = _span(d, a.seconds)
        with tempfile.TemporaryDirectory() as prof:
            b = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={prof}",
                                  "--remote-debugging-port=0", f"{d.url}?token={TOKEN}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(5)  # page loaded, stream playing
                out["open"] = _span(d, a.seconds)
            finally:
                b.terminate()
                b.wait(10)
        stop = threading.Event()
        th = threading.Thread(target=_polls_only, args=(d.url, stop), daemon=True)
        th.start()
        time.sleep(1)
        out["polls_only"] = _span(d, a.seconds)
        stop.set()
        th.join()
    finally:
        d.stop()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
