"""Bring kept frames home from a device or a fleet over the deploy's Ansible/SSH path.

Phases, each one run of ``deploy/playbook-collect.yml`` for every host at once: ``list``
(the device resolves its keep dir and lists complete jpg+json pairs), then rounds of
``apply`` (the device packs the next batch of pairs not yet home into one tar, checking and
hashing each file as it reads it; the tar is fetched, and each member is verified against
its sha256 and renamed into ``OUT/<host>/<relative path>`` from a temp name), and with
``remove`` a last ``apply`` in which the device deletes the pairs whose home copies were
hashed again and still match its own files. A frame whose files are at home with the
listed sizes is already here (frames never change once written), so a second run copies
nothing; an interrupted run leaves only temp names (``.``-prefixed), which the next run
removes, and nothing is lost.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import shutil
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import file_sha256

from .core import Target, ansible, describe_unreachable

HERE = Path(__file__).resolve().parent
PLAYBOOK = HERE / "playbook-collect.yml"
REMOTE_SCRIPT = HERE / "collect_remote.py"
TMP = ".collect-tmp"  # under OUT: batches in flight; removed at the start of each run


@dataclass
class HostCollect:
    """What a collect did for one host (``error``: it could not run there)."""

    host: str
    copied: int = 0
    copied_bytes: int = 0
    already: int = 0
    removed: int = 0
    problems: list[str] = field(default_factory=list)
    error: str = ""
    keep_dir: str = ""

    @property
    def failed(self) -> int:
        """Frames that were listed and did not come home (or were not removed)."""
        return len(self.problems)

    @property
    def ok(self) -> bool:
        """True when the host answered and every frame listed is home."""
        return not self.error and not self.problems

    def line(self) -> str:
        """The summary line: ``host: N frames copied (X MB), F failed, A already here,
        removed R`` (or why the host could not be collected)."""
        if self.error and not (self.copied or self.already or self.problems):
            return f"{self.host}: {self.error}"
        return (f"{self.host}: {self.copied} frames copied ({self.copied_bytes / 1e6:.1f} MB), "
                f"{self.failed} failed, {self.already} already here, removed {self.removed}"
                + (f"; then {self.error}" if self.error else ""))


def safe_name(host: str) -> str:
    """The host's folder name under OUT (as the playbook spells it)."""
    name = re.sub(r"[^A-Za-z0-9._@:-]", "_", host)
    return "_" + name if name.startswith(".") else name


def _safe_stem(stem: object) -> bool:
    """A relative name without '..', empty or hidden parts (kept frames' names are)."""
    return (isinstance(stem, str) and not stem.startswith("/") and "\\" not in stem
            and all(p and not p.startswith(".") for p in stem.split("/")))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _results(folder: Path) -> dict[str, dict]:
    """The edgekit_results callback's lines of one round, by inventory host name:
    {"run": ..., "fetch": ..., "doc": the device's EDGEKIT-COLLECT document or {}}."""
    out: dict[str, dict] = {}
    for f in sorted(folder.glob("*.jsonl")):
        for text in f.read_text().splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            out.setdefault(line["host"], {})[line["task"]] = line
        f.unlink()
    for res in out.values():
        doc = {}
        for text in (res.get("run") or {}).get("stdout", "").splitlines():
            if text.startswith("EDGEKIT-COLLECT "):
                try:
                    doc = json.loads(text[len("EDGEKIT-COLLECT "):])
                except json.JSONDecodeError:
                    doc = {}
        res["doc"] = doc
    return out


def _host_error(res: dict, ssh_args: str) -> str:
    """Why a host's round did not run or failed, one line; '' when it ran."""
    for step in ("run", "fetch"):
        line = res.get(step) or {}
        if line.get("status") == "unreachable":
            return describe_unreachable(line.get("msg", ""), line.get("addr", ""),
                                        line.get("port"), ssh_args)
    run, doc = res.get("run") or {}, res["doc"]
    if doc.get("error"):
        return f"not collected: {doc['error']}"
    if run.get("status") != "ok" or run.get("rc") != 0 or not doc:
        tail = " ".join((run.get("stderr") or run.get("msg") or "").split())[-200:]
        return f"the device's collect step failed (status {run.get('rc')}): {tail or '?'}"
    fetch = res.get("fetch")
    if fetch is not None and fetch.get("status") != "ok":
        return f"fetching the batch failed: {' '.join(fetch.get('msg', '').split())[:200]}"
    return ""


def _home_index(home: Path) -> dict[str, list[int]]:
    """{stem: [jpg bytes, json bytes]} of what is already home (-1: that file is missing)."""
    index: dict[str, list[int]] = {}
    if not home.is_dir():
        return index
    for p in home.rglob("*"):
        if p.suffix in (".jpg", ".json") and not p.name.startswith(".") and p.is_file():
            stem = p.relative_to(home).with_suffix("").as_posix()
            index.setdefault(stem, [-1, -1])[p.suffix == ".json"] = p.stat().st_size
    return index


