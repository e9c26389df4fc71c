"""edgekit on-device benchmark step: ``python -m benchmarks`` on the active release.

Shipped and run by deploy/playbook-bench.yml (``python -m deploy bench-fleet``, ``make
bench-fleet``) with the device's python3, standard library only; it runs itself again with
the device's edgekit venv (``~/edgekit/venv``), which has the benchmarks.

    python3 bench_remote.py NAME EMULATED STAGE

NAME labels the device in the reports (the inventory host); EMULATED is the inventory's
``edgekit_emulated`` (``auto``: detected on the device, benchmarks/environment.py). The
plan is the file's last line, ``# edgekit-plan: BASE64(JSON)``: {"runs", "warmup",
"threads" (null: every core), "timeout_s"}. The benchmark writes into
``~/edgekit/bench/STAGE`` (removed afterwards) and is killed, with its workers, after
``timeout_s``. The last line on stdout is ``EDGEKIT-BENCH {json}``: release, seconds,
results (the device's results.json), or error (exit status 1).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time

HOME = os.path.expanduser("~")
EK = os.path.join(HOME, "edgekit")
PLAN_MARK = "# edgekit-plan: "


def emit(doc: dict) -> None:
    print("EDGEKIT-BENCH " + json.dumps(doc, separators=(",", ":")))


def _plan() -> dict:
    with open(os.path.abspath(__file__), encoding="utf-8") as f:
        lines = [ln for ln in f.read().splitlines() if ln.startswith(PLAN_MARK)]
    return json.loads(base64.b64decode(lines[-1][len(PLAN_MARK):])) if lines else {}


def _why(stderr: str, rc: int) -> str:
    """The benchmark's own one-line error, else the last line it wrote."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    text = (errors or lines or [f"exit status {rc}"])[-1]
    return f"benchmark failed (status {rc}): {text[:300]}"


def _measure(name: str, emulated: str, stage: str, plan: dict) -> dict:
    current = os.path.join(EK, "current")
    release = os.path.basename(os.path.realpath(current))
    out = os.path.join(EK, "bench", stage)
    argv = [sys.executable, "-m", "benchmarks", "measure", current, "--out", out,
            "--threads", str(plan.get("threads") or os.cpu_count() or 1),
            "--runs", str(plan.get("runs", 50)), "--warmup", str(plan.get("warmup", 5)),
            "--video", "none", "--device-name", name]
    env = dict(os.environ)
    if emulated.lower() not in ("", "auto"):
        env["EDGEKIT_EMULATED"] = emulated
    timeout = float(plan.get("timeout_s", 600))
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=current, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the benchmark and its worker processes
        proc.communicate()
        shutil.rmtree(out, ignore_errors=True)
        return {"release": release, "error": f"benchmark still running after {timeout:g} s "
                "(--timeout): stopped"}
    seconds = round(time.monotonic() - t0, 1)
    try:
        if proc.returncode != 0:
            return {"release": release, "seconds": seconds, "error": _why(err, proc.returncode)}
        with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        return {"release": release, "seconds": seconds,
                "error": f"benchmark wrote no readable results.json ({e})"}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"release": release, "seconds": seconds, "results": results}


def main() -> int:
    given = sys.argv[1:4]
    name, emulated, stage = given + ["", "auto", "bench"][len(given):]
    py = os.path.join(EK, "venv", "bin", "python")
    if not os.path.isdir(os.path.join(EK, "current", "model")):  # (~/edgekit/venv links in it)
        emit({"error": "no release in ~/edgekit/current (deploy one first)"})
        return 1
    if os.environ.get("EDGEKIT_BENCH_REEXEC") != "1":
        if not os.path.exists(py):
            emit({"error": "no edgekit venv on the device (~/edgekit/venv): deploy first"})
            return 1
        os.environ["EDGEKIT_BENCH_REEXEC"] = "1"
        os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])
    doc = _measure(name, emulated, stage, _plan())
    emit(doc)
    return 1 if doc.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
