"""The camera daemon end to end: HTTP, slow clients, drops, stalls, systemd, signals, errors."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from edge_runtime import Classifier
from edge_runtime.camera import Source, parse_source
from edge_runtime.capture import Capture
from edge_runtime.config import load_config
from edge_runtime.fileio import file_sha256
from edge_runtime.loop import Daemon, StopFlag
from edge_runtime.outputs import JsonlWriter
from edge_runtime.systemd import Notifier
from tests.conftest import ROOT, FakeCamera, error_lines, run_cli, wait_for

LABELS = {"circle", "square", "star", "triangle"}


def start_url(text: str) -> str | None:
    """The URL on the daemon's start-up line: after "; http ", up to the next ';' or space
    (the line may go on: "; keeping frames in ...")."""
    m = re.search(r"^edgekit:.*?; http (https?://[^\s;]+/)", text, re.MULTILINE)
    return m.group(1) if m else None


def test_start_url_whatever_follows_it():
    line = "edgekit: m.tflite on x 1 (cpu, threads 4); source file v.avi; http {}{}\n"
    for url in ("http://127.0.0.1:8080/", "http://[::1]:9000/"):
        for tail in ("", "; keeping frames in /var/lib/edgekit/keep; http later"):
            assert start_url("INFO something\n" + line.format(url, tail)) == url
    assert start_url("edgekit: m.tflite on x 1; source file v.avi\n") is None


class DaemonProcess:
    """``python -m edge_runtime run ...`` in the background, stderr drained on a thread."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        import os

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime", "run", *args], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
        self.lines: list[str] = []
        self.started = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self.started.wait(60):
            self.proc.kill()
            raise AssertionError("daemon did not start: " + "".join(self.lines))
        if any(ln.startswith("error:") for ln in self.lines):
            self.proc.kill()
            raise AssertionError("daemon did not start: " + "".join(self.lines))
        self.url = start_url("".join(self.lines))

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith(("edgekit:", "error:")):
                self.started.set()

    def get(self, path: str, token: str | None = None, timeout: float = 5):
        req = urllib.request.Request(self.url + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(10)
        finally:
            self.proc.kill()
        return rc, time.monotonic() - t0


def test_http_endpoints_token_slow_clients_and_sigterm(exported, sample):
    d = DaemonProcess("--model", str(exported / "model_int8.tflite"), "--source",
                      str(sample / "video.avi"), "--loop", "--http", "127.0.0.1:0",
                      "--set", "camera.realtime=true", "--set", "camera.fps=30",
                      "--set", "output.jsonl=off", env={"EDGEKIT_HTTP_TOKEN": "s3cret"})
    try:
        assert d.url and d.url.startswith("http://127.0.0.1:")
        wait_for(lambda: d.get("healthz")[0] == 200)  # /healthz needs no token
        health = json.loads(d.get("healthz")[1])
        sha = file_sha256(exported / "model_int8.tflite")
        assert health["model_sha256"] == sha and 0 <= health["uptime_s"] < 120
        assert d.get("latest")[0] == 401 and d.get("metrics")[0] == 401
        assert d.get("latest", token="wrong")[0] == 401
        code, body = d.get("latest", token="s3cret")
        doc = json.loads(body)
        assert code == 200 and doc["label"] in LABELS and doc["frame_age_ms"] >= 0
        assert doc["backend"].startswith("ai-edge-litert") and "dropped" in doc
        assert doc["model_sha256"] == sha and doc["uptime_s"] >= health["uptime_s"]
        # raw_top: the model's own top 3, whatever classify.top_k (1 here) says.
        raw_top = doc["raw_top"]
        assert len(doc["top"]) == 1 and len(raw_top) == 3
        assert raw_top[0]["score"] == doc["raw"]["score"]
        assert {t["label"] for t in raw_top} <= LABELS and len({t["index"] for t in raw_top}) == 3
        assert [t["score"] for t in raw_top] == sorted((t["score"] for t in raw_top), reverse=True)
        code, page = d.get("?token=s3cret")
        assert code == 200 and b"stream.mjpg" in page and b"<script>" in page
        code, text = d.get("metrics", token="s3cret")
        text = text.decode()
        assert 'edgekit_info{backend="ai-edge-litert"' in text
        for name in ("edgekit_frames_total", "edgekit_frames_dropped_total",
                     "edgekit_inference_seconds_bucket", "edgekit_frame_age_seconds_count",
                     "edgekit_reconnects_total"):
            assert name in text, name
        # The MJPEG stream: multipart JPEG parts.
        with urllib.request.urlopen(urllib.request.Request(
                d.url + "stream.mjpg", headers={"Authorization": "Bearer s3cret"}),
                timeout=5) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            head = r.read(200)
        assert b"Content-Type: image/jpeg" in head and b"\xff\xd8" in head
        # Two clients that never read: inference keeps its pace, other requests answer.
        n0 = json.loads(d.get("latest", token="s3cret")[1])["frames_total"]
        time.sleep(1.0)
        quiet = json.loads(d.get("latest", token="s3cret")[1])["frames_total"] - n0
        slow = []
        for _ in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            u = urlsplit(d.url)
            s.connect((u.hostname, u.port))
            s.sendall(b"GET /stream.mjpg?token=s3cret HTTP/1.1\r\nHost: x\r\n\r\n")
            slow.append(s)
        time.sleep(1.5)  # long enough for their socket buffers to fill
        n0 = json.loads(d.get("latest", token="s3cret")[1])["frames_total"]
        time.sleep(1.0)
        n1 = json.loads(d.get("latest", token="s3cret")[1])["frames_total"]
        # Blocked by the clients, inference would stop; relative to the quiet rate, so
        # that a loaded machine does not fail the test.
        assert n1 - n0 >= max(3, 0.5 * quiet), f"{n1 - n0} fps with slow clients, {quiet} quiet"
        rc, took = d.stop(signal.SIGTERM)
        for s in slow:
            s.close()
    finally:
        d.proc.kill()
    assert rc == 0 and took < 2.0, (rc, took, "".join(d.lines))
    assert "stopped by signal 15" in "".join(d.lines) and "Traceback" not in "".join(d.lines)


def test_systemd_ready_watchdog_stopping(exported, sample, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    msgs: list[str] = []
    try:
        d = DaemonProcess("--model", str(exported / "model_int8.tflite"), "--source",
                          str(sample / "video.avi"), "--loop", "--set", "output.jsonl=off",
                          "--set", "camera.realtime=true",
                          env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
        try:
            while sum(m == "WATCHDOG=1" for m in msgs) < 3:
                msgs.append(sock.recv(512).decode())
            rc, took = d.stop(signal.SIGINT)
            # Everything it sent is queued now (it has exited): a WATCHDOG=1 sent while the
            # signal was on its way may come before STOPPING=1, never after it.
            sock.setblocking(False)
            while True:
                try:
                    msgs.append(sock.recv(512).decode())
                except BlockingIOError:
                    break
        finally:
            d.proc.kill()
    finally:
        sock.close()
    assert msgs[0].startswith("READY=1") and msgs[-1] == "STOPPING=1"
    # SIGINT (Ctrl-C) ends with 130, as every edgekit CLI; SIGTERM with 0.
    assert rc == 130 and took < 2.0 and "stopped by signal 2" in "".join(d.lines)


def test_file_results_carry_age_and_drops_on_request(exported, sample, tmp_path):
    out = tmp_path / "r.jsonl"
    r = run_cli("edge_runtime", "run", "--model", str(exported / "model_int8.tflite"),
                "--source", str(sample / "video.avi"), "--output", str(out),
                "--set", "output.details=true", "--set", "classify.top_k=2")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["frame"] for x in rows] == list(range(60))  # a file: every frame, in order
    assert all(x["dropped"] == 0 and x["frame_age_ms"] >= 0 for x in rows)
    assert all(len(x["top"]) == 2 and x["raw"]["label"] in LABELS for x in rows)
    changes = tmp_path / "c.jsonl"
    r = run_cli("edge_runtime", "run", "--model", str(exported / "model_int8.tflite"),
                "--source", str(sample / "video.avi"), "--output", str(changes),
                "--set", "output.on_change=true", "--set", "smoothing.window=3",
                "--set", "smoothing.hysteresis=0.2")
    assert r.returncode == 0, r.stderr
    labels = [json.loads(x)["label"] for x in changes.read_text().splitlines()]
    assert 2 <= len(labels) < 20 and all(a != b for a, b in zip(labels, labels[1:]))


def _config(tmp_path, *sets: str):
    return load_config(None, ["output.details=true", *sets], environ={})


def test_live_source_hands_over_only_the_newest_frame(exported, sample, tmp_path, monkeypatch):
    from edge_runtime.infer import FrameClassifier

    slow = FrameClassifier.scores

    def scores(self, bgr, prepared=None):
        time.sleep(0.02)  # inference slower than the 200 fps source
        return slow(self, bgr, prepared)

    monkeypatch.setattr(FrameClassifier, "scores", scores)
    cfg = _config(tmp_path, "camera.realtime=true", "camera.fps=200", "camera.loop=true")
    cap = Capture(parse_source(str(sample / "video.avi")), cfg.camera, cfg.watchdog).start()
    out = tmp_path / "live.jsonl"
    writer = JsonlWriter(str(out))
    try:
        summary = Daemon(Classifier(exported / "model_int8.tflite"), cap, cfg, writer,
                         StopFlag(), max_frames=25).run()
    finally:
        cap.stop()
        writer.close()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert summary["frames"] == 25 == len(rows)
    for a, b in zip(rows, rows[1:]):
        assert b["frame"] - a["frame"] - 1 == b["dropped"]
    assert sum(r["dropped"] for r in rows) > 25
    # The newest frame, not a backlog: a frame is younger than the time between two
    # results (a queue would age frames by one such interval per frame, without bound).
    ages = sorted(r["frame_age_ms"] for r in rows)
    t = [datetime.fromisoformat(r["time"]).timestamp() * 1000.0 for r in rows]
    gaps = sorted(b - a for a, b in zip(t, t[1:]))
    assert ages[len(ages) // 2] < 2 * gaps[len(gaps) // 2] + 5, (ages, gaps)


def test_stall_reopen_bad_frames_and_watchdog(exported, sample, tmp_path, monkeypatch):
    from edge_runtime.infer import FrameClassifier

    base = cv2.imread(str(next((sample / "images" / "star").glob("*.jpg"))))
    real = FrameClassifier.scores
    calls = {"n": 0}

    def scores(self, bgr, prepared=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise cv2.error("simulated corrupt frame")
        return real(self, bgr, prepared)

    monkeypatch.setattr(FrameClassifier, "scores", scores)
    cfg = _config(tmp_path, "watchdog.stall_s=0.3", "watchdog.backoff_initial_s=0.05",
                  "watchdog.backoff_max_s=0.2")
    cap = Capture(Source("camera", 0), cfg.camera, cfg.watchdog,
                  # Two frames, a bad one, one frame, then a wedged read (a stalled camera).
                  opener=lambda s, c: FakeCamera([base, base, np.zeros((0, 0, 3), np.uint8),
                                                  base], delay=0.01)).start()
    path = str(tmp_path / "n.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    out = tmp_path / "s.jsonl"
    writer = JsonlWriter(str(out))
    daemon = Daemon(Classifier(exported / "model_int8.tflite"), cap, cfg, writer, StopFlag(),
                    max_frames=6, notifier=notifier)
    try:
        daemon.run()
    finally:
        cap.stop()
        writer.close()
        sock.setblocking(False)
        msgs = []
        while True:
            try:
                msgs.append(sock.recv(256).decode())
            except BlockingIOError:
                break
        sock.close()
    assert cap.reconnects >= 2 and cap.stalls >= 2  # it stalled and came back, twice
    assert cap.bad_frames >= 2 and daemon.metrics.bad_frames == 1
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 6 and rows[-1]["frame"] > rows[0]["frame"]
    assert msgs[0].startswith("READY=1") and "WATCHDOG=1" in msgs
    status = daemon.status()
    assert status["reconnects_total"] == cap.reconnects and status["bad_frames_total"] >= 3


def test_mqtt_publishes_label_changes(exported, sample, tmp_path, monkeypatch):
    import types

    published = []

    class Client:
        def __init__(self, **kw):
            self.kw = kw

        def username_pw_set(self, u, p):
            pass

        def reconnect_delay_set(self, a, b):
            pass

        def connect_async(self, host, port, keepalive):
            self.addr = (host, port)

        def loop_start(self):
            pass

        def loop_stop(self):
            pass

        def disconnect(self):
            pass

        def publish(self, topic, payload, qos, retain):
            published.append((topic, json.loads(payload), qos, retain))

    client_mod = types.SimpleNamespace(Client=Client)
    mqtt_pkg = types.SimpleNamespace(client=client_mod)
    monkeypatch.setitem(sys.modules, "paho", types.SimpleNamespace(mqtt=mqtt_pkg))
    monkeypatch.setitem(sys.modules, "paho.mqtt", mqtt_pkg)
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", client_mod)
    from edge_runtime.outputs import MqttPublisher

    cfg = _config(tmp_path, "mqtt.enabled=true", "mqtt.topic=site/cam1", "mqtt.qos=1")
    mqtt = MqttPublisher(cfg.mqtt)
    cap = Capture(parse_source(str(sample / "video.avi")), cfg.camera, cfg.watchdog).start()
    try:
        Daemon(Classifier(exported / "model_int8.tflite"), cap, cfg, None, StopFlag(),
               mqtt=mqtt).run()
    finally:
        cap.stop()
        mqtt.close()
    labels = [p[1]["label"] for p in published]
    assert 2 <= len(labels) < 30 and all(a != b for a, b in zip(labels, labels[1:]))
    assert all(p[0] == "site/cam1" and p[2] == 1 and p[3] for p in published)


@pytest.mark.parametrize("sets,fragment", [
    (["classify.allow=circle,zebra"], "unknown label 'zebra'"),
    (["http.port=70000"], "port 70000"),
    (["watchdog.stall_s=-1"], "stall_s -1.0"),
])
def test_bad_daemon_settings_are_one_clear_error(exported, sample, sets, fragment):
    args = [a for s in sets for a in ("--set", s)]
    r = run_cli("edge_runtime", "run", "--model", str(exported / "model_int8.tflite"),
                "--source", str(sample / "video.avi"), *args)
    lines = error_lines(r.stderr)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr


def test_busy_http_port_is_one_clear_error(exported, sample):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        r = run_cli("edge_runtime", "run", "--model", str(exported / "model_int8.tflite"),
                    "--source", str(sample / "video.avi"), "--http",
                    f"127.0.0.1:{s.getsockname()[1]}")
    finally:
        s.close()
    lines = error_lines(r.stderr)
    assert r.returncode != 0 and len(lines) == 1 and "cannot serve HTTP" in lines[0], r.stderr


def test_doctor_and_unit_commands(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("name: p\nmodel:\n  path: missing.tflite\ncamera:\n  source: /dev/video9\n")
    r = run_cli("edge_runtime", "doctor", "--config", str(prof))
    assert r.returncode != 0, r.stdout
    lines = r.stdout.splitlines()
    assert any(ln.startswith("[fail] model: missing.tflite not found -- fix:") for ln in lines)
    assert any(ln.startswith("[fail] camera: /dev/video9 not found") for ln in lines)
    assert any(ln.startswith("[ok  ] interpreter: ai-edge-litert") for ln in lines)
    assert lines[-1].endswith("failed: camera, model")
    r = run_cli("edge_runtime", "doctor", "--json")
    assert r.returncode == 0 and {json.loads(x)["name"] for x in r.stdout.splitlines()} >= {
        "python", "interpreter", "edgetpu", "coral_usb", "opencv", "temperature"}
    r = run_cli("edge_runtime", "unit", "--config", str(ROOT / "device_configs/desktop.yaml"),
                "--user", "pi")
    assert r.returncode == 0 and "Type=notify" in r.stdout and "User=pi" in r.stdout


def test_unit_template_is_package_data():
    """A pip install has the unit template: it lives in the package and pyproject ships it."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from fnmatch import fnmatch

    from edge_runtime.systemd import UNIT_TEMPLATE, render_unit

    pkg = ROOT / "edge_runtime"
    assert UNIT_TEMPLATE.is_file() and str(UNIT_TEMPLATE).startswith(str(pkg))
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["edge_runtime"]
    rel = UNIT_TEMPLATE.relative_to(pkg).as_posix()
    assert any(fnmatch(rel, g) for g in globs), (rel, globs)
    text = render_unit(ROOT / "device_configs/desktop.yaml", "/srv/edgekit", "/usr/bin/python3")
    assert "WorkingDirectory=/srv/edgekit" in text and not re.search(r"@[A-Z]+@", text)
    assert "ExecStart=/usr/bin/python3 -m edge_runtime run --config " in text