class _Plan:
    """One host's frames: what to fetch (in batches) and what to remove."""

    def __init__(self, result: HostCollect, keep_dir: str, frames: list, home: Path):
        self.result, self.keep_dir, self.home = result, keep_dir, home
        self.todo: list[list] = []
        self.listed: dict[str, list] = {}
        for stem, jsize, ssize in frames:
            if not _safe_stem(stem):  # a device names paths under OUT/<host> only
                result.problems.append(f"{str(stem)[:80]!r}: not a kept frame's name, "
                                       "not collected")
                continue
            self.listed[stem] = [stem, jsize, ssize]
            jpg, side = home / f"{stem}.jpg", home / f"{stem}.json"
            have = (_size(jpg), _size(side))
            if have == (jsize, ssize):
                result.already += 1
            elif (have[0] not in (-1, jsize)) or (have[1] not in (-1, ssize)):
                result.problems.append(
                    f"{stem}.jpg: differs from the copy already at home ({have[0]}+{have[1]} "
                    f"bytes here, {jsize}+{ssize} on the device); kept the home copy (delete "
                    "it to fetch the device's again)")
            else:
                self.todo.append([stem, jsize, ssize])

    def next_batch(self, max_bytes: int) -> list[list]:
        batch, size = [], 0
        while self.todo and (not batch or size + self.todo[0][1] + self.todo[0][2] <= max_bytes):
            item = self.todo.pop(0)
            batch.append(item)
            size += item[1] + item[2]
        return batch

    def verified_for_removal(self) -> list[list]:
        """[stem, jpg sha256, json sha256] of every listed frame whose home copy has the
        listed sizes, hashed now."""
        out = []
        for stem, jsize, ssize in self.listed.values():
            jpg, side = self.home / f"{stem}.jpg", self.home / f"{stem}.json"
            if (_size(jpg), _size(side)) == (jsize, ssize):
                out.append([stem, file_sha256(jpg), file_sha256(side)])
        return out


def _write_verified(dest: Path, data: bytes, want: str) -> str:
    """Writes ``data`` to ``dest`` through a temp name when its sha256 is ``want``; returns
    '' or the problem. An existing identical file is left as it is, a different one kept."""
    if hashlib.sha256(data).hexdigest() != want:
        return "arrived damaged (sha256 differs from the device's); fetched again next run"
    if dest.exists():
        return "" if file_sha256(dest) == want else "differs from the copy already at home; kept it"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:6]}.part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    return ""


def _unpack(tar_path: Path, packed: list, plan: _Plan) -> None:
    """Verifies and renames each pair of a fetched batch into the host's folder."""
    res = plan.result
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(tar_path) as tar:
            for m in tar:
                f = tar.extractfile(m) if m.isfile() else None
                if f is not None:
                    members[m.name] = f.read()
    except (tarfile.TarError, OSError, EOFError):
        pass  # a damaged batch: the pairs missing below are named and fetched next run
    for stem, jsha, ssha in packed:
        if stem not in plan.listed:  # not asked for (or refused at listing): never written
            continue
        why = ""
        for ext, want in ((".jpg", jsha), (".json", ssha)):  # the sidecar last, as on the device
            data = members.get(stem + ext)
            why = why or ("did not arrive (damaged batch); fetched again next run"
                          if data is None else _write_verified(plan.home / (stem + ext),
                                                               data, want))
        if why:
            res.problems.append(f"{stem}.jpg: {why}")
        else:
            res.copied += 1
            res.copied_bytes += sum(plan.listed[stem][1:])


def _clean(home: Path) -> None:
    """Removes temp files left by an interrupted run (names starting with '.')."""
    for p in home.rglob(".*.part"):
        p.unlink(missing_ok=True)


def _lock(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / ".collect.lock", "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise EdgekitError(f"another collect into {out} is running; try again when it "
                           "ends") from None
    return f


def _round(target: Target, work: Path, out: Path, plans: dict[str, dict],
           default: dict | None, log) -> dict[str, dict]:
    """One run of the collect playbook: each host in ``plans`` (and, with ``default``, every
    other host of the inventory) runs collect_remote.py with its plan; the results by host,
    each with ``tar``, where its batch arrived."""
    results, scripts = work / "results", work / f"scripts-{uuid.uuid4().hex[:8]}"
    results.mkdir(exist_ok=True)
    scripts.mkdir()
    source = REMOTE_SCRIPT.read_text(encoding="utf-8")
    for name, plan in ([(safe_name(h), p) for h, p in plans.items()]
                       + ([("_default", default)] if default is not None else [])):
        data = base64.b64encode(json.dumps(plan, separators=(",", ":")).encode()).decode()
        (scripts / f"{name}.py").write_text(f"{source}\n# edgekit-plan: {data}\n",
                                            encoding="utf-8")
    stage = f"collect-{uuid.uuid4().hex[:12]}"
    fetch_dir = out / TMP / stage
    fetch_dir.mkdir(parents=True)
    env = {"ANSIBLE_CALLBACK_PLUGINS": str(HERE / "ansible_plugins"),
           "ANSIBLE_CALLBACKS_ENABLED": "edgekit_results", "EDGEKIT_RESULTS_DIR": str(results)}
    rc = ansible(target, PLAYBOOK, work, {"edgekit_scripts_dir": str(scripts),
                                          "edgekit_stage": stage,
                                          "edgekit_fetch_dir": str(fetch_dir)},
                 log=log, env=env)
    shutil.rmtree(scripts)
    found = _results(results)
    if rc not in (0, 2, 4) and not found:
        raise EdgekitError(f"ansible-playbook failed (status {rc}) before any host ran the "
                           "collect step; see its output above")
    for host, res in found.items():
        res["tar"] = fetch_dir / f"{safe_name(host)}.tar"
    return found


