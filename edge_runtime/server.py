"""HTTP server: live page, MJPEG stream, /latest, /healthz, /metrics and /kept (standard
library).

The standard library's threading server, bounded for a device on a shared network:
every request must arrive whole within ``REQUEST_TIMEOUT_S`` (a slow-header client cannot
hold a thread), every write gives up after a timeout, requests are limited in size (414,
431), connections are capped (the one waiting longest for its request makes room for a
newcomer), the listen backlog is sized for bursts, and stream slots go to viewers that read
(see :mod:`edge_runtime.stream`). Measured with ``python -m benchmarks.abuse.http_load``; an
asynchronous server was not needed to meet its goals.
"""

from __future__ import annotations

import hmac
import html
import io
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from .errors import EdgekitError
from .keepstore import kept_reply
from .metrics import Metrics
from .stream import LiveState, MjpegEncoder, serve_viewer, stream_headers

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0  # a request line and headers, or a keep-alive pause, at most
WRITE_TIMEOUT_S = 5.0  # a response write stalled this long drops the client
BACKLOG = 128  # connections the kernel queues before accept (the default 5 drops bursts)
MAX_CONNECTIONS = 128  # connections (threads) at once
MAX_URL = 4096  # bytes of the request target (414 above)
MAX_REQUEST_BYTES = 16 << 10  # request line and headers together (431 above)
# Request handling shares the interpreter lock with inference: a flood of requests may use
# at most this share of one core's time, after a burst of CPU_BURST_S (about 1,500 requests
# of /latest on x86-64: 50 clients x 20 requests fit in it); the excess waits, up to
# ADMIT_WAIT_S, then gets 503.
CPU_SHARE = 0.25
CPU_BURST_S = 0.5
ADMIT_WAIT_S = 2.0


def _page(name: str) -> str:
    text = resources.files(__package__).joinpath("static/index.html").read_text("utf-8")
    return text.replace("{{name}}", html.escape(name))


class Server:
    """The HTTP server on its own threads; inference only ever calls :meth:`publish`.

    Args:
        settings: :class:`edge_runtime.settings.HttpSettings`.
        metrics: the daemon's :class:`Metrics`.
        status: returns the extra fields of /latest and /healthz (backend, totals ...).
        health_max_age_s: /healthz fails when no frame was classified for this long.
        name: the profile name shown on the page.
        kept: the :class:`edge_runtime.keepstore.KeepStore` behind ``/kept`` (None:
            keeping is off). Kept frames are served only when a token is set.

    Raises:
        EdgekitError: the address cannot be bound.
    """

    def __init__(self, settings: Any, metrics: Metrics, status: Callable[[], dict[str, Any]],
                 health_max_age_s: float, name: str = "", kept: Any = None) -> None:
        self.settings = settings
        self.kept = kept
        self.metrics = metrics
        self.status = status
        self.health_max_age_s = health_max_age_s
        self.page = _page(name or "camera")
        self.state = LiveState()
        self.encoder = MjpegEncoder(self.state, settings.stream_fps, settings.stream_width,
                                    settings.jpeg_quality, settings.max_clients)
        metrics.streaming = self.encoder
        handler = type("Handler", (_Handler,), {"app": self})
        try:
            self.httpd = _HTTPServer((settings.host, settings.port), handler)
        except OSError as e:
            self.encoder.stop()
            raise EdgekitError(f"cannot serve HTTP on {settings.host}:{settings.port}: "
                               f"{e.strerror or e}") from None
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={
            "poll_interval": 0.1}, name="edgekit-http", daemon=True)

    @property
    def url(self) -> str:
        """The base URL actually bound (port 0 resolved)."""
        host, port = self.httpd.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

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
        self.httpd.close_connections()

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


class _TooLarge(Exception):
    """The request line and headers exceeded ``MAX_REQUEST_BYTES``."""


