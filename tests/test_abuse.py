"""Abuse suite: hostile models, images, profiles, videos, signals and HTTP requests.

Every input is generated (``benchmarks/abuse/gen.py``, seeded; nothing downloaded) and
goes through the real CLIs as subprocesses: each case asserts one clear ``error:`` line
and exit 1, or correct handling (exit 0); never a traceback, a crash or a hang. A small
fixed sample of model mutants runs here; ``make bench-abuse`` runs the full set.
Bounded: every subprocess has a timeout and a memory cap, every loop a count; two
subprocesses at a time; about 45 CPU-seconds in all (some 130 CLI runs), so about a
minute of wall time on two idle cores. Servers bind 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from benchmarks.abuse import gen
from benchmarks.abuse.runs import MEMORY_LIMIT, Outcome, run_cli, try_mutant
from benchmarks.abuse.signals import signal_run
from tests.conftest import CORAL, ROOT

JOBS = 2  # subprocesses at a time
TIMEOUT = 30.0  # seconds any one CLI run may take
EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


def _say(o: Outcome) -> str:
    return f"rc={o.rc} {o.seconds:.1f}s stderr={list(o.lines)[:6]}"


def assert_clear_error(o: Outcome, *fragments: str) -> str:
    """Exit 1, exactly one stderr line, ``error: ...``, containing every fragment."""
    assert o.rc == EXIT_ERROR, _say(o)
    assert not o.traceback, _say(o)
    assert len(o.lines) == 1 and o.lines[0].startswith("error: "), _say(o)
    for f in fragments:
        assert f.lower() in o.lines[0].lower(), (f, o.lines[0][:400])
    assert len(o.lines[0]) <= 600, f"an error line of {len(o.lines[0])} characters"
    return o.lines[0]


@pytest.fixture(scope="module")
def model(request) -> tuple[Path, Path | None]:
    """(a real model, its labels): Coral's MobileNetV2 when present, else the session's
    tiny trained int8 model."""
    coral = CORAL / "mobilenet_v2_1.0_224_quant.tflite"
    if coral.is_file():
        return coral, CORAL / "imagenet_labels.txt"
    return request.getfixturevalue("exported") / "model_int8.tflite", None


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("abuse")


@pytest.fixture(scope="module")
def photo(work) -> Path:
    path = work / "photo.jpg"
    path.write_bytes(gen.jpeg_bytes(gen.photo(0)))
    return path


@pytest.fixture(scope="module")
def video(work) -> Path:
    from benchmarks.abuse.http_load import write_video

    return write_video(work / "clip.avi", frames=60)


def _labels(model) -> list[str]:
    return ["--labels", str(model[1])] if model[1] else []


# ---------------------------------------------------------------------------------------
# Malformed models through classify and lint


@pytest.fixture(scope="module")
def mutant_results(model, work, photo) -> dict[str, list]:
    """The fixed sample of mutants through classify and lint, two at a time."""
    folder = work / "mutants"
    folder.mkdir()
    cases = gen.sample_mutants(model[0].read_bytes(), seed=0)
    labels = str(model[1]) if model[1] else None
    with ThreadPoolExecutor(JOBS) as pool:
        done = list(pool.map(lambda c: (c, *try_mutant(c, folder, photo, labels, TIMEOUT)),
                             cases))
    out: dict[str, list] = {}
    for case, result, c, lint in done:
        out.setdefault(case.kind, []).append((folder / f"{case.name}{case.suffix}", result,
                                              c, lint))
    return out


# What classify must do with each kind: "error" (the model is refused in one line) or
# "either" (a random flip may land in weights or unused bytes and leave a model that
# still runs: exit 0 is right too).
MUST_REFUSE = {k: "either" if k.startswith("flip_") else "error" for k in gen.SAMPLE_KINDS}


@pytest.mark.parametrize("kind", gen.SAMPLE_KINDS)
def test_malformed_model_is_one_clear_line_in_classify_and_lint(kind, mutant_results):
    results = mutant_results.get(kind)
    if not results:
        pytest.skip(f"this model has no field for {kind}")
    for path, result, c, lint in results:
        where = f"{path.name}: classify {_say(c)}; lint {_say(lint)}"
        assert c.verdict in ("ok", "clear_error"), where
        if MUST_REFUSE[kind] == "error":
            assert_clear_error(c, path.name)
        if c.verdict == "ok":
            assert c.stdout.startswith(f"{photo_name(c)}:"), where
        # lint: a one-line error, or its FAIL/PASS report; never a traceback or a crash,
        # and never PASS for a model the interpreter cannot load.
        assert lint.verdict in ("ok", "clear_error", "fail_report"), where
        if lint.verdict == "clear_error":
            assert_clear_error(lint, path.name)
        assert not result.lint_false_pass, f"lint PASSed a model that does not load: {where}"
        if c.verdict == "clear_error" and "cannot load" in c.lines[0]:
            assert lint.rc == EXIT_ERROR, f"lint accepted a model classify cannot load: {where}"


def photo_name(o: Outcome) -> str:
    return o.argv[-1]


# ---------------------------------------------------------------------------------------
# Image bombs and odd formats through classify

IMAGE_CASES = [c.name for c in gen.image_cases(0)]


@pytest.fixture(scope="module")
def image_results(model, work) -> dict[str, tuple]:
    folder = work / "images"
    folder.mkdir()

    def one(case):
        path = folder / f"{case.name}{case.suffix}"
        path.write_bytes(case.data)
        return case.name, (case, path, run_cli(
            "edge_runtime", "classify", "--model", str(model[0]), *_labels(model), str(path),
            timeout=TIMEOUT, memory_limit=MEMORY_LIMIT))

    with ThreadPoolExecutor(JOBS) as pool:
        return dict(pool.map(one, gen.image_cases(0)))


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_hostile_image(name, image_results):
    case, path, o = image_results[name]
    if case.expect == "error":
        line = assert_clear_error(o, case.fragment, path.name)
        if "bomb" in name or "60000" in name or name.startswith("png_real"):
            assert "limit" in line and "Mpx" in line, line  # names the size and the limit
            assert o.seconds < 10, f"{o.seconds:.1f}s: decoded before refusing?"
    else:
        assert o.rc == 0 and not o.lines, _say(o)
        assert o.stdout.startswith(f"{path}:\n"), o.stdout[:200]


def test_one_bomb_among_good_images_fails_alone(model, work, photo):
    """The good images are still classified; the bomb is one line; exit 1."""
    bomb = work / "among.png"
    bomb.write_bytes(gen.png_header_bomb())
    o = run_cli("edge_runtime", "classify", "--model", str(model[0]), *_labels(model),
                "--json", str(photo), str(bomb), str(photo), timeout=TIMEOUT,
                memory_limit=MEMORY_LIMIT)
    assert_clear_error(o, "60000x60000", "limit", bomb.name)
    docs = [json.loads(ln) for ln in o.stdout.splitlines()]
    assert [d["image"] for d in docs] == [str(photo), str(photo)]


def test_still_image_bomb_as_a_run_source_is_refused(model, work):
    """``run --source`` a PNG: OpenCV's image-sequence reader would decode it whole."""
    bomb = work / "source_bomb.png"
    bomb.write_bytes(gen.png_real_bomb(9000, 9000))
    o = run_cli("edge_runtime", "run", "--model", str(model[0]), "--source", str(bomb),
                "--set", "output.jsonl=off", timeout=TIMEOUT, memory_limit=MEMORY_LIMIT)
    assert o.rc == EXIT_ERROR and not o.traceback, _say(o)
    errors = [ln for ln in o.lines if not ln.startswith("edgekit:")]
    assert len(errors) == 1 and errors[0].startswith("error: "), _say(o)
    assert "9000x9000" in errors[0] and "limit" in errors[0], errors[0]


