"""HTTP load and abuse measurements of the daemon's server, on the loopback interface only.

Usage:
    python -m benchmarks.abuse.http_load --model MODEL.tflite [--labels LABELS] [--source VIDEO]
        [--threads 1] [--clients 50] [--requests 20] [--keep-alive] [--stalled 20]
        [--fps-seconds 4] [--rounds 3] [--json OUT.json] [--strict]
    python -m benchmarks.abuse.http_load --url http://127.0.0.1:PORT/ [--token TOKEN] ...

With ``--model`` it starts ``python -m edge_runtime run`` on a video (``--source``, or a
generated 320x240 clip) bound to 127.0.0.1, with ``--url`` it measures a daemon already
running on this machine. Measured, in this order:

1. inference fps (frames classified per second) quiet and while ``--clients`` threads
   send /latest requests non-stop, in ``--rounds`` alternating windows of
   ``--fps-seconds`` (medians);
2. ``--clients`` threads x ``--requests`` GETs of /latest, each on a new connection
   (``--keep-alive``: one per client): latency p50/p95/p99/max, timeouts and errors;
3. ``--stalled`` clients that open /stream.mjpg and never read, then one viewer: the time
   until its first JPEG.

Prints one JSON document (and writes it with ``--json``). Exit status: 0 measured,
1 error, 2 usage, 3 a goal missed with ``--strict`` (0 timeouts, p99 <= 100 ms, loaded
fps >= 0.9 x quiet fps, first stream frame within 1 s).
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edge_runtime.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EdgekitError,
    Parser,
    float_above,
    int_at_least,
)
from edge_runtime.fileio import atomic_path

EXIT_GOAL_MISSED = 3
GOALS = {"timeouts": 0, "p99_ms": 100.0, "fps_ratio": 0.9, "first_frame_s": 1.0}
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LoadResult:
    """What ``clients`` x ``requests`` GETs of one path gave."""

    clients: int
    requests: int
    ok: int
    timeouts: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    first_error: str | None


@dataclass(frozen=True)
class StreamResult:
    """A new viewer's wait for its first frame while ``stalled`` clients never read."""

    stalled: int
    refused: int  # stalled clients answered 503 straight away (slots full)
    status: int | None
    first_frame_s: float | None