class _DeadlineReader(io.RawIOBase):
    """Socket reads against one deadline and one byte budget per request.

    A socket timeout alone restarts with every byte, so a client sending a header byte a
    second would hold its thread for ever; here every read gets only the time left.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = 0.0
        self.budget = 0

    def arm(self, seconds: float, budget: int) -> None:
        """Starts the clock and the byte budget for the next request."""
        self.deadline = time.monotonic() + seconds
        self.budget = budget

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received in time")
        if self.budget <= 0:
            raise _TooLarge
        self.sock.settimeout(left)
        n = self.sock.recv_into(memoryview(buf)[:self.budget])
        self.budget -= n
        return n


class _CpuBudget:
    """A token bucket of CPU seconds for request handling (see ``CPU_SHARE``)."""

    def __init__(self, share: float, burst_s: float) -> None:
        self.share = share
        self.burst_s = burst_s
        self.tokens = burst_s
        self.t = time.monotonic()
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst_s, self.tokens + (now - self.t) * self.share)
        self.t = now

    def admit(self, max_wait_s: float) -> bool:
        """Waits (without holding the interpreter) until there is budget; False when
        there was none for ``max_wait_s``."""
        deadline = time.monotonic() + max_wait_s
        while True:
            with self._lock:
                now = time.monotonic()
                self._refill(now)
                if self.tokens > 0:
                    return True
                wait = -self.tokens / self.share
            if now >= deadline:
                return False
            time.sleep(min(max(wait, 0.001), 0.05, deadline - now))

    def charge(self, cpu_s: float) -> None:
        """Spends what one request took."""
        with self._lock:
            self._refill(time.monotonic())
            self.tokens -= cpu_s


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    since: float  # when it began waiting for its current request
    waiting: bool = True  # waiting for (or reading) a request, not being answered


class _HTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most ``MAX_CONNECTIONS`` of them."""

    daemon_threads = True
    request_queue_size = BACKLOG

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, _Conn] = {}
        self.budget = _CpuBudget(CPU_SHARE, CPU_BURST_S)
        super().__init__(address, handler)

    @property
    def connections(self) -> int:
        """Open connections."""
        return len(self._conns)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            if len(self._conns) >= MAX_CONNECTIONS and not self._evict_idle():
                refuse = True
            else:
                refuse = False
                self._conns[request] = _Conn(request, time.monotonic())
        if refuse:  # never block the accept loop on a client
            request.setblocking(False)
            try:
                request.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\nRetry-After: 1\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def _evict_idle(self) -> bool:
        """Drops the connection waiting longest for its request (caller holds the lock)."""
        idle = [c for c in self._conns.values() if c.waiting]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.since)
        del self._conns[victim.sock]
        try:
            victim.sock.shutdown(socket.SHUT_RDWR)  # its thread sees EOF and ends
        except OSError:
            pass
        return True

    def waiting(self, sock: socket.socket, waiting: bool) -> None:
        """Marks a connection as waiting for a request (evictable) or being answered."""
        with self._lock:
            conn = self._conns.get(sock)
            if conn is not None:
                conn.waiting = waiting
                if waiting:
                    conn.since = time.monotonic()

    def close_connections(self) -> None:
        """Disconnects every client (server stopping)."""
        with self._lock:
            for conn in list(self._conns.values()):
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._conns.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The standard library prints a traceback to stderr; a client going away is routine.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("http %s: %s", client_address, exc)
        else:
            log.warning("http %s: %s: %s", client_address, type(exc).__name__, exc)