def test_threads_flag_beyond_the_bound_is_one_clear_line(model, photo):
    o = run_cli("edge_runtime", "classify", "--model", str(model[0]), "--threads", "100000",
                str(photo), timeout=TIMEOUT, memory_limit=MEMORY_LIMIT)
    assert o.rc in (EXIT_ERROR, 2), _say(o)  # a flag validator (usage, 2) or the runtime
    assert len(o.lines) == 1 and o.lines[0].startswith("error: "), _say(o)
    assert "threads" in o.lines[0] and "100000" in o.lines[0], o.lines[0]


# ---------------------------------------------------------------------------------------
# Hostile device profiles through run --config

YAML_CASES = [c.name for c in gen.yaml_cases()]


@pytest.fixture(scope="module")
def yaml_results(model, work, video) -> dict[str, tuple]:
    folder = work / "profiles"
    folder.mkdir()

    def one(case):
        path = folder / f"{case.name}.yaml"
        path.write_text(case.text)
        return case.name, (case, path, run_cli(
            "edge_runtime", "run", "--config", str(path), "--model", str(model[0]),
            "--source", str(video), "--max-frames", "1", "--set", "output.jsonl=off",
            timeout=TIMEOUT, memory_limit=MEMORY_LIMIT))

    with ThreadPoolExecutor(JOBS) as pool:
        return dict(pool.map(one, gen.yaml_cases()))


