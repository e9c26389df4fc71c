"""The abuse suite's runs through the real CLIs (subprocesses, each with a timeout and an
address-space cap) and how each ended: malformed models, image bombs, hostile profiles."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from . import gen

ROOT = Path(__file__).resolve().parents[2]
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



def bench_http(model: Path, video: Path, labels: str | None) -> dict:
    """``benchmarks.abuse.http_load`` against a daemon on 127.0.0.1."""
    from .http_load import daemon, measure

    with daemon(str(model), str(video), labels, threads=1) as url:
        return measure(url)