def _check_loopback(url: str) -> tuple[str, int]:
    """(host, port) of ``url``; refuses anything but this machine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loop = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loop = False
    if parts.scheme != "http" or not loop or parts.port is None:
        raise EdgekitError(f"url {url!r}: expected http://127.0.0.1:PORT/ (load is only "
                           "ever sent to this machine)")
    return host, parts.port


def _percentiles(values: list[float], qs: tuple[float, ...]) -> list[float]:
    """The ``qs`` percentiles (0..100) of ``values``, numpy's linear interpolation; NaN
    when there are none."""
    if not values:
        return [float("nan")] * len(qs)
    import numpy as np  # here: the CLI's start-up stays light

    return [float(v) for v in np.percentile(values, qs)]


def request_load(url: str, clients: int = 50, requests: int = 20, path: str = "latest",
                 token: str | None = None, timeout: float = 10.0,
                 keep_alive: bool = False, duration: float | None = None) -> LoadResult:
    """``clients`` threads each send ``requests`` GETs of ``path``.

    Args:
        url: the daemon's base URL (loopback only).
        clients: concurrent client threads.
        requests: requests per client.
        path: the page to get.
        token: bearer token, when the daemon has one.
        timeout: seconds before a request counts as timed out.
        keep_alive: each client reuses one connection (as a browser does) instead of
            opening one per request.
        duration: stop sending after this many seconds, even short of ``requests``.

    Returns:
        Latency percentiles (milliseconds, successful requests) and failure counts.
    """
    host, port = _check_loopback(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    lat: list[float] = []
    fails = {"timeouts": 0, "errors": 0}
    first: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client() -> None:
        with suppress(threading.BrokenBarrierError):
            start.wait(30)
        conn = None
        for _ in range(requests):
            t0 = time.perf_counter()
            if duration is not None and t0 - started[0] > duration:
                break
            kind, why = None, ""
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                conn.request("GET", "/" + path, headers=headers)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    kind, why = "errors", f"HTTP {r.status}"
            except TimeoutError:
                kind, why = "timeouts", "timeout"
            except OSError as e:
                kind, why = "errors", f"{type(e).__name__}: {e}"
            finally:
                if not keep_alive or kind is not None:
                    conn.close()
                    conn = None
            dt = (time.perf_counter() - t0) * 1000.0
            with lock:
                if kind is None:
                    lat.append(dt)
                else:
                    fails[kind] += 1
                    if not first:
                        first.append(why)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    started = [t0]
    for t in threads:
        t.start()
    longest = timeout * requests if duration is None else duration + timeout
    for t in threads:
        t.join(max(0.0, t0 + longest + 30 - time.perf_counter()))
    seconds = time.perf_counter() - t0
    p50, p95, p99 = (round(v, 2) for v in _percentiles(lat, (50, 95, 99)))
    return LoadResult(clients, len(lat) + sum(fails.values()), len(lat), fails["timeouts"],
                      fails["errors"], round(seconds, 3), p50, p95, p99,
                      round(max(lat, default=float("nan")), 2), first[0] if first else None)


def _stream_request(host: str, port: int, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET /stream.mjpg HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode()


def viewer_after_stalled(url: str, stalled: int = 20, token: str | None = None,
                         settle_s: float = 1.0, timeout: float = 5.0) -> StreamResult:
    """Opens ``stalled`` stream clients that never read, then times a real viewer.

    Args:
        url: the daemon's base URL (loopback only).
        stalled: clients that request /stream.mjpg and never read a byte.
        token: bearer token, when the daemon has one.
        settle_s: seconds the stalled clients hold on before the viewer arrives.
        timeout: seconds the viewer waits at most.

    Returns:
        The viewer's status and seconds until its first complete JPEG (None: none came).
    """
    host, port = _check_loopback(url)
    socks: list[socket.socket] = []
    try:
        for _ in range(stalled):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(timeout)
            s.connect((host, port))
            s.sendall(_stream_request(host, port, token))
            socks.append(s)
        time.sleep(settle_s)
        refused = 0
        for s in socks:  # a peek that consumes nothing: was it refused outright?
            with suppress(OSError):
                s.setblocking(False)
                if s.recv(12, socket.MSG_PEEK).startswith(b"HTTP/1.") and \
                        b" 503" in s.recv(12, socket.MSG_PEEK):
                    refused += 1
        t0 = time.perf_counter()
        status, got = None, None
        with socket.create_connection((host, port), timeout=timeout) as v:
            v.sendall(_stream_request(host, port, token))
            buf = b""
            deadline = t0 + timeout
            while time.perf_counter() < deadline and len(buf) < 8 << 20:
                v.settimeout(max(0.01, deadline - time.perf_counter()))
                try:
                    chunk = v.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                buf += chunk
                if status is None and b"\r\n" in buf:
                    with suppress(ValueError, IndexError):
                        status = int(buf.split(b" ", 2)[1])
                start = buf.find(b"\xff\xd8")
                if start >= 0 and buf.find(b"\xff\xd9", start) > 0:
                    got = time.perf_counter() - t0
                    break
        return StreamResult(stalled, refused, status,
                            None if got is None else round(got, 3))
    finally:
        for s in socks:
            s.close()


def frames_total(url: str, token: str | None = None, timeout: float = 5.0) -> int:
    """The daemon's classified-frame count, from /latest."""
    host, port = _check_loopback(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/latest",
                     headers={"Authorization": f"Bearer {token}"} if token else {})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise EdgekitError(f"/latest answered HTTP {r.status}: {body[:200]!r}")
        return int(json.loads(body)["frames_total"])
    finally:
        conn.close()


def inference_fps(url: str, seconds: float, token: str | None = None) -> float:
    """Frames classified per second over the next ``seconds``."""
    n0, t0 = frames_total(url, token), time.perf_counter()
    time.sleep(seconds)
    n1, t1 = frames_total(url, token), time.perf_counter()
    return round((n1 - n0) / (t1 - t0), 2)


