"""MJPEG streaming: the newest frame annotated and encoded once for every viewer, the
viewer slots (a stalled client never locks a viewer out), and the per-viewer write loop."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import cv2
import numpy as np

BOUNDARY = "edgekitframe"
# A viewer whose frame write has not finished for this long is stalled: on a LAN a frame
# (tens of kB) leaves in milliseconds, and a viewer that cannot take one frame in this
# time is not watching a live stream.
STALL_S = 0.5
# Bytes a viewer must have taken before it counts as reading: more than a client that never
# reads can ever absorb (its receive buffer, 128 KiB by default on Linux and not grown
# without reads, plus our send buffer, SNDBUF). Until then a new viewer may take its slot.
PROVEN_BYTES = 1 << 20
SNDBUF = 64 << 10
WRITE_TIMEOUT_S = 2.0  # a viewer stalled this long is dropped even when no one waits


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


@dataclass(eq=False)
class Viewer:
    """One stream client: its socket and how far it has got."""

    sock: socket.socket
    since: float = field(default_factory=time.monotonic)
    sent: int = 0  # bytes written so far
    writing_since: float | None = None  # a write in progress started then
    evicted: bool = False

    def proven(self) -> bool:
        """Whether it has taken more than a client that never reads could hold."""
        return self.sent > PROVEN_BYTES


class Slots:
    """At most ``size`` viewers; a newcomer takes the slot of a stalled or unproven one.

    The one place stream clients are counted. When every slot is taken, the viewer whose
    write is stuck the longest is dropped for the newcomer; failing that, the oldest one
    that has not yet taken more data than socket buffers hold. Only viewers that are
    really reading keep a newcomer out (answered 503).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._viewers: list[Viewer] = []

    def __len__(self) -> int:
        return len(self._viewers)

    def acquire(self, sock: socket.socket) -> Viewer | None:
        """A slot for ``sock``, evicting a stalled or unproven viewer if need be; None
        when every slot holds a viewer that reads."""
        now = time.monotonic()
        with self._lock:
            if len(self._viewers) >= self.size:
                victim = self._victim(now)
                if victim is None:
                    return None
                self._evict(victim)
            viewer = Viewer(sock)
            self._viewers.append(viewer)
            return viewer

    def _victim(self, now: float) -> Viewer | None:
        stalled = []
        for v in self._viewers:
            since = v.writing_since  # read once: the viewer's thread may clear it meanwhile
            if since is not None and now - since > STALL_S:
                stalled.append((since, v))
        if stalled:
            return min(stalled, key=lambda p: p[0])[1]
        return min((v for v in self._viewers if not v.proven()), key=lambda v: v.since,
                   default=None)

    def release(self, viewer: Viewer) -> None:
        """Gives the slot back (twice is harmless)."""
        with self._lock:
            if viewer in self._viewers:
                self._viewers.remove(viewer)

    def close_all(self) -> None:
        """Disconnects every viewer (server stopping)."""
        with self._lock:
            for v in list(self._viewers):
                self._evict(v)

    def _evict(self, viewer: Viewer) -> None:
        # shutdown() wakes the viewer's thread out of a blocked send; its own finally
        # block closes the socket.
        viewer.evicted = True
        self._viewers.remove(viewer)
        with suppress(OSError):
            viewer.sock.shutdown(socket.SHUT_RDWR)


class MjpegEncoder:
    """Encodes the newest frame to JPEG at most ``fps`` times a second, only while watched.

    One encoder thread serves every viewer; each viewer's thread waits for the next JPEG
    and writes it at its own pace, skipping frames it was too slow for.
    """

    def __init__(self, state: LiveState, fps: float, width: int, quality: int,
                 max_clients: int) -> None:
        self.state = state
        self.interval = 1.0 / fps
        self.width = width
        self.quality = quality
        self.slots = Slots(max_clients)
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._jpeg_seq = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgekit-mjpeg", daemon=True)
        self._thread.start()

    @property
    def clients(self) -> int:
        """Connected viewers."""
        return len(self.slots)

    def open(self, sock: socket.socket) -> Viewer | None:
        """A slot for a new viewer (see :class:`Slots`); starts encoding."""
        viewer = self.slots.acquire(sock)
        if viewer is not None:
            self._wake.set()
        return viewer

    def next_jpeg(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The first JPEG newer than sequence ``after``, or None after ``timeout`` s."""
        with self._cond:
            self._cond.wait_for(lambda: self._jpeg_seq > after or self._stop.is_set(),
                                timeout)
            if self._jpeg_seq > after and self._jpeg is not None:
                return self._jpeg_seq, self._jpeg
            return None

    def stop(self) -> None:
        """Ends the encoder thread and disconnects every viewer."""
        self._stop.set()
        self._wake.set()
        self.slots.close_all()
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        last = -1
        while not self._stop.is_set():
            if not self.clients:
                with self._cond:
                    self._jpeg = None  # a viewer arriving later must not see an old frame
                last = -1
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


def stream_headers() -> dict[str, str]:
    """The response headers of an MJPEG stream."""
    return {"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-store", "Connection": "close"}


def serve_viewer(viewer: Viewer, wfile: BinaryIO, encoder: MjpegEncoder,
                 stopping: Callable[[], bool]) -> None:
    """Writes JPEG parts to one viewer until it goes, is evicted or the server stops.

    Raises:
        OSError: the viewer went away or stalled past ``WRITE_TIMEOUT_S``.
    """
    viewer.sock.settimeout(WRITE_TIMEOUT_S)
    with suppress(OSError):
        viewer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
    seq = 0
    while not stopping() and not viewer.evicted:
        got = encoder.next_jpeg(seq, timeout=1.0)
        if got is None:
            continue
        seq, jpeg = got
        part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(jpeg)}\r\n\r\n").encode()
        viewer.writing_since = time.monotonic()
        wfile.write(part + jpeg + b"\r\n")
        viewer.writing_since = None
        viewer.sent += len(part) + len(jpeg) + 2
