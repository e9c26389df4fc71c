"""The labelling page's HTTP server (``python -m train.label``): loopback only, token always.

Routes, each refused with 403 without ``?token=`` (or an ``X-Edgekit-Token`` header):
``GET /`` the page, ``GET /api/frames`` the frames with their decisions, ``GET /thumb/<i>``
a frame's thumbnail, ``GET /img/<i>`` the frame itself, ``POST /api/decide`` a decision
(``{"paths": [...], "decision": "label"|"unknown"|"skip", "label": ...}``).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import socket
import sys
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from edge_runtime.errors import EdgekitError

from .label import Labeller

THUMB_PX = 192  # the longest side of a grid thumbnail
THUMB_CACHE = 4096  # thumbnails kept in memory (~10 KB each)
MAX_BODY = 1 << 20
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token is in the page's URL
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; connect-src 'self'; "
                               "style-src 'unsafe-inline'; script-src 'unsafe-inline'",
}


class LabelApp:
    """What the handler serves: the labeller, the token, the page and a thumbnail cache."""

    def __init__(self, labeller: Labeller, token: str):
        self.labeller, self.token = labeller, token
        self.ids = {f.path: i for i, f in enumerate(labeller.frames)}
        self.page = resources.files("train").joinpath("label_page.html").read_bytes()
        self.thumbs: OrderedDict[int, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def thumbnail(self, i: int) -> bytes | None:
        """The frame's JPEG scaled to ``THUMB_PX``, or None when it cannot be decoded."""
        with self.lock:
            if i in self.thumbs:
                self.thumbs.move_to_end(i)
                return self.thumbs[i]
        import cv2  # only the page needs OpenCV; --apply starts without it

        img = cv2.imread(str(self.labeller.frames[i].jpg), cv2.IMREAD_COLOR)
        if img is None:
            return None
        scale = THUMB_PX / max(img.shape[:2])
        if scale < 1:
            img = cv2.resize(img, (max(1, round(img.shape[1] * scale)),
                                   max(1, round(img.shape[0] * scale))),
                             interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            return None
        with self.lock:
            self.thumbs[i] = buf.tobytes()
            while len(self.thumbs) > THUMB_CACHE:
                self.thumbs.popitem(last=False)
        return buf.tobytes()

    def frames_doc(self) -> dict[str, Any]:
        lab = self.labeller
        with lab.lock:
            return {"frames": lab.frames_doc(), "classes": lab.vocab.labels,
                    "progress": lab.progress()}

    def decide(self, body: Any) -> dict[str, Any]:
        """Applies one decision from the page; EdgekitError on anything malformed."""
        if not isinstance(body, dict):
            raise EdgekitError("expected a JSON object")
        paths, decision, label = body.get("paths"), body.get("decision"), body.get("label")
        if (not isinstance(paths, list) or not paths
                or not all(isinstance(p, str) for p in paths)):
            raise EdgekitError("'paths' must be a non-empty list of frame paths")
        if label is not None and not isinstance(label, str):
            raise EdgekitError("'label' must be a string")
        lab = self.labeller
        counts = lab.decide([(p, decision, label) for p in paths], who="page")
        with lab.lock:
            docs = lab.frames_doc()
            changed = [docs[self.ids[p]] for p in dict.fromkeys(paths)]
            return {**counts, "frames": changed, "progress": lab.progress()}


class Handler(BaseHTTPRequestHandler):
    """Fixed routes only; nothing on disk is reached from a request's path."""

    server_version = "edgekit-label"
    app: LabelApp

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # the terminal shows the URL and problems, not one line per thumbnail

    def _send(self, code: int, data: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _json(self, code: int, doc: Any) -> None:
        self._send(code, json.dumps(doc).encode(), "application/json")

    def _route(self) -> str | None:
        """The request's path when it carries the token; answers 403 and None otherwise."""
        path, _, query = self.path.partition("?")
        given = (self.headers.get("X-Edgekit-Token")
                 or (parse_qs(query).get("token") or [""])[0])
        if not hmac.compare_digest(given.encode(), self.app.token.encode()):
            self._json(HTTPStatus.FORBIDDEN, {"error": "missing or wrong token: open the "
                                              "URL python -m train.label printed"})
            return None
        return path

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self._route()
        if path is None:
            return
        kind, _, num = path.lstrip("/").partition("/")
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.app.page, "text/html; charset=utf-8")
        elif path == "/api/frames":
            self._json(HTTPStatus.OK, self.app.frames_doc())
        elif kind in ("thumb", "img") and num.isdigit() \
                and int(num) < len(self.app.labeller.frames):
            i = int(num)
            data = (self.app.thumbnail(i) if kind == "thumb"
                    else self.app.labeller.frames[i].jpg.read_bytes())
            if data is None:
                self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": "cannot decode"})
            else:
                self._send(HTTPStatus.OK, data, "image/jpeg")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        path = self._route()
        if path is None:
            return
        if path != "/api/decide":
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        try:
            n = int(self.headers.get("Content-Length") or -1)
        except ValueError:
            n = -1
        if not 0 < n <= MAX_BODY:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"a body of 1..{MAX_BODY} bytes"})
            return
        try:
            body = json.loads(self.rfile.read(n))
            self._json(HTTPStatus.OK, self.app.decide(body))
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "the body is not JSON"})
        except EdgekitError as e:
            self._json(HTTPStatus.CONFLICT, {"error": str(e)})
        except OSError as e:
            print(f"error: {e.strerror}: {e.filename}", file=sys.stderr)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR,
                       {"error": f"{e.strerror}: {e.filename}"})


class Server(ThreadingHTTPServer):
    """One thread per connection; a browser that drops a connection is not an error."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # thumbnails cancelled
            super().handle_error(request, client_address)


def loopback(host: str) -> str:
    """``host`` when it is a loopback address (``localhost`` resolved); EdgekitError else."""
    try:
        addr = ipaddress.ip_address(socket.gethostbyname(host) if host == "localhost"
                                    else host)
    except (ValueError, OSError):
        raise EdgekitError(f"--host {host!r}: expected a loopback address such as "
                           "127.0.0.1") from None
    if not addr.is_loopback:
        raise EdgekitError(f"--host {host}: the labelling page serves this machine only "
                           "(a loopback address such as 127.0.0.1)")
    return str(addr)


def serve(labeller: Labeller, host: str, port: int) -> int:
    """Serves the page until Ctrl-C or SIGTERM; prints the URL with its token first."""
    host = loopback(host)
    token = secrets.token_urlsafe(18)
    app = LabelApp(labeller, token)
    handler = type("BoundHandler", (Handler,), {"app": app})
    cls = type("BoundServer", (Server,), {
        "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    try:
        server = cls((host, port), handler)
    except OSError as e:
        raise EdgekitError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    p = labeller.progress()
    shown = f"[{host}]" if ":" in host else host
    print(f"labelling {p['total']} frames ({p['decided']} decided) into {labeller.dataset}",
          flush=True)
    print(f"open http://{shown}:{server.server_address[1]}/?token={token}  (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0
