"""Abuse benchmark: hostile models, images, profiles, signals and HTTP load, counted.

Usage:
    python -m benchmarks.abuse --model MODEL.tflite [--labels L] [--out runs/abuse.json]
        [--only mutants,images,yaml,signals,http] [--signals 100] [--jobs 2] [--seed 0]

Everything is generated here (``benchmarks/abuse_gen.py``; nothing is downloaded) and run
through the real CLIs as subprocesses; servers bind 127.0.0.1 only. Measured:

* mutants: the full malformed-model set (a few hundred) through ``edge_runtime classify``
  and ``convert lint``: tried / clear errors (exit 1, one ``error:`` line) / ran (exit 0) /
  crashes (killed by a signal) / tracebacks / unclear (other stderr) / timeouts, and lint
  PASSes of models the interpreter cannot load;
* images and profiles: image bombs and odd formats through ``classify``, YAML bombs,
  duplicate keys and huge numbers through ``run --config`` (outcome, seconds, longest
  stderr line);
* signals: ``--signals`` SIGTERMs at seeded random moments 0-5 s after ``run`` starts on a
  video: clean exits (status 0, one stop line, no traceback), the slowest exit, and when
  the process starts catching SIGTERM (before that, the interpreter's own start-up);
* http: ``benchmarks.http_load`` (50 loopback clients x 20 requests of /latest while the
  daemon classifies: timeouts, p50/p99, fps loaded vs quiet; 20 non-reading stream clients
  then a viewer: time to its first frame).

Writes one JSON document atomically (``--out``) and prints a summary. Exit status: 0
measured, 1 error, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_runtime.errors import EXIT_ERROR, EXIT_OK, EdgekitError, Parser
from edge_runtime.fileio import atomic_path

from . import abuse_gen as gen

ROOT = Path(__file__).resolve().parents[1]
# Lines the LiteRT interpreter itself prints on creating its CPU delegate: not ours.
NOISE = ("INFO: Created TensorFlow Lite XNNPACK delegate",
         "INFO: Initialized TensorFlow Lite runtime")
MEMORY_LIMIT = 3 << 30  # address space for one image or profile case
LOADS = ("import sys\nfrom ai_edge_litert.interpreter import Interpreter\n"
         "Interpreter(model_path=sys.argv[1]).allocate_tensors()\n")


@dataclass(frozen=True)
class Outcome:
    """One CLI run: exit status, seconds, stderr lines (interpreter noise removed)."""

    argv: tuple[str, ...]
    rc: int | None  # None: timed out (killed)
    seconds: float
    lines: tuple[str, ...]
    stdout: str = ""

    @property
    def traceback(self) -> bool:
        return any(ln.startswith("Traceback") for ln in self.lines)

    @property
    def verdict(self) -> str:
        """timeout | crash (killed by a signal or 128+) | traceback | ok (exit 0) |
        fail_report (lint: exit 1, a FAIL report on stdout, nothing on stderr) |
        clear_error (non-zero, exactly one ``error:`` line) | unclear."""
        if self.rc is None:
            return "timeout"
        if self.rc < 0 or self.rc > 128:
            return "crash"
        if self.traceback:
            return "traceback"
        if self.rc == 0:
            return "ok"
        if self.rc == 1 and not self.lines and "FAIL" in self.stdout:
            return "fail_report"  # lint's verdict on stdout: the model will not map
        if len(self.lines) == 1 and self.lines[0].startswith("error: "):
            return "clear_error"
        return "unclear"

    def brief(self) -> dict:
        """JSON-ready: verdict, rc, seconds and the first stderr lines (cut short)."""
        return {"verdict": self.verdict, "rc": self.rc, "seconds": round(self.seconds, 3),
                "stderr": [ln[:300] for ln in self.lines[:4]],
                "longest_line": max((len(ln) for ln in self.lines), default=0)}


def stderr_lines(text: str) -> tuple[str, ...]:
    """Non-empty stderr lines without the interpreter's own start-up notices."""
    return tuple(ln for ln in text.splitlines() if ln.strip() and not ln.startswith(NOISE))


def _address_space(limit: int | None):
    if limit is None:
        return None

    def cap() -> None:  # in the child, before exec
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return cap


def run_cli(*args: str, timeout: float = 60.0, env: dict | None = None,
            memory_limit: int | None = None) -> Outcome:
    """``python -m ARGS`` from the project root; a run past ``timeout`` is killed.

    ``memory_limit`` (bytes of address space) keeps an unguarded bomb from taking the
    machine down with it: it fails inside the limit instead.
    """
    argv = (sys.executable, "-m", *args)
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=timeout,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
                           preexec_fn=_address_space(memory_limit))
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"").decode("utf-8", "replace")
        return Outcome(argv, None, time.monotonic() - t0, stderr_lines(err))
    return Outcome(argv, p.returncode, time.monotonic() - t0,
                   stderr_lines(p.stderr.decode("utf-8", "replace")),
                   _ends(p.stdout.decode("utf-8", "replace")))