@pytest.mark.parametrize("name", YAML_CASES)
def test_hostile_profile_is_one_short_clear_line(name, yaml_results):
    case, path, o = yaml_results[name]
    assert_clear_error(o, *case.fragments)
    assert o.seconds < 10, f"{o.seconds:.1f}s for {name}"


@pytest.mark.parametrize("how", ["set", "env"])
def test_threads_100000_from_set_or_environment(how, model, video):
    extra, env = (["--set", "model.threads=100000"], None) if how == "set" else (
        [], {"EDGEKIT_MODEL_THREADS": "100000"})
    o = run_cli("edge_runtime", "run", "--model", str(model[0]), "--source", str(video),
                "--max-frames", "1", "--set", "output.jsonl=off", *extra, env=env,
                timeout=TIMEOUT, memory_limit=MEMORY_LIMIT)
    assert_clear_error(o, "threads", "100000")


# ---------------------------------------------------------------------------------------
# A video whose second half is damaged


def test_damaged_video_counts_unreadable_frames(model, work):
    path = work / "damaged.avi"
    frames, _ = gen.corrupted_video(str(path), frames=120, seed=0)
    out = work / "damaged.jsonl"
    o = run_cli("edge_runtime", "run", "--model", str(model[0]), "--source", str(path),
                "--output", str(out), timeout=60)
    assert o.rc == 0 and not o.traceback, _say(o)
    done = [ln for ln in o.lines if ln.startswith("done: ")]
    assert len(done) == 1, _say(o)
    m = re.match(r"done: (\d+) frames .*; (\d+) frames could not be read", done[0])
    assert m, done[0]
    read, unreadable = int(m[1]), int(m[2])
    assert read + unreadable == frames and 0 < unreadable < frames, done[0]
    assert len(out.read_text().splitlines()) == read
    # Nothing else on stderr: the start line, one warning, the final line.
    others = [ln for ln in o.lines if not ln.startswith(("edgekit:", "done: "))]
    assert len(others) <= 1 and all("could not be read" in ln for ln in others), _say(o)


# ---------------------------------------------------------------------------------------
# Signals at random moments, start-up included

STOP_LINE = {"SIGTERM": re.compile(r"^stopped by (SIGTERM|signal 15)\b"),
             "SIGINT": re.compile(r"^(interrupted \(SIGINT\)|stopped by (SIGINT|signal 2)\b)")}
# Seeded moments in the first second (imports, model load, start-up) and one later.
SIGNAL_CASES = ([("SIGTERM", t) for t in gen.signal_times(4, 0.0, 1.0, seed=1)]
                + [("SIGINT", t) for t in gen.signal_times(3, 0.0, 1.0, seed=2)]
                + [("SIGTERM", 2.5), ("SIGINT", 2.5)])
# The interpreter's own start-up (site, the editable-install finder) runs before any of
# our code and no program can catch a signal there; from the moment the process catches
# SIGTERM (seen in /proc), every moment is fair game. That moment must come before numpy
# and OpenCV load (also seen in /proc: a bound that holds on a slow or busy machine).

@pytest.fixture(scope="module")
def signal_results(model, video) -> dict:
    with ThreadPoolExecutor(JOBS) as pool:
        res = list(pool.map(lambda c: signal_run(model[0], video, getattr(signal, c[0]), c[1],
                                                 after_guard=True), SIGNAL_CASES))
    return dict(zip(SIGNAL_CASES, res))


