"""SIGTERM and SIGINT at several moments through the real CLIs (subprocesses, bounded).

Each CLI installs its handlers before anything heavy loads; from then on a signal ends
the process with one line on stderr and status 0 (SIGTERM) or 130 (SIGINT), never a
traceback or a bare -15. The moment is taken from the child itself: the test waits until
``/proc/PID/status`` shows SIGTERM caught (the handlers are in), then waits the given
delay, so "during the imports" is hit on a loaded machine too. Only the interpreter's
own start-up (before any edgekit code runs) is outside what a program can handle.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, error_lines

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="reads signal dispositions from /proc")

STOP_LINE = {signal.SIGTERM: re.compile(r"^stopped by (SIGTERM|signal 15)\b"),
             signal.SIGINT: re.compile(r"^(interrupted \(SIGINT\)|stopped by signal 2\b)")}
WANT = {signal.SIGTERM: 0, signal.SIGINT: 130}
WAIT_S = 20.0  # bound on every wait: a start-up on a loaded 2-core machine, then the exit


def _caught(pid: int) -> int:
    """The child's caught-signals mask (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(re.search(r"^SigCgt:\s*([0-9a-f]+)", text, re.M)[1], 16)


def signal_cli(argv: list[str], sig: int, delay: float,
               ready: Path | None = None) -> tuple[int | None, list[str], float]:
    """Runs ``python -m ARGV``; once its SIGTERM handler is in (and ``ready`` exists and is
    non-empty, when given) waits ``delay`` s and sends ``sig``. Returns the status, the
    stderr lines that are not log noise, and the seconds from the signal to the exit."""
    p = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        deadline = time.monotonic() + WAIT_S
        while not (_caught(p.pid) >> (signal.SIGTERM - 1)) & 1 or (
                ready is not None and not (ready.exists() and ready.stat().st_size)):
            assert p.poll() is None, f"exited {p.returncode} first: {p.stderr.read()[-800:]}"
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.002)
        time.sleep(delay)
        t0 = time.monotonic()
        p.send_signal(sig)
        _, err = p.communicate(timeout=WAIT_S)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return p.returncode, error_lines(err), took


def assert_clean_stop(sig: int, rc: int | None, lines: list[str], took: float) -> None:
    say = f"{signal.Signals(sig).name}: rc={rc} after {took:.2f}s, stderr={lines[-6:]}"
    assert rc == WANT[sig], say
    assert not any("Traceback" in ln or "KeyboardInterrupt" in ln for ln in lines), say
    others = [ln for ln in lines if not ln.startswith("edgekit:")]
    assert len(others) == 1 and STOP_LINE[sig].match(others[0]), say
    assert took < 5.0, say


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 20-frame 96x96 MJPEG video (played with --loop, so it never ends by itself)."""
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20, (96, 96))
    for i in range(20):
        out.write(np.full((96, 96, 3), i * 12, np.uint8))
    out.release()
    return path


def _run_argv(coral: Path, clip: Path, *extra: str) -> list[str]:
    return ["edge_runtime", "run", "--model", str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
            "--source", str(clip), "--loop", *extra]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("delay", [0.0, 0.1, 0.4], ids=["imports", "+0.1s", "+0.4s"])
def test_runtime_start_up(coral, clip, sig, delay):
    rc, lines, took = signal_cli(_run_argv(coral, clip, "--set", "output.jsonl=off"), sig,
                                 delay)
    assert_clean_stop(sig, rc, lines, took)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_runtime_while_classifying(coral, clip, tmp_path, sig):
    out = tmp_path / "out.jsonl"
    rc, lines, took = signal_cli(_run_argv(coral, clip, "--output", str(out)), sig, 0.0,
                                 ready=out)
    assert_clean_stop(sig, rc, lines, took)
    assert re.match(rf"stopped by signal {int(sig)}: \d+ frames", lines[-1]), lines


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two tiny classes of images: enough for train to start loading TensorFlow."""
    root = tmp_path_factory.mktemp("photos")
    for c, value in (("dark", 30), ("light", 220)):
        (root / c).mkdir()
        for i in range(6):
            cv2.imwrite(str(root / c / f"{i}.png"), np.full((40, 40, 3), value + i, np.uint8))
    return root


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("which", ["train", "convert", "benchmarks"])
def test_other_clis_during_start_up(which, sig, coral, photos, tmp_path):
    model = coral / "mobilenet_v2_1.0_224_quant.tflite"
    argv = {
        # Each stays busy for seconds: TensorFlow's import, or thousands of timed runs.
        "train": ["train", "--data", str(photos), "--out", str(tmp_path / "run"),
                  "--weights", "none", "--img-size", "32", "--alpha", "0.35"],
        "convert": ["convert", str(tmp_path / "missing.keras"), "--labels",
                    str(tmp_path / "l.txt"), "--img-size", "32"],
        "benchmarks": ["benchmarks", "validate", str(model), "--runs", "100000"],
    }[which]
    rc, lines, took = signal_cli(argv, sig, 0.05)
    assert_clean_stop(sig, rc, lines, took)