def _ends(text: str, n: int = 1000) -> str:
    return text if len(text) <= 2 * n else text[:n] + "\n...\n" + text[-n:]


def model_loads(path: str | Path, timeout: float = 60.0) -> bool:
    """Whether the LiteRT interpreter builds and allocates the model (in a subprocess:
    a malformed model may crash the process that loads it)."""
    try:
        p = subprocess.run([sys.executable, "-c", LOADS, str(path)], capture_output=True,
                           timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return False
    return p.returncode == 0


@dataclass
class MutantResult:
    """A mutant through ``classify`` and ``lint``; ``lint_false_pass``: lint exited 0 on a
    model the interpreter cannot load."""

    name: str
    kind: str
    size: int
    classify: dict
    lint: dict
    lint_false_pass: bool = False


def try_mutant(case: gen.Case, folder: Path, image: Path, labels: str | None = None,
               timeout: float = 60.0, keep: bool = True
               ) -> tuple[MutantResult, Outcome, Outcome]:
    """Writes ``case`` into ``folder`` and runs it through classify and lint (the file is
    removed afterwards unless ``keep``; the seed regenerates it)."""
    path = folder / f"{case.name}{case.suffix}"
    path.write_bytes(case.data)
    extra = ["--labels", labels] if labels else []
    try:
        c = run_cli("edge_runtime", "classify", "--model", str(path), *extra, str(image),
                    timeout=timeout, memory_limit=MEMORY_LIMIT)
        lint = run_cli("convert", "lint", str(path), timeout=timeout)
        false_pass = lint.rc == 0 and not model_loads(path, timeout)
    finally:
        if not keep:
            path.unlink()
    return (MutantResult(case.name, case.kind, len(case.data), c.brief(), lint.brief(),
                         false_pass), c, lint)


def _count(results: list[MutantResult], key: str) -> dict:
    counts = {"tried": len(results), "clear_error": 0, "fail_report": 0, "ok": 0, "crash": 0,
              "traceback": 0, "unclear": 0, "timeout": 0}
    for r in results:
        counts[getattr(r, key)["verdict"]] += 1
    return counts


def bench_mutants(model: Path, work: Path, labels: str | None, seed: int, jobs: int,
                  scale: int = 1) -> dict:
    """The full mutant set through classify and lint."""
    cases = gen.model_mutants(model.read_bytes(), seed, scale)
    image = work / "photo.jpg"
    image.write_bytes(gen.jpeg_bytes(gen.photo(seed)))
    folder = work / "mutants"
    folder.mkdir(exist_ok=True)
    t0 = time.monotonic()
    with ThreadPoolExecutor(jobs) as pool:
        results = [r for r, _, _ in pool.map(
            lambda c: try_mutant(c, folder, image, labels, keep=False), cases)]
    bad = [asdict(r) for r in results
           if r.classify["verdict"] not in ("ok", "clear_error")
           or r.lint["verdict"] not in ("ok", "clear_error", "fail_report")
           or r.lint_false_pass]
    return {"model": str(model), "seconds": round(time.monotonic() - t0, 1),
            "classify": _count(results, "classify"), "lint": _count(results, "lint"),
            "lint_false_pass": sum(r.lint_false_pass for r in results),
            "kinds": sorted({r.kind for r in results}), "failures": bad}


def bench_images(model: Path, work: Path, labels: str | None, seed: int) -> dict:
    """Image bombs and odd formats through classify (with a 400 Mpx real PNG bomb)."""
    out = {}
    for case in gen.image_cases(seed, bomb_px=(20000, 20000)):
        path = work / f"{case.name}{case.suffix}"
        path.write_bytes(case.data)
        extra = ["--labels", labels] if labels else []
        o = run_cli("edge_runtime", "classify", "--model", str(model), *extra, str(path),
                    timeout=120, memory_limit=MEMORY_LIMIT)
        want = "clear_error" if case.expect == "error" else "ok"
        out[case.name] = {"expect": case.expect, "bytes": len(case.data), **o.brief(),
                          "as_expected": o.verdict == want}
        path.unlink()
    return out


def bench_yaml(model: Path, work: Path, video: Path) -> dict:
    """Hostile profiles through ``run --config``."""
    out = {}
    for case in gen.yaml_cases():
        path = work / f"{case.name}.yaml"
        path.write_text(case.text)
        o = run_cli("edge_runtime", "run", "--config", str(path), "--model", str(model),
                    "--source", str(video), "--max-frames", "1", timeout=60,
                    memory_limit=MEMORY_LIMIT)
        line = o.lines[0].lower() if o.lines else ""
        out[case.name] = {"expect": list(case.fragments), **o.brief(),
                          "as_expected": o.verdict == "clear_error"
                          and all(f.lower() in line for f in case.fragments)}
    return out


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
    guards = sorted(r.guarded_s for r in res if r.guarded_s is not None)
    return {"sent": n, "clean": sum(r.clean for r in res), "unclean": unclean,
            "unclean_before_guard": sum(1 for r in res if not r.clean and r.guarded_s is None),
            "max_exit_s": max(exits), "median_exit_s": sorted(exits)[len(exits) // 2],
            "rc_counts": {str(k): sum(r.rc == k for r in res) for k in {r.rc for r in res}},
            "guard_s": {"median": guards[len(guards) // 2] if guards else None,
                        "max": guards[-1] if guards else None}}


def bench_http(model: Path, video: Path, labels: str | None) -> dict:
    """``benchmarks.http_load`` against a daemon on 127.0.0.1."""
    from .http_load import daemon, measure

    with daemon(str(model), str(video), labels, threads=1) as url:
        return measure(url)


SECTIONS = ("mutants", "images", "yaml", "signals", "http")


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``python -m benchmarks.abuse``."""
    p = Parser(prog="python -m benchmarks.abuse", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a real .tflite classifier")
    p.add_argument("--labels", default=None, help="its label file (when no manifest)")
    p.add_argument("--out", type=Path, default=Path("runs/abuse.json"), help="JSON results")
    p.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
    p.add_argument("--signals", type=int, default=100, help="SIGTERMs to send")
    p.add_argument("--jobs", type=int, default=2, help="subprocesses at a time")
    p.add_argument("--scale", type=int, default=1, help="multiplies the random mutants")
    p.add_argument("--seed", type=int, default=0, help="seed of every generator")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    try:
        if unknown:
            raise EdgekitError(f"--only {sorted(unknown)}, expected some of {list(SECTIONS)}")
        if not args.model.is_file():
            raise EdgekitError(f"model not found: {args.model}")
        if not 1 <= args.jobs <= 16 or not 1 <= args.signals <= 1000:
            raise EdgekitError("--jobs must be 1..16 and --signals 1..1000")
        doc: dict = {"model": str(args.model), "seed": args.seed, "cpus": os.cpu_count(),
                     "machine": platform.machine(), "python": platform.python_version(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with tempfile.TemporaryDirectory(prefix="edgekit-abuse-") as tmp:
            work = Path(tmp)
            video = Path(work / "clip.avi")
            from .http_load import write_video

            write_video(video, frames=90)
            for section in only:
                t0 = time.monotonic()
                print(f"abuse: {section} ...", file=sys.stderr, flush=True)
                if section == "mutants":
                    doc[section] = bench_mutants(args.model, work, args.labels, args.seed,
                                                 args.jobs, args.scale)
                elif section == "images":
                    doc[section] = bench_images(args.model, work, args.labels, args.seed)
                elif section == "yaml":
                    doc[section] = bench_yaml(args.model, work, video)
                elif section == "signals":
                    doc[section] = bench_signals(args.model, video, args.signals, args.seed,
                                                 args.jobs)
                else:
                    doc[section] = bench_http(args.model, video, args.labels)
                doc.setdefault("seconds", {})[section] = round(time.monotonic() - t0, 1)
        with atomic_path(args.out) as tmp_out:
            tmp_out.write_text(json.dumps(doc, indent=2) + "\n")
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(summary(doc), indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return EXIT_OK


def summary(doc: dict) -> dict:
    """The headline numbers of a results document."""
    s: dict = {}
    if "mutants" in doc:
        m = doc["mutants"]
        s["mutants"] = {k: m[k] for k in ("classify", "lint", "lint_false_pass")}
    for name in ("images", "yaml"):
        if name in doc:
            s[name] = {"cases": len(doc[name]),
                       "as_expected": sum(v["as_expected"] for v in doc[name].values()),
                       "not": {k: v["verdict"] for k, v in doc[name].items()
                               if not v["as_expected"]}}
    if "signals" in doc:
        g = doc["signals"]
        s["signals"] = {k: g[k] for k in ("sent", "clean", "unclean_before_guard", "max_exit_s",
                                          "rc_counts", "guard_s")}
    if "http" in doc:
        h = doc["http"]
        s["http"] = {"quiet_fps": h["quiet_fps"], "loaded_fps": h["loaded_fps"],
                     "timeouts": h["latest"]["timeouts"], "errors": h["latest"]["errors"],
                     "p50_ms": h["latest"]["p50_ms"], "p99_ms": h["latest"]["p99_ms"],
                     "viewer_first_frame_s": h["stream"]["first_frame_s"],
                     "viewer_status": h["stream"]["status"]}
    return s


if __name__ == "__main__":
    sys.exit(main())