@pytest.mark.parametrize("case", SIGNAL_CASES, ids=[f"{s}@{t}s" for s, t in SIGNAL_CASES])
def test_signal_at_any_moment_exits_cleanly_in_one_line(case, signal_results):
    r = signal_results[case]
    want = EXIT_INTERRUPTED if r.sig == "SIGINT" else 0
    say = (f"{r.sig} at {r.delay}s (caught from {r.guarded_s}s, numpy/OpenCV from "
           f"{r.heavy_s}s): rc={r.rc} after {r.exit_s}s, stderr={list(r.lines)[-5:]}")
    assert r.guarded_s is not None, say
    assert r.heavy_s is None or r.guarded_s <= r.heavy_s, say
    assert r.rc == want, say
    assert r.exit_s <= 2.0, say
    assert not any("Traceback" in ln or "KeyboardInterrupt" in ln for ln in r.lines), say
    others = [ln for ln in r.lines if not ln.startswith("edgekit:")]
    assert len(others) == 1 and STOP_LINE[r.sig].match(others[0]), say


# ---------------------------------------------------------------------------------------
# HTTP abuse on 127.0.0.1

TOKEN = "s3cret-Token"


class Daemon:
    """``run --http 127.0.0.1:0`` with a bearer token, on a looping video."""

    def __init__(self, model: Path, video: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime", "run", "--model", str(model), "--source",
             str(video), "--loop", "--http", "127.0.0.1:0", "--set", "output.jsonl=off",
             "--set", "camera.realtime=true", "--threads", "1"], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "EDGEKIT_HTTP_TOKEN": TOKEN})
        self.lines: list[str] = []
        started = threading.Event()

        def drain() -> None:
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                if line.startswith(("edgekit:", "error:")):
                    started.set()
            started.set()

        threading.Thread(target=drain, daemon=True).start()
        if not started.wait(60) or not any("http://127.0.0.1:" in ln for ln in self.lines):
            self.proc.kill()
            raise AssertionError("daemon did not start: " + "\n".join(self.lines))
        url = next(ln for ln in self.lines if "http://127.0.0.1:" in ln)
        self.port = int(re.search(r"http://127\.0\.0\.1:(\d+)", url)[1])

    def raw(self, data: bytes, timeout: float = 5.0, limit: int = 1 << 16) -> bytes:
        """Sends ``data`` as is; returns what comes back until close (or ``limit``)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError:  # the server may close on an over-long line mid-send
                pass
            buf = b""
            deadline = time.monotonic() + timeout
            while len(buf) < limit and time.monotonic() < deadline:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, TimeoutError):
                    break
                if not chunk:
                    break
                buf += chunk
            return buf

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes]:
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        resp = self.raw(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                        f"{head}\r\n".encode("latin-1"))
        return status(resp), resp


def status(resp: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", resp)
    return int(m[1]) if m else None


@pytest.fixture(scope="module")
def daemon(model, video):
    d = Daemon(model[0], video)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and d.get("/healthz")[0] != 200:
        time.sleep(0.1)
    yield d
    if d.proc.poll() is None:
        d.proc.kill()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("request_bytes, want", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\n\r\n", 505),
    (b"GET / FTP/1.0\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n", 400),  # TLS
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /latest HTTP/1.1\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", 431),
    (b"GET /latest HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
     + b"\r\n", 431),
    (b"BREW /latest HTTP/1.1\r\n\r\n", 501),
], ids=["garbage", "no-path", "http-9.9", "ftp", "tls-hello", "url-70k", "header-70k",
        "200-headers", "unknown-method"])
def test_malformed_request_gets_its_status(daemon, request_bytes, want):
    resp = daemon.raw(request_bytes)
    assert status(resp) == want, resp[:200]
    assert daemon.proc.poll() is None


@pytest.mark.parametrize("path", [
    "/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd",
    "/static/../../../../etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/..\\..\\..\\etc\\passwd", "/%00/etc/passwd", "/latest/../../../etc/passwd",
    "/stream.mjpg/../../etc/passwd", "/" + "../" * 40 + "etc/passwd",
])
def test_path_traversal_is_404_and_serves_no_file(daemon, path):
    code, resp = daemon.get(path, AUTH)
    assert code == 404, resp[:300]
    assert b"root:" not in resp and b"/bin/" not in resp
    code, resp = daemon.get(path)  # without the token: refused before anything else
    assert code in (401, 404) and b"root:" not in resp, resp[:300]


@pytest.mark.parametrize("headers, query, want", [
    ({}, "", 401),
    ({"Authorization": "Bearer wrong"}, "", 401),
    ({"Authorization": f"Bearer {TOKEN[:-1]}"}, "", 401),
    ({"Authorization": f"Bearer {TOKEN}x"}, "", 401),
    ({"Authorization": "Bearer "}, "", 401),
    ({"Authorization": f"Basic {TOKEN}"}, "", 401),
    ({"Authorization": f"Bearer {TOKEN}\u00ff"}, "", 401),
    ({}, "?token=wrong", 401),
    ({}, "?token=", 401),
    ({}, f"?token={TOKEN}", 200),
    ({"Authorization": f"Bearer {TOKEN}"}, "", 200),
], ids=["none", "wrong", "prefix", "longer", "empty", "basic", "non-ascii", "query-wrong",
        "query-empty", "query-right", "header-right"])
@pytest.mark.parametrize("page", ["/latest", "/metrics", "/"])
def test_token_checks(daemon, page, headers, query, want):
    code, resp = daemon.get(page + query, headers)
    assert code == want, resp[:300]
    if want == 401:
        assert b"WWW-Authenticate: Bearer" in resp and TOKEN.encode() not in resp


def test_stream_and_healthz_token_rules(daemon):
    assert daemon.get("/stream.mjpg")[0] == 401
    assert daemon.get("/stream.mjpg", {"Authorization": "Bearer nope"})[0] == 401
    code, body = daemon.get("/healthz")  # open by design: liveness probes have no token
    assert code == 200 and TOKEN.encode() not in body


def test_non_reading_stream_clients_leave_room_for_a_viewer(daemon):
    from benchmarks.abuse.http_load import viewer_after_stalled

    r = viewer_after_stalled(f"http://127.0.0.1:{daemon.port}/", stalled=20, token=TOKEN,
                             settle_s=1.0, timeout=5.0)
    assert r.status == 200 and r.first_frame_s is not None and r.first_frame_s <= 1.0, r


def test_daemon_survives_the_abuse_and_stops_cleanly(daemon):
    """Runs last in this module: after every request above, /latest still answers and
    SIGTERM still ends the daemon with status 0 in one line."""
    code, resp = daemon.get("/latest", AUTH)
    assert code == 200, resp[:300]
    doc = json.loads(resp.split(b"\r\n\r\n", 1)[1])
    assert doc["frames_total"] > 0
    t0 = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    rc = daemon.proc.wait(10)
    took = time.monotonic() - t0
    time.sleep(0.1)  # the drain thread reads the last line
    text = "\n".join(daemon.lines)
    assert rc == 0 and took <= 2.0, (rc, took, text[-500:])
    assert "Traceback" not in text, text[-2000:]


# ---------------------------------------------------------------------------------------
# The generators themselves


def test_generators_are_seeded_pure_and_hit_their_fields(model):
    data = model[0].read_bytes()
    a, b = gen.sample_mutants(data, seed=0), gen.sample_mutants(data, seed=0)
    assert [(c.name, c.data) for c in a] == [(c.name, c.data) for c in b]
    assert [c.data for c in gen.flip_mutants(data, 1, 2)] != [
        c.data for c in gen.flip_mutants(data, 2, 2)]
    assert model[0].read_bytes() == data  # the source model is never written to
    # A structural mutant differs from the model only in the 1-4 bytes of its field.
    for c in gen.structural_mutants(data, 0, 1):
        if c.kind in ("struct_subgraph_input_index", "struct_input_dim_huge"):
            diff = np.flatnonzero(np.frombuffer(data, np.uint8) != np.frombuffer(c.data, np.uint8))
            assert 1 <= len(diff) <= 4 and diff[-1] - diff[0] < 4, (c.name, diff)
    assert gen.png_header_bomb()[16:24] == (60000).to_bytes(4, "big") * 2
    assert len(gen.png_real_bomb(9000, 9000)) < 200_000
    assert gen.signal_times(5, 0, 1, 3) == gen.signal_times(5, 0, 1, 3)
