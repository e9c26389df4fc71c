"""Credentials in a camera URL never reach a log, stderr, JSON lines, HTTP or systemd."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from edge_runtime import EdgekitError
from edge_runtime.camera import parse_source
from edge_runtime.capture import Capture
from edge_runtime.outputs import JsonlWriter
from edge_runtime.redact import RedactFilter, redact
from edge_runtime.settings import CameraSettings, WatchdogSettings
from edge_runtime.systemd import Notifier
from tests.conftest import ROOT, run_cli

SECRET = "hunter2secret"
TOKEN = "t0kenvalue42"


@pytest.mark.parametrize("text, want", [
    ("http://user:pw@127.0.0.1:9/x", "http://***@127.0.0.1:9/x"),
    ("cannot open video source 'rtsp://admin:p@ss@10.0.0.5:554/s' (url)",
     "cannot open video source 'rtsp://***@10.0.0.5:554/s' (url)"),
    ("https://cam/x?api_key=K1&size=2&X-Amz-Signature=zz&access_token=a.b-c",
     "https://cam/x?api_key=***&size=2&X-Amz-Signature=***&access_token=***"),
    ("GET /snap.jpg?user=bob&password=pw&Token=T#frag",
     "GET /snap.jpg?user=bob&password=***&Token=***#frag"),
    ("rtspsrc location=rtsp://h/s user-id=admin user-pw=pw ! decodebin",
     "rtspsrc location=rtsp://h/s user-id=admin user-pw=*** ! decodebin"),
    ("two: rtsp://a:b@h1/x and http://c:d@h2/y", "two: rtsp://***@h1/x and http://***@h2/y"),
])
def test_redact_hides_userinfo_and_token_parameters(text, want):
    assert redact(text) == want


@pytest.mark.parametrize("text", [
    "/dev/video0", "0", "video.avi", "http://host/path@x", "http://host:8080/a?x=1&size=2",
    "nvarguscamerasrc ! video/x-raw(memory:NVMM), width=1280 ! appsink", "score = 0.5",
])
def test_redact_leaves_text_without_secrets_alone(text):
    assert redact(text) == text


def test_log_filter_redacts_message_arguments_and_tracebacks():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(RedactFilter())
    logger = logging.getLogger("edgekit-test-redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("source %r failed", f"rtsp://u:{SECRET}@h/s")
        try:
            raise OSError(f"http://u:{SECRET}@h/x?token={TOKEN}")
        except OSError:
            logger.exception("read failed")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(records)
    assert "source 'rtsp://***@h/s' failed" in text and "OSError: http://***@h/x?token=***" in text
    assert SECRET not in text and TOKEN not in text


def test_capture_stores_and_logs_its_errors_redacted(caplog):
    url = f"http://user:{SECRET}@127.0.0.1:9/x?token={TOKEN}"
    source = parse_source(url)
    assert source.display == "'http://***@127.0.0.1:9/x?token=***'"
    opens = []

    class Dead:
        def read(self):
            return False, None

        def release(self):
            pass

    def opener(src, camera):
        opens.append(1)
        if len(opens) == 1:
            return Dead()
        raise EdgekitError(f"cannot open video source {src.target!r} (url)")  # unredacted

    fast = WatchdogSettings(stall_s=0.2, backoff_initial_s=0.01, backoff_max_s=0.02)
    with caplog.at_level(logging.WARNING, logger="edge_runtime.capture"):
        cap = Capture(source, CameraSettings(), fast, opener=opener).start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(opens) < 3:
            time.sleep(0.02)
        cap.stop()
    assert cap.last_error == "cannot open video source 'http://***@127.0.0.1:9/x?token=***' (url)"
    assert "reopening video source 'http://***@127.0.0.1:9/x?token=***'" in caplog.text
    assert SECRET not in caplog.text and TOKEN not in caplog.text


def test_jsonl_and_systemd_status_are_redacted(tmp_path):
    out = tmp_path / "r.jsonl"
    w = JsonlWriter(str(out))
    w.write({"event": "error", "detail": f"rtsp://u:{SECRET}@cam/s?auth={TOKEN}"})
    w.close()
    assert json.loads(out.read_text())["detail"] == "rtsp://***@cam/s?auth=***"

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n.status(f"reconnecting: cannot open 'http://u:{SECRET}@cam/x'")
        assert sock.recv(4096).decode() == "STATUS=reconnecting: cannot open 'http://***@cam/x'"
        n.close()
    finally:
        sock.close()


def test_doctor_and_startup_error_never_print_the_password(coral, tmp_path):
    url = f"http://user:{SECRET}@127.0.0.1:9/x?token={TOKEN}"
    r = run_cli("edge_runtime", "run", "--model", str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
                "--source", url, "--max-frames", "1", timeout=120)
    assert r.returncode == 1
    assert "error: cannot open video source 'http://***@127.0.0.1:9/x?token=***' (url)" \
        in r.stderr
    assert SECRET not in r.stderr + r.stdout and TOKEN not in r.stderr + r.stdout

    profile = tmp_path / "p.yaml"
    profile.write_text(f"model:\n  path: {coral / 'mobilenet_v2_1.0_224_quant.tflite'}\n"
                       f"camera:\n  source: 'rtsp://admin:{SECRET}@10.9.9.9/live'\n")
    r = run_cli("edge_runtime", "doctor", "--config", str(profile), timeout=120)
    assert "checks," in r.stdout and "Traceback" not in r.stderr
    assert SECRET not in r.stdout + r.stderr


class _Mjpeg(BaseHTTPRequestHandler):
    """An HTTP MJPEG camera: ``frames`` parts per request, then the stream ends."""

    frames = 30

    def log_message(self, *_args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        jpg = cv2.imencode(".jpg", np.full((96, 128, 3), 90, np.uint8))[1].tobytes()
        try:
            for _ in range(self.frames):
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 b"%d\r\n\r\n%s\r\n" % (len(jpg), jpg))
                time.sleep(0.03)
        except OSError:
            pass


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        return e.read()


def test_daemon_never_shows_camera_credentials(coral, tmp_path):
    """A real HTTP camera with a password in its URL goes away: the reconnect errors on
    /healthz, /latest, /metrics, the page, stderr and the JSON lines are all redacted."""
    cam = ThreadingHTTPServer(("127.0.0.1", 0), _Mjpeg)
    threading.Thread(target=cam.serve_forever, daemon=True).start()
    url = f"http://user:{SECRET}@127.0.0.1:{cam.server_address[1]}/v.mjpg?token={TOKEN}"
    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "run", "--model",
         str(coral / "mobilenet_v2_1.0_224_quant.tflite"), "--source", url,
         "--http", "127.0.0.1:0", "--output", str(out),
         "--set", "watchdog.stall_s=0.5", "--set", "watchdog.backoff_initial_s=0.05",
         "--set", "watchdog.backoff_max_s=0.2", "--set", "output.details=true"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    answers = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("http://127.0.0.1:" in x for x in lines):
            time.sleep(0.05)
        start = next(x for x in lines if x.startswith("edgekit:"))
        base = start.split("http ")[-1].strip()
        while time.monotonic() < deadline and not (out.exists() and out.stat().st_size):
            time.sleep(0.05)
        cam.shutdown()  # the camera goes away: reads fail, then reopening fails
        cam.server_close()
        health = {}
        while time.monotonic() < deadline and "cannot open" not in str(health.get("last_error")):
            health = json.loads(_get(base + "healthz"))
            time.sleep(0.1)
        answers = [_get(base + p).decode("utf-8", "replace")
                   for p in ("healthz", "latest", "metrics", "")]
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    finally:
        proc.kill()
        cam.server_close()
    time.sleep(0.2)  # the stderr reader drains the last lines
    stderr = "".join(lines)
    assert "cannot open video source 'http://***@127.0.0.1:" in health["last_error"]
    assert "source url 'http://***@127.0.0.1:" in start and "token=***" in start
    assert "reopening video source 'http://***@" in stderr
    assert out.read_text().count("\n") >= 1
    for where, text in [("stderr", stderr), ("jsonl", out.read_text())] + \
            list(zip(("healthz", "latest", "metrics", "page"), answers)):
        assert SECRET not in text and TOKEN not in text, where
