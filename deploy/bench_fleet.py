"""Benchmarks on the fleet: ``python -m benchmarks`` on each device's active release, over
the deploy's Ansible/SSH path, merged at home into one cross-device report.

One run of ``deploy/playbook-bench.yml`` for every host at once (``--forks`` at a time):
each device runs ``deploy/bench_remote.py``, which measures every model of
``~/edgekit/current`` (one row per variant at all its cores, accuracy on the release's
held-out images) with its own environment captured there, within ``timeout_s``. The
results come back in the task's output (no second round trip) and are written to
``OUT/<host>/results.json`` with that device's report; then every ``OUT/*/results.json``
(this run's and earlier ones') and the ``include``d results are merged into ``OUT/``
(results.json, results.csv, report.md, plots).
"""

from __future__ import annotations

import base64
import json
import math
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgekitError

from .collect import safe_name
from .core import Target, ansible, describe_unreachable, inventory_hosts

HERE = Path(__file__).resolve().parent
PLAYBOOK = HERE / "playbook-bench.yml"
REMOTE_SCRIPT = HERE / "bench_remote.py"
MARK = "EDGEKIT-BENCH "


@dataclass
class HostBench:
    """What bench-fleet got from one host (``error``: no results from it)."""

    host: str
    release: str = ""
    seconds: float | None = None
    variants: list[str] = field(default_factory=list)
    rows: int = 0
    top1: dict[str, float | None] = field(default_factory=dict)
    emulated: str | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """True when the host's results came home."""
        return not self.error

    def line(self) -> str:
        """``host: N rows (variant top-1 ...), release R, S s on the device[, emulated]``
        or ``host: why``."""
        if self.error:
            return f"{self.host}: {self.error}"
        acc = ", ".join(f"{v} top-1 {'-' if t is None else f'{t:.3f}'}"
                        for v, t in self.top1.items())
        return (f"{self.host}: {self.rows} row(s) ({acc}), release {self.release or '?'}, "
                f"{self.seconds} s on the device" + (", EMULATED" if self.emulated else ""))


def _answers(folder: Path) -> dict[str, dict]:
    """The ``edgekit: bench`` task's result by host, with ``doc``: its EDGEKIT-BENCH line."""
    out: dict[str, dict] = {}
    for f in sorted(folder.glob("*.jsonl")):
        for text in f.read_text().splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            out[line["host"]] = line
    for res in out.values():
        docs = [ln[len(MARK):] for ln in (res.get("stdout") or "").splitlines()
                if ln.startswith(MARK)]
        try:
            res["doc"] = json.loads(docs[-1]) if docs else {}
        except json.JSONDecodeError:
            res["doc"] = {}
    return out


def _host_result(host: str, res: dict, ssh_args: str) -> tuple[HostBench, dict | None]:
    """One host's summary and its results (None when it has none)."""
    if res.get("status") == "unreachable":
        return HostBench(host, error=describe_unreachable(res.get("msg", ""), res.get("addr", ""),
                                                          res.get("port"), ssh_args)), None
    doc = res["doc"]
    r = HostBench(host, release=doc.get("release") or "", seconds=doc.get("seconds"))
    if doc.get("error"):
        r.error = f"not benchmarked: {doc['error']}"
        return r, None
    results = doc.get("results")
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        tail = " ".join((res.get("stderr") or res.get("msg") or "").split())[-200:]
        r.error = (f"the device's bench step failed (status {res.get('rc')}): "
                   f"{'timed out' if 'time frame' in tail else tail or '?'}")
        return r, None
    rows = results["rows"]
    r.rows, r.variants = len(rows), list(dict.fromkeys(row.get("variant") for row in rows))
    r.top1 = {row.get("variant"): row.get("top1") for row in rows}
    r.emulated = (results.get("environment") or {}).get("emulated")
    return r, results


