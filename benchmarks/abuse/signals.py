"""Signals at random moments of the daemon's start-up and run: does it exit cleanly, how
fast, and from when does it catch SIGTERM (Linux ``/proc``)."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import gen
from .runs import ROOT, stderr_lines


@dataclass(frozen=True)
class SignalResult:
    """One signal sent ``delay`` s after start: exit status, seconds from the signal to
    the exit, the stderr lines, and ``guarded_s``: when the process was first seen
    catching SIGTERM (its handlers installed; None: not seen before the signal) and
    ``heavy_s``: when numpy or OpenCV was first seen loaded (handlers must come first)."""

    sig: str
    delay: float
    rc: int | None
    exit_s: float
    lines: tuple[str, ...] = field(default_factory=tuple)
    guarded_s: float | None = None
    heavy_s: float | None = None  # when numpy's or OpenCV's library was first mapped

    @property
    def clean(self) -> bool:
        """Status 0 (SIGTERM) or 130 (SIGINT), no traceback, within 2 s, and exactly one
        line besides the daemon's start-up line."""
        want = 130 if self.sig == "SIGINT" else 0
        others = [ln for ln in self.lines if not ln.startswith("edgekit:")]
        return (self.rc == want and self.exit_s <= 2.0 and len(others) == 1
                and not any("Traceback" in ln for ln in self.lines))


def catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux ``/proc``; False elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


HEAVY = ("_multiarray_umath", "/cv2/")  # numpy's and OpenCV's shared libraries


def loaded_heavy(pid: int) -> bool:
    """Whether process ``pid`` has numpy or OpenCV mapped (Linux ``/proc``)."""
    try:
        with open(f"/proc/{pid}/maps") as fh:
            text = fh.read()
    except OSError:
        return False
    return any(h in text for h in HEAVY)


def signal_run(model: Path, video: Path, sig: int, delay: float,
               extra: tuple[str, ...] = (), wait: float = 10.0,
               after_guard: bool = False) -> SignalResult:
    """Starts ``run --loop`` on ``video``, sends ``sig`` after ``delay`` s, times the exit.

    Until the signal is sent, ``/proc`` is polled (every ~2 ms) for the moment the process
    starts catching SIGTERM. ``after_guard``: never send before that moment (the first
    tens of milliseconds are the interpreter's own start-up, before any of our code runs;
    no program can catch a signal there).
    """
    argv = [sys.executable, "-m", "edge_runtime", "run", "--model", str(model), "--source",
            str(video), "--loop", "--set", "output.jsonl=off", *extra]
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        t_start = time.monotonic()
        guarded = heavy = None
        deadline = t_start + 30.0  # bounded even when after_guard waits for a guard
        while time.monotonic() < deadline and p.poll() is None:
            now = time.monotonic() - t_start
            if guarded is None and catches(p.pid, signal.SIGTERM):
                guarded = now
            if heavy is None and loaded_heavy(p.pid):
                heavy = now
            if now >= delay and (guarded is not None or not after_guard):
                break
            time.sleep(0.002)
        t0 = time.monotonic()
        sent_at = t0 - t_start
        p.send_signal(sig)
        try:
            rc = p.wait(wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = None
        took = time.monotonic() - t0
        err.seek(0)
        lines = stderr_lines(err.read().decode("utf-8", "replace"))
    return SignalResult(signal.Signals(sig).name, round(sent_at, 3), rc, round(took, 3),
                        lines, None if guarded is None else round(guarded, 3),
                        None if heavy is None else round(heavy, 3))


def bench_signals(model: Path, video: Path, n: int, seed: int, jobs: int) -> dict:
    """``n`` SIGTERMs at seeded moments in 0-5 s."""
    times = gen.signal_times(n, 0.0, 5.0, seed)
    with ThreadPoolExecutor(jobs) as pool:
        res = list(pool.map(lambda d: signal_run(model, video, signal.SIGTERM, d), times))
    unclean = [asdict(r) for r in res if not r.clean]
    exits = [r.exit_s for r in res]
    guards = [r.guarded_s for r in res if r.guarded_s is not None]
    return {"sent": n, "clean": sum(r.clean for r in res), "unclean": unclean,
            "unclean_before_guard": sum(1 for r in res if not r.clean and r.guarded_s is None),
            "max_exit_s": max(exits), "median_exit_s": statistics.median(exits),
            "rc_counts": {str(k): sum(r.rc == k for r in res) for k in {r.rc for r in res}},
            "guard_s": {"median": statistics.median(guards) if guards else None,
                        "max": max(guards, default=None)}}