def measure(url: str, token: str | None = None, clients: int = 50, requests: int = 20,
            stalled: int = 20, fps_seconds: float = 4.0, keep_alive: bool = False,
            rounds: int = 3) -> dict:
    """All three measurements against a running daemon; returns one JSON-ready dict.

    The fps are medians over ``rounds`` pairs of windows, loaded (the clients sending for
    ``fps_seconds``) then quiet, so that other work on the machine weighs on both alike;
    latencies and failures come from one run of exactly ``clients`` x ``requests``, after
    a quiet window (the server limits the CPU a flood may take: a burst right after a flood
    would measure that limit, not the burst).
    """
    quiet, loaded = [], []
    for _ in range(rounds):  # loaded, then quiet: the burst below starts after a rest
        n0, t0 = frames_total(url, token), time.perf_counter()
        request_load(url, clients, 1_000_000, "latest", token, keep_alive=keep_alive,
                     duration=fps_seconds)
        n1, t1 = frames_total(url, token), time.perf_counter()
        loaded.append(round((n1 - n0) / (t1 - t0), 2))
        quiet.append(inference_fps(url, fps_seconds, token))
    load = request_load(url, clients, requests, "latest", token, keep_alive=keep_alive)
    stream = viewer_after_stalled(url, stalled, token)
    q, ld = statistics.median(quiet), statistics.median(loaded)
    doc = {"url": url, "keep_alive": keep_alive, "quiet_fps": q, "loaded_fps": ld,
           "fps_ratio": round(ld / q, 3) if q else None, "quiet_fps_rounds": quiet,
           "loaded_fps_rounds": loaded, "latest": asdict(load), "stream": asdict(stream),
           "cpus": os.cpu_count(), "load_average": _load_average()}
    doc["goals"] = GOALS
    doc["met"] = {
        "timeouts": load.timeouts == GOALS["timeouts"] and load.errors == 0,
        "p99_ms": load.p99_ms <= GOALS["p99_ms"],
        "fps_ratio": doc["fps_ratio"] is not None and doc["fps_ratio"] >= GOALS["fps_ratio"],
        "first_frame_s": stream.first_frame_s is not None
        and stream.first_frame_s <= GOALS["first_frame_s"]}
    return doc


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work skews every number here)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def write_video(path: Path, frames: int = 90, size: tuple[int, int] = (320, 240)) -> Path:
    """A small MJPG clip of moving shapes, for a daemon to classify."""
    import cv2
    import numpy as np

    w, h = size
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (w, h))
    try:
        for i in range(frames):
            img = np.full((h, w, 3), (40 + i % 80, 60, 90), np.uint8)
            cv2.circle(img, (20 + (i * 3) % (w - 40), h // 2), 30, (0, 200, 255), -1)
            out.write(img)
    finally:
        out.release()
    return path


@contextmanager
def daemon(model: str, source: str, labels: str | None = None, threads: int = 1,
           extra: list[str] | None = None) -> Iterator[str]:
    """Runs ``python -m edge_runtime run`` on 127.0.0.1; yields its URL, stops it after."""
    cmd = [sys.executable, "-m", "edge_runtime", "run", "--model", model, "--source", source,
           "--loop", "--http", "127.0.0.1:0", "--threads", str(threads),
           "--set", "output.jsonl=off", *(extra or [])]
    if labels:
        cmd += ["--labels", labels]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines: list[str] = []
    found = threading.Event()

    def drain() -> None:  # stderr read on a thread: a silent daemon cannot hang us
        for line in proc.stderr:
            if len(lines) < 1000:
                lines.append(line)
            if line.startswith(("edgekit:", "error:")):
                found.set()
        found.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        found.wait(60)
        url = next((ln.rsplit("http ", 1)[-1].strip() for ln in lines
                    if ln.startswith("edgekit:") and "http://" in ln), None)
        if url is None:
            raise EdgekitError("the daemon did not start: " + "".join(lines)[-500:].strip())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the first result
            with suppress(EdgekitError, OSError):
                frames_total(url)
                break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


_positive_int = int_at_least(1)
_positive_float = float_above(0)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = Parser(prog="python -m benchmarks.abuse.http_load", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="start a daemon with this .tflite model")
    where.add_argument("--url", help="measure a daemon already running on this machine")
    p.add_argument("--labels", help="label file for --model")
    p.add_argument("--source", help="video for --model (default: a generated clip)")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="interpreter threads for --model (default: %(default)s)")
    p.add_argument("--token", help="bearer token of the daemon at --url")
    p.add_argument("--clients", type=_positive_int, default=50,
                   help="concurrent /latest clients (default: %(default)s)")
    p.add_argument("--requests", type=_positive_int, default=20,
                   help="requests per client (default: %(default)s)")
    p.add_argument("--keep-alive", action="store_true",
                   help="each /latest client reuses one connection, as a browser does")
    p.add_argument("--stalled", type=_positive_int, default=20,
                   help="non-reading /stream.mjpg clients (default: %(default)s)")
    p.add_argument("--fps-seconds", type=_positive_float, default=4.0,
                   help="seconds over which the quiet fps is taken (default: %(default)s)")
    p.add_argument("--rounds", type=_positive_int, default=3,
                   help="quiet/loaded fps window pairs, medians reported (default: %(default)s)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--strict", action="store_true", help="exit 3 when a goal is missed")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        knobs = {"clients": args.clients, "requests": args.requests,
                 "stalled": args.stalled, "fps_seconds": args.fps_seconds,
                 "keep_alive": args.keep_alive, "rounds": args.rounds}
        if args.url:
            doc = measure(args.url, args.token, **knobs)
        else:
            if not Path(args.model).is_file():
                raise EdgekitError(f"model not found: {args.model}")
            with tempfile.TemporaryDirectory(prefix="edgekit-http-load-") as tmp:
                source = args.source or str(write_video(Path(tmp) / "clip.avi"))
                with daemon(args.model, source, args.labels, args.threads) as url:
                    doc = measure(url, None, **knobs)
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(text + "\n")
    if args.strict and not all(doc["met"].values()):
        return EXIT_GOAL_MISSED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