def _first_round(target: Target, out: Path, work: Path, keep_dir: str | None,
                 max_bytes: int, log, results: dict[str, HostCollect]) -> dict[str, _Plan]:
    """Lists every host and brings its first batch home; the plans for the rest."""
    from .core import inventory_hosts

    base = {"keep_dir": keep_dir, "list": True, "home": None, "limit": max_bytes,
            "pack": [], "remove": []}
    homes = {h: out / safe_name(h) for h in inventory_hosts(target, work)}
    for home in homes.values():
        if home.is_dir():
            _clean(home)
    found = _round(target, work, out, {h: {**base, "home": _home_index(home)}
                                       for h, home in homes.items()}, base, log)
    plans = {}
    for host, res in found.items():
        r = results[host] = HostCollect(host, error=_host_error(res, target.ssh_args))
        if r.error:
            continue
        doc = res["doc"]
        r.keep_dir = doc.get("keep_dir", "")
        plan = plans[host] = _Plan(r, r.keep_dir, doc.get("frames", []), out / safe_name(host))
        _take(plan, res)
    return plans


def _take(plan: _Plan, res: dict) -> None:
    """Takes one round's answer for a host into its plan and result."""
    doc, r = res["doc"], plan.result
    done = {p[0] for p in doc.get("packed", [])} | {p[0] for p in doc.get("problems", [])}
    plan.todo = [t for t in plan.todo if t[0] not in done]
    r.problems += [f"{stem}.jpg: {why}" for stem, why in doc.get("problems", [])]
    r.removed += int(doc.get("removed", 0))
    if doc.get("packed"):
        _unpack(res["tar"], doc["packed"], plan)


def collect(target: Target, out: Path, keep_dir: str | None = None, remove: bool = False,
            batch_mb: float = 64.0, log=None) -> list[HostCollect]:
    """Brings the kept frames of every host of ``target`` into ``out/<host>/``.

    Args:
        target: one host or an inventory (as for deploy).
        out: the home folder of collected frames.
        keep_dir: the device's keep dir (default: keep.dir of its active release).
        remove: delete from the device the frames whose home copy is verified.
        batch_mb: at most this many MB packed and fetched per round.
        log: where ansible's output goes (None: this process's stdout).

    Returns:
        One result per host of the inventory.

    Raises:
        EdgekitError: bad target, another collect into ``out``, ansible could not run.
    """
    import tempfile

    from .core import inventory_hosts

    lock = _lock(out)
    try:
        shutil.rmtree(out / TMP, ignore_errors=True)  # batches of an interrupted run
        with tempfile.TemporaryDirectory(prefix="edgekit-collect-") as tmp:
            work = Path(tmp)
            results: dict[str, HostCollect] = {}
            max_bytes = max(1, int(batch_mb * 1e6))
            plans = _first_round(target, out, work, keep_dir, max_bytes, log, results)
            while True:
                sent = {h: {"keep_dir": p.keep_dir, "pack": p.next_batch(max_bytes)}
                        for h, p in plans.items() if not p.result.error and p.todo}
                if not sent:
                    break
                _finish(plans, sent, _round(target, work, out, sent, None, log), target)
            if remove:
                gone = {h: {"keep_dir": p.keep_dir, "remove": p.verified_for_removal()}
                        for h, p in plans.items() if not p.result.error}
                gone = {h: g for h, g in gone.items() if g["remove"]}
                if gone:
                    _finish(plans, gone, _round(target, work, out, gone, None, log), target)
            for host in inventory_hosts(target, work) - set(results):
                results[host] = HostCollect(host, error="the collect step did not run there "
                                            "(see ansible's output)")
        shutil.rmtree(out / TMP, ignore_errors=True)
        return [results[h] for h in sorted(results)]
    finally:
        lock.close()


def _finish(plans: dict[str, _Plan], sent: dict[str, dict], found: dict,
            target: Target) -> None:
    """Takes a later round's answers into each host's result."""
    for host in sent:
        plan, res = plans[host], found.get(host)
        if res is None:
            plan.result.error = "the collect step did not run there (see ansible's output)"
            continue
        plan.result.error = _host_error(res, target.ssh_args)
        if not plan.result.error:
            _take(plan, res)
