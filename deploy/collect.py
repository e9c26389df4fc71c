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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _summaries(folder: Path) -> dict[str, dict]:
    """The playbook's per-host summaries, by inventory host name."""
    docs = {}
    for f in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        line = doc.get("line") or ""
        try:
            doc["result"] = json.loads(line[len("EDGEKIT-COLLECT "):]) if line else {}
        except json.JSONDecodeError:
            doc["result"] = {}
        docs[doc.get("host", f.stem)] = doc
        f.unlink()
    return docs


def _host_error(doc: dict, ssh_args: str) -> str:
    """Why a host's step did not run or failed, one line; '' when it ran."""
    if doc.get("unreachable"):
        return describe_unreachable(doc["unreachable"], str(doc.get("addr") or ""),
                                    doc.get("port"), ssh_args)
    if doc["result"].get("error"):
        return f"not collected: {doc['result']['error']}"
    if doc.get("fetch_failed"):
        return f"fetching the batch failed: {' '.join(doc['fetch_failed'].split())[:200]}"
    if doc.get("rc") != 0 or not doc["result"]:
        tail = " ".join((doc.get("stderr") or "").split())[-200:]
        return f"the device's collect step failed (status {doc.get('rc')}): {tail or '?'}"
    return ""


class _Plan:
    """One host's frames: what to fetch (in batches) and what to remove."""

    def __init__(self, result: HostCollect, keep_dir: str, frames: list, home: Path):
        self.result, self.keep_dir, self.home = result, keep_dir, home
        self.todo: list[list] = []
        self.listed: dict[str, list] = {}
        for stem, jsize, ssize in frames:
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
                out.append([stem, _sha256(jpg), _sha256(side)])
        return out


def _write_verified(dest: Path, data: bytes, want: str) -> str:
    """Writes ``data`` to ``dest`` through a temp name when its sha256 is ``want``; returns
    '' or the problem. An existing identical file is left as it is, a different one kept."""
    if hashlib.sha256(data).hexdigest() != want:
        return "arrived damaged (sha256 differs from the device's); fetched again next run"
    if dest.exists():
        return "" if _sha256(dest) == want else "differs from the copy already at home; kept it"
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


def _round(target: Target, work: Path, variables: dict, log) -> dict[str, dict]:
    """One run of the collect playbook; the summaries by host."""
    summary = work / "summary"
    summary.mkdir(exist_ok=True)
    rc = ansible(target, PLAYBOOK, work, {"edgekit_summary_dir": str(summary),
                                          "edgekit_remote_script": str(REMOTE_SCRIPT),
                                          **variables}, log=log)
    docs = _summaries(summary)
    if rc not in (0, 2, 4) and not docs:
        raise EdgekitError(f"ansible-playbook failed (status {rc}) before any host ran the "
                           "collect step; see its output above")
    return docs


def _list(target: Target, out: Path, work: Path, keep_dir: str | None, log,
          results: dict[str, HostCollect]) -> dict[str, _Plan]:
    import shlex

    docs = _round(target, work, {"edgekit_action": "list", "edgekit_list_args":
                                 f"--keep-dir {shlex.quote(keep_dir)}" if keep_dir else ""}, log)
    plans = {}
    for host, doc in docs.items():
        r = results[host] = HostCollect(host, error=_host_error(doc, target.ssh_args))
        if r.error:
            continue
        r.keep_dir = doc["result"].get("keep_dir", "")
        home = out / safe_name(host)
        if home.is_dir():
            _clean(home)
        plans[host] = _Plan(r, r.keep_dir, doc["result"].get("frames", []), home)
    return plans


def _apply(target: Target, out: Path, work: Path, plans: dict[str, dict], log) -> dict:
    """One apply round (remove, then pack and fetch); the summaries by host, and where
    each host's batch arrived."""
    stage = f"collect-{uuid.uuid4().hex[:12]}"
    fetch_dir = out / TMP / stage
    fetch_dir.mkdir(parents=True)
    docs = _round(target, work, {"edgekit_action": "apply", "edgekit_plans": plans,
                                 "edgekit_stage": stage, "edgekit_fetch_dir": str(fetch_dir)},
                  log)
    for host, doc in docs.items():
        doc["tar"] = fetch_dir / f"{safe_name(host)}.tar"
    return docs


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
            plans = _list(target, out, work, keep_dir, log, results)
            max_bytes = max(1, int(batch_mb * 1e6))
            while True:
                batches = {h: p.next_batch(max_bytes) for h, p in plans.items()
                           if not p.result.error}
                batches = {h: {"keep_dir": plans[h].keep_dir, "remove": [], "pack": b}
                           for h, b in batches.items() if b}
                if not batches:
                    break
                _finish(plans, batches, _apply(target, out, work, batches, log), target)
            if remove:
                gone = {h: {"keep_dir": p.keep_dir, "remove": p.verified_for_removal(),
                            "pack": []} for h, p in plans.items() if not p.result.error}
                gone = {h: g for h, g in gone.items() if g["remove"]}
                if gone:
                    _finish(plans, gone, _apply(target, out, work, gone, log), target)
            for host in inventory_hosts(target, work) - set(results):
                results[host] = HostCollect(host, error="the collect step did not run there "
                                            "(see ansible's output)")
        shutil.rmtree(out / TMP, ignore_errors=True)
        return [results[h] for h in sorted(results)]
    finally:
        lock.close()


def _finish(plans: dict[str, _Plan], sent: dict[str, dict], docs: dict, target: Target) -> None:
    """Takes one apply round's answers into each host's result."""
    for host in sent:
        plan, doc = plans[host], docs.get(host)
        res = plan.result
        if doc is None:
            res.error = "the collect step did not run there (see ansible's output)"
            continue
        res.error = _host_error(doc, target.ssh_args)
        answer = doc["result"]
        res.problems += answer.get("problems", [])
        res.removed += int(answer.get("removed", 0))
        if answer.get("packed") and not res.error:
            _unpack(doc["tar"], answer["packed"], plan)