def test_heavy_modules_load_only_after_the_handlers():
    """``python -X importtime``: nothing heavy is imported before the package (and its
    light ``errors`` module, whose handlers ``__main__`` installs first) has loaded."""
    heavy = ("numpy", "cv2", "yaml", "ai_edge_litert", "tensorflow", "PIL")
    for package in ("edge_runtime", "convert", "benchmarks", "train"):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", package, "--help"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-500:]
        names = [ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines()
                 if ln.startswith("import time:")]
        assert package in names and "edge_runtime.errors" in names, package
        before = names[:names.index(package) + 1]
        assert not [n for n in before if n.split(".")[0] in heavy], (package, before)


HANGING_CLEANUP = r"""
import time
from edge_runtime.errors import exit_with, install_signal_handlers
install_signal_handlers()
def main():
    try:
        print("ready", flush=True)
        time.sleep(30)
    finally:
        print("cleaning", flush=True)
        time.sleep(30)  # a clean-up that hangs
    return 1
exit_with(main)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_second_signal_ends_a_hanging_clean_up_at_once(sig):
    p = subprocess.Popen([sys.executable, "-c", HANGING_CLEANUP], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        p.send_signal(sig)
        # The child says when the first signal is being handled: a second one sent before
        # that could merge with it (signals do not queue) on a loaded machine.
        assert p.stdout.readline() == "cleaning\n"
        t0 = time.monotonic()
        p.send_signal(sig)
        _, err = p.communicate(timeout=WAIT_S)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == WANT[sig] and took < 5.0, (p.returncode, err)
    assert err.splitlines() == [("interrupted (SIGINT)" if sig == signal.SIGINT
                                 else "stopped by SIGTERM")]


WRAPPED_INTERRUPT = r"""
import os, signal, sys, time
from edge_runtime.errors import exit_with, install_signal_handlers
install_signal_handlers()
def load_library():
    try:
        os.kill(os.getpid(), signal.%s)  # lands inside a C module's import ...
        time.sleep(5)
    except KeyboardInterrupt as e:  # ... which reports it as a broken install, as numpy's does
        raise ImportError("\n\nIMPORTANT: PLEASE READ THIS FOR ADVICE\n  bad install\n") from e
def main():
    load_library()
    return 1
exit_with(main)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_a_library_turned_into_its_own_error_still_stops_cleanly(sig):
    """Ctrl-C inside numpy's import once printed numpy's multi-line advice and exited 1."""
    r = subprocess.run([sys.executable, "-c", WRAPPED_INTERRUPT % signal.Signals(sig).name],
                       cwd=ROOT, capture_output=True, text=True, timeout=WAIT_S)
    assert (r.returncode, r.stderr) == (WANT[sig], {signal.SIGINT: "interrupted (SIGINT)\n",
                                                    signal.SIGTERM: "stopped by SIGTERM\n"}[sig])


def test_an_error_with_no_signal_behind_it_is_not_taken_for_one():
    r = subprocess.run([sys.executable, "-c", WRAPPED_INTERRUPT.replace(
        "os.kill(os.getpid(), signal.%s)", "raise KeyboardInterrupt")
        .replace("install_signal_handlers()\n", "")], cwd=ROOT, capture_output=True,
        text=True, timeout=WAIT_S)
    assert r.returncode == 1 and "IMPORTANT: PLEASE READ" in r.stderr, r.stderr[-300:]