def _script(work: Path, plan: dict[str, Any]) -> Path:
    """bench_remote.py with the plan appended (one upload, same for every host)."""
    data = base64.b64encode(json.dumps(plan).encode()).decode()
    path = work / f"bench-{uuid.uuid4().hex[:8]}.py"
    path.write_text(f"{REMOTE_SCRIPT.read_text(encoding='utf-8')}\n# edgekit-plan: {data}\n",
                    encoding="utf-8")
    return path


def merge_into(out: Path, include: list[Path] | None = None) -> Path | None:
    """Merges every ``out/*/results.json`` and ``include`` into ``out/`` (the
    cross-device report); returns report.md's path, or None when there is nothing."""
    from datetime import datetime, timezone

    from benchmarks.analysis import load_results, merge
    from benchmarks.report import write_all

    loaded = [load_results(p) for p in sorted(out.glob("*/results.json"))]
    loaded += [load_results(p) for p in include or []]
    if not loaded:
        return None
    merged = merge(loaded)
    merged["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return write_all(merged, out)


def bench_fleet(target: Target, out: Path, runs: int = 50, warmup: int = 5,
                threads: int | None = None, timeout_s: int = 600, forks: int = 10,
                include: list[Path] | None = None, log=None
                ) -> tuple[list[HostBench], Path | None]:
    """Benchmarks every host of ``target`` on its active release.

    Args:
        target: one host or an inventory (as for deploy).
        out: home folder: ``OUT/<host>/`` per device, the merged report in ``OUT/``.
        runs, warmup: timed and untimed ``invoke()`` runs per row.
        threads: interpreter threads (None: every core of each device).
        timeout_s: the most one device's benchmark may take; it is stopped then.
        forks: devices benchmarked at once.
        include: other results (files or folders) merged into the report.
        log: where ansible's output goes (None: this process's stdout).

    Returns:
        (one result per host of the inventory, the merged report or None).

    Raises:
        EdgekitError: bad target or include, ansible could not run.
    """
    from benchmarks.analysis import load_results
    from benchmarks.report import write_report
    from edge_runtime.fileio import write_json

    for p in include or []:
        load_results(p)  # a bad one is refused before any device is busy
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        work = Path(tmp)
        hosts = inventory_hosts(target, work)
        answers_dir = work / "results"
        answers_dir.mkdir()
        plan = {"runs": runs, "warmup": warmup, "threads": threads, "timeout_s": timeout_s}
        waves = math.ceil(max(1, len(hosts)) / max(1, forks))
        env = {"ANSIBLE_CALLBACK_PLUGINS": str(HERE / "ansible_plugins"),
               "ANSIBLE_CALLBACKS_ENABLED": "edgekit_results",
               "EDGEKIT_RESULTS_DIR": str(answers_dir)}
        rc = ansible(target, PLAYBOOK, work,
                     {"edgekit_script": str(_script(work, plan)),
                      "edgekit_stage": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                      + "-" + uuid.uuid4().hex[:6], "edgekit_timeout_s": timeout_s},
                     forks=forks, log=log, timeout_s=waves * (timeout_s + 120) + 120, env=env)
        answers = _answers(answers_dir)
    if rc not in (0, 2, 4) and not answers:
        raise EdgekitError(f"ansible-playbook failed (status {rc}) before any host ran the "
                           "bench step; see its output above")
    if not answers and target.inventory is not None:
        raise EdgekitError(f"no host of {target.inventory} was tried: ansible could not use "
                           f"the inventory (check it with ansible-inventory -i "
                           f"{target.inventory} --list)")
    summary = []
    for host in sorted(hosts | set(answers)):
        if host not in answers:
            summary.append(HostBench(host, error="the bench step did not run there "
                                     "(see ansible's output)"))
            continue
        r, results = _host_result(host, answers[host], target.ssh_args)
        summary.append(r)
        if results is not None:
            folder = out / safe_name(host)
            write_json(folder / "results.json", results)
            write_report(results, folder)  # plots drawn here, where matplotlib is
    return summary, merge_into(out, include)
