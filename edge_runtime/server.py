"""HTTP server: live page, MJPEG stream, /latest, /healthz and /metrics (standard library)."""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from .errors import EdgekitError
from .metrics import Metrics

log = logging.getLogger(__name__)
BOUNDARY = "edgekitframe"


class LiveState:
    """The newest frame and result, handed from inference to the HTTP threads.

    :meth:`publish` only swaps references under a lock (the frame array is never reused
    by the capture thread), so serving clients never slows inference.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seq = 0
        self.image: np.ndarray | None = None
        self.result: dict[str, Any] | None = None

    def publish(self, image: np.ndarray | None, result: dict[str, Any]) -> None:
        """Makes a frame and its result the latest."""
        with self._lock:
            self.seq += 1
            self.image = image
            self.result = result

    def snapshot(self) -> tuple[int, np.ndarray | None, dict[str, Any] | None]:
        """(sequence, frame, result) as last published."""
        with self._lock:
            return self.seq, self.image, self.result


def annotate(image: np.ndarray, result: dict[str, Any] | None, width: int) -> np.ndarray:
    """A copy of ``image`` shrunk to ``width`` (never enlarged) with the label, score, FPS
    and latency drawn on it."""
    h, w = image.shape[:2]
    width = min(width, w)
    if w != width:
        size = (width, max(1, round(h * width / w)))
        img = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    else:
        img = image.copy()
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    r = result or {}
    label = r.get("label")
    text = f"{label if label is not None else '-'}  {r.get('score', 0.0):.2f}"
    info = f"{r.get('fps', 0.0):.1f} fps  {r.get('inference_ms', 0.0):.1f} ms"
    scale = max(0.4, img.shape[1] / 640.0 * 0.8)
    bar = int(30 * scale) + 8
    cv2.rectangle(img, (0, 0), (img.shape[1], bar), (0, 0, 0), thickness=-1)
    cv2.putText(img, text, (6, bar - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (80, 255, 80), 2,
                cv2.LINE_AA)
    (tw, _), _ = cv2.getTextSize(info, cv2.FONT_HERSHEY_SIMPLEX, scale * 0.7, 1)
    cv2.putText(img, info, (img.shape[1] - tw - 6, bar - 8), cv2.FONT_HERSHEY_SIMPLEX,
                scale * 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    return img


class MjpegEncoder:
    """Encodes the newest frame to JPEG at most ``fps`` times a second, only while watched.

    One encoder thread serves every client; each client thread waits for the next JPEG
    and writes it at its own pace, skipping frames it was too slow for.
    """

    def __init__(self, state: LiveState, fps: float, width: int, quality: int) -> None:
        self.state = state
        self.interval = 1.0 / fps
        self.width = width
        self.quality = quality
        self.clients = 0
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._jpeg_seq = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgekit-mjpeg", daemon=True)
        self._thread.start()

    def add_client(self) -> None:
        """Counts a client in (starts encoding)."""
        with self._cond:
            self.clients += 1
        self._wake.set()

    def remove_client(self) -> None:
        """Counts a client out."""
        with self._cond:
            self.clients -= 1

    def next_jpeg(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The first JPEG newer than sequence ``after``, or None after ``timeout`` s."""
        with self._cond:
            self._cond.wait_for(lambda: self._jpeg_seq > after or self._stop.is_set(),
                                timeout)
            if self._jpeg_seq > after and self._jpeg is not None:
                return self._jpeg_seq, self._jpeg
            return None

    def stop(self) -> None:
        """Ends the encoder thread and wakes every client."""
        self._stop.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        last = -1
        while not self._stop.is_set():
            if self.clients <= 0:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            t0 = time.monotonic()
            seq, image, result = self.state.snapshot()
            if image is not None and seq != last:
                last = seq
                try:
                    ok, buf = cv2.imencode(".jpg", annotate(image, result, self.width),
                                           [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                except cv2.error:
                    ok = False
                if ok:
                    with self._cond:
                        self._jpeg = buf.tobytes()
                        self._jpeg_seq += 1
                        self._cond.notify_all()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgekit - %(name)s</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#111;color:#eee}
main{max-width:1100px;margin:auto;padding:12px}
#live{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
#view{max-width:100%%;background:#000;min-height:120px;display:block}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px}
dt{color:#999}dd{margin:0;font-variant-numeric:tabular-nums}
#label{font-size:2em;font-weight:bold;color:#6f6}
.stale{color:#f66!important}
</style></head><body><main>
<h1>edgekit <small>%(name)s</small></h1>
<div id="live"><div id="stage"></div><section>
<p><span id="label">-</span> <span id="score"></span></p>
<dl>
<dt>FPS</dt><dd id="fps">-</dd>
<dt>Inference</dt><dd id="latency">-</dd>
<dt>Frame age</dt><dd id="age">-</dd>
<dt>Dropped</dt><dd id="dropped">-</dd>
<dt>Frame</dt><dd id="frame">-</dd>
<dt>Stream</dt><dd id="stream-status">connecting</dd>
<dt>Backend</dt><dd id="backend">-</dd>
</dl></section></div></main>
<script>
const q = new URLSearchParams(location.search);
const token = q.get("token");
const suffix = token ? "?token=" + encodeURIComponent(token) : "";
const headers = token ? {"Authorization": "Bearer " + token} : {};
const $ = (id) => document.getElementById(id);
function fmt(x, unit, digits) { return (x === undefined || x === null) ? "-" :
  Number(x).toFixed(digits) + unit; }
async function poll() {
  try {
    const r = await fetch("latest" + suffix, {headers: headers, cache: "no-store"});
    const d = await r.json();
    if (r.ok) {
      $("label").textContent = d.label === null ? "(none)" : d.label;
      $("label").classList.toggle("stale", !!d.stale);
      $("score").textContent = fmt(d.score, "", 3);
      $("fps").textContent = fmt(d.fps, "", 1);
      $("latency").textContent = fmt(d.inference_ms, " ms", 1);
      $("age").textContent = fmt(d.frame_age_ms, " ms", 1);
      $("dropped").textContent = d.dropped_total;
      $("frame").textContent = d.frame;
      $("backend").textContent = d.backend;
    }
  } catch (e) { $("label").classList.add("stale"); }
  setTimeout(poll, 500);
}
window.addEventListener("load", () => {
  const img = new Image();
  img.id = "view"; img.alt = "live camera stream";
  img.onload = () => { $("stream-status").textContent =
    "live " + img.naturalWidth + "x" + img.naturalHeight; };
  img.onerror = () => { $("stream-status").textContent = "unavailable"; };
  img.src = "stream.mjpg" + suffix;
  $("stage").appendChild(img);
  poll();
});
</script></body></html>
"""


class Server:
    """The HTTP server on its own threads; inference only ever calls :meth:`publish`.

    Args:
        settings: :class:`edge_runtime.config.HttpSettings`.
        metrics: the daemon's :class:`Metrics`.
        status: returns the extra fields of /latest and /healthz (backend, totals ...).
        health_max_age_s: /healthz fails when no frame was classified for this long.
        name: the profile name shown on the page.

    Raises:
        EdgekitError: the address cannot be bound.
    """

    def __init__(self, settings: Any, metrics: Metrics, status: Callable[[], dict[str, Any]],
                 health_max_age_s: float, name: str = "") -> None:
        self.settings = settings
        self.metrics = metrics
        self.status = status
        self.health_max_age_s = health_max_age_s
        self.name = name
        self.state = LiveState()
        self.encoder = MjpegEncoder(self.state, settings.stream_fps, settings.stream_width,
                                    settings.jpeg_quality)
        handler = type("Handler", (_Handler,), {"app": self})
        try:
            self.httpd = ThreadingHTTPServer((settings.host, settings.port), handler)
        except OSError as e:
            self.encoder.stop()
            raise EdgekitError(f"cannot serve HTTP on {settings.host}:{settings.port}: "
                               f"{e.strerror or e}") from None
        self.httpd.daemon_threads = True
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={
            "poll_interval": 0.1}, name="edgekit-http", daemon=True)

    @property
    def url(self) -> str:
        """The base URL actually bound (port 0 resolved)."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> Server:
        """Starts serving."""
        self._thread.start()
        return self

    def publish(self, image: np.ndarray | None, result: dict[str, Any]) -> None:
        """Hands the newest frame and result to the HTTP side (cheap, never blocks long)."""
        self.state.publish(image, result)

    def stop(self) -> None:
        """Stops serving; stream clients are disconnected."""
        self.stopping.set()
        self.encoder.stop()
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def latest(self) -> dict[str, Any] | None:
        """The /latest document (None before the first result)."""
        _, _, result = self.state.snapshot()
        if result is None:
            return None
        since = self.metrics.seconds_since_result()
        doc = dict(result)
        doc.update(self.status())
        doc["fps"] = round(self.metrics.fps, 2)
        doc["seconds_since_result"] = None if since is None else round(since, 3)
        doc["stale"] = since is None or since > self.health_max_age_s
        return doc

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the /healthz document)."""
        since = self.metrics.seconds_since_result()
        ok = since is not None and since <= self.health_max_age_s
        doc = {"status": "ok" if ok else ("starting" if since is None else "stale"),
               "seconds_since_result": None if since is None else round(since, 3),
               "max_age_s": self.health_max_age_s}
        doc.update(self.status())
        return ok, doc


class _Handler(BaseHTTPRequestHandler):
    app: Server
    server_version = "edgekit"
    timeout = 10  # seconds a client may stall a write (or a request) before it is dropped

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        log.debug("http %s - %s", self.address_string(), format % args)

    def _authorized(self, query: dict[str, list[str]]) -> bool:
        token = self.app.settings.token
        if not token:
            return True
        header = self.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), token.encode())

    def _send(self, code: int, body: bytes | str, ctype: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if code == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="edgekit"')
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, code: int, doc: Any) -> None:
        self._send(code, json.dumps(doc) + "\n")

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        app = self.app
        with app.metrics.lock:
            app.metrics.http_requests += 1
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        try:
            if path == "/healthz":
                ok, doc = app.health()
                self._json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, doc)
                return
            if not self._authorized(query):
                self._json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
                return
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE % {"name": app.name or "camera"},
                           "text/html; charset=utf-8")
            elif path == "/latest":
                doc = app.latest()
                if doc is None:
                    self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no result yet"})
                else:
                    self._json(HTTPStatus.OK, doc)
            elif path == "/metrics":
                self._send(HTTPStatus.OK, app.metrics.render(),
                           "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/stream.mjpg":
                self._stream()
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}"})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _stream(self) -> None:
        app = self.app
        enc = app.encoder
        with app.metrics.lock:
            full = app.metrics.stream_clients >= app.settings.max_clients
            if not full:
                app.metrics.stream_clients += 1
        if full:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many stream clients"})
            return
        enc.add_client()
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            seq = 0
            while not app.stopping.is_set():
                got = enc.next_jpeg(seq, timeout=1.0)
                if got is None:
                    continue
                seq, jpeg = got
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                 f"Content-Length: {len(jpeg)}\r\n\r\n".encode())
                self.wfile.write(jpeg)
                self.wfile.write(b"\r\n")
                self.wfile.flush()
        finally:
            enc.remove_client()
            with app.metrics.lock:
                app.metrics.stream_clients -= 1
            self.close_connection = True