class _Handler(BaseHTTPRequestHandler):
    app: Server
    server: _HTTPServer
    server_version = "edgekit"
    sys_version = ""
    protocol_version = "HTTP/1.1"  # keep-alive: the page polls /latest twice a second
    default_request_version = "HTTP/1.0"  # errors get a status line, even to HTTP/0.9
    timeout = WRITE_TIMEOUT_S
    # Headers and body leave in separate writes: with Nagle's algorithm on, a keep-alive
    # client's delayed ACK holds the body back 40 ms.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        if log.isEnabledFor(logging.DEBUG):  # called for every request: format only if shown
            log.debug("http %s - %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        self.server.waiting(self.connection, True)
        self._reader.arm(REQUEST_TIMEOUT_S, MAX_REQUEST_BYTES)
        self.raw_requestline = b""
        self.command, self.request_version, self.requestline = None, "HTTP/1.0", ""
        self._streaming = False
        cpu0 = time.thread_time()
        try:
            super().handle_one_request()
        except _TooLarge:
            self.close_connection = True
            if not self.raw_requestline:
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG,
                                f"request line longer than {MAX_REQUEST_BYTES} bytes")
            else:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                f"request headers larger than {MAX_REQUEST_BYTES} bytes")
            self._discard_rest()
        finally:
            if not self._streaming:  # a stream is paced by the encoder, not charged
                self.server.budget.charge(time.thread_time() - cpu0)

    def _discard_rest(self, seconds: float = 0.5, limit: int = 1 << 20) -> None:
        """Reads and drops what the client is still sending, briefly: closing a socket
        with unread data resets the connection, and the client may lose our answer."""
        sock = self.connection
        deadline = time.monotonic() + seconds
        try:
            sock.shutdown(socket.SHUT_WR)
            while limit > 0 and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                n = len(sock.recv(65536))
                if not n:
                    break
                limit -= n
        except OSError:
            pass

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if len(self.path) > MAX_URL:
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG,
                            f"URL longer than {MAX_URL} bytes")
            return False
        self.server.waiting(self.connection, False)
        self.connection.settimeout(WRITE_TIMEOUT_S)
        if not self.server.budget.admit(ADMIT_WAIT_S):
            self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "too many requests, try again")
            return False
        return True

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        self.connection.settimeout(WRITE_TIMEOUT_S)
        self.close_connection = True
        super().send_error(code, message, explain)

    def _authorized(self, query: str) -> bool:
        token = self.app.settings.token
        if not token:
            return True
        header = self.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            given = header[7:].strip()
        else:
            given = (parse_qs(query).get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), token.encode())

    def _send(self, code: int, body: bytes | str, ctype: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if code == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="edgekit"')
        if self.close_connection:
            self.send_header("Connection", "close")
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
        # Fixed routes only, matched exactly; the one route that reads the disk (/kept/NAME)
        # accepts nothing but a kept frame's name: '..' or percent-encoded paths are a 404.
        path, _, query = self.path.partition("?")
        try:
            if path == "/healthz":
                ok, doc = app.health()
                self._json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, doc)
                return
            if path == "/kept" or path.startswith("/kept/"):
                self._kept(path, query)
                return
            if not self._authorized(query):
                self._json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
                return
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, app.page, "text/html; charset=utf-8")
            elif path == "/latest":
                doc = app.latest()
                if doc is None:
                    self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no result yet"})
                else:
                    self._json(HTTPStatus.OK, doc)
            elif path == "/metrics":
                try:
                    text = app.metrics.render()
                except ImportError:
                    self._json(HTTPStatus.NOT_IMPLEMENTED, {
                        "error": "/metrics needs prometheus_client: pip install "
                                 "prometheus-client (the wheel's [device] extra has it)"})
                    return
                self._send(HTTPStatus.OK, text, "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/stream.mjpg":
                self._stream()
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path[:100]}"})
        except OSError:  # the client went, stalled past the write timeout, or was evicted
            self.close_connection = True

    def _kept(self, path: str, query: str) -> None:
        """``/kept`` (the newest kept frames, JSON) and ``/kept/DAY/NAME.jpg`` (one JPEG):
        never without a token, even on 127.0.0.1 (they are pictures of the site)."""
        app = self.app
        if not app.settings.token:
            self._json(HTTPStatus.FORBIDDEN, {
                "error": "kept frames are served only with a token: set http.token (better: "
                         "the EDGEKIT_HTTP_TOKEN environment variable)"})
            return
        if not self._authorized(query):
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            return
        code, body = kept_reply(app.kept, path)
        if isinstance(body, bytes):
            self._send(code, body, "image/jpeg")
        else:
            self._json(code, body)

    def _stream(self) -> None:
        enc = self.app.encoder
        self._streaming = True
        viewer = None if self.command == "HEAD" else enc.open(self.connection)
        if viewer is None and self.command != "HEAD":
            self.close_connection = True
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many stream clients"})
            return
        self.close_connection = True
        try:
            self.send_response(HTTPStatus.OK)
            for k, v in stream_headers().items():
                self.send_header(k, v)
            self.end_headers()
            if viewer is not None:
                serve_viewer(viewer, self.wfile, enc, self.app.stopping.is_set)
        finally:
            if viewer is not None:
                enc.slots.release(viewer)
