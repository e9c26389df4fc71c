"""edgekit on-device collect step: list kept frames, pack a batch, remove verified ones.

Shipped and run by deploy/playbook-collect.yml (``python -m deploy collect``, ``make
collect``) with the device's python3; standard library only (a profile is read with the
device's edgekit, from ``~/edgekit/venv``).

    python3 collect_remote.py apply STAGE

The plan is the file's last line, ``# edgekit-plan: BASE64(JSON)``, appended by the desktop
for each host and round (one upload, no size limit): {"keep_dir": DIR or null, "list":
bool, "home": {stem: [jpg bytes, json bytes]} or null, "limit": bytes, "pack": [[stem, jpg
bytes, json bytes]...], "remove": [[stem, jpg sha256, json sha256]...]}.

* keep dir: ``keep_dir`` (relative: to the home folder), else ``keep.dir`` of
  ``~/edgekit/current/profile.yaml`` with the service's environment (/etc/default/edgekit).
* ``remove``: pairs whose files still hash to what the desktop verified at home are
  deleted (the sidecar first).
* ``list``: every complete pair (``STEM.jpg`` plus its sidecar ``STEM.json``; names
  starting with ``.`` are temp files) as [stem, jpg bytes, json bytes]. With ``home`` (what
  the desktop has, -1 for a missing file), the pairs not there are packed too, up to
  ``limit`` bytes (at least one pair).
* ``pack``: pairs written to ``~/edgekit/outgoing/STAGE.tar``, each file checked (still
  the listed size, a whole JPEG, a JSON sidecar) and hashed as read; a pair that fails a
  check is named in ``problems`` and left alone.

The last line on stdout is ``EDGEKIT-COLLECT {json}``: keep_dir, frames, incomplete,
packed [[stem, jpg sha256, json sha256]...], bytes, removed, problems [[stem, why]...], or
error (exit status 1: the keep dir cannot be resolved).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import time

HOME = os.path.expanduser("~")
EK = os.path.join(HOME, "edgekit")
OUTGOING = os.path.join(EK, "outgoing")
PLAN_MARK = "# edgekit-plan: "
STALE_S = 3600  # an outgoing tar this old belongs to a collect that was interrupted


class Problem(Exception):
    """The keep dir cannot be resolved; the message says why and what to do."""


def emit(doc: dict) -> None:
    print("EDGEKIT-COLLECT " + json.dumps(doc, separators=(",", ":")))


def _service_env() -> dict:
    """EDGEKIT_* settings of /etc/default/edgekit (the unit's EnvironmentFile), which the
    daemon sees and this SSH session does not."""
    env = {}
    try:
        with open("/etc/default/edgekit", encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep and key.startswith("EDGEKIT_"):
                    env[key] = value.strip().strip("'\"")
    except OSError:
        pass
    return env


def _reexec_in_venv() -> None:
    """Runs this script again with the device's edgekit venv (which can read profiles)."""
    py = os.path.join(EK, "venv", "bin", "python")
    if os.environ.get("EDGEKIT_COLLECT_REEXEC") != "1" and os.path.exists(py):
        os.environ["EDGEKIT_COLLECT_REEXEC"] = "1"
        os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


def profile_keep_dir() -> str:
    """keep.dir of the active release's profile, absolute (a relative one is relative to
    the service's working directory, ~/edgekit/current)."""
    profile = os.path.join(EK, "current", "profile.yaml")
    if not os.path.isfile(profile):
        raise Problem("nothing deployed on this device (no ~/edgekit/current/profile.yaml); "
                      "pass --keep-dir")
    try:
        from edge_runtime.config import load_config
    except ImportError:
        _reexec_in_venv()
        raise Problem("the device's edgekit cannot be imported (~/edgekit/venv); pass "
                      "--keep-dir") from None
    try:
        cfg = load_config(profile, environ=_service_env())
    except Exception as e:  # the device's own error line names the file and field
        raise Problem(f"cannot read {profile}: {e}") from None
    folder = getattr(getattr(cfg, "keep", None), "dir", None)
    if not folder:
        raise Problem(f"keeping is off in {profile} (keep.dir is not set); pass --keep-dir")
    folder = os.path.expanduser(folder)
    return folder if os.path.isabs(folder) else os.path.join(EK, "current", folder)


def _regular(path: str):
    """os.stat_result of a regular file (not a link), else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def scan(keep: str) -> tuple[list, int]:
    """Complete pairs under ``keep`` as [stem, jpg bytes, json bytes], oldest name first,
    and the number of JPEGs without a sidecar (being written, or left half-removed)."""
    frames, incomplete = [], 0
    for top, dirs, files in os.walk(keep):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = {f for f in files if not f.startswith(".")}
        for name in sorted(names):
            stem, ext = os.path.splitext(name)
            if ext == ".jpg" and stem + ".json" not in names:
                incomplete += 1
            if ext != ".json" or stem + ".jpg" not in names:
                continue
            jpg = _regular(os.path.join(top, stem + ".jpg"))
            side = _regular(os.path.join(top, name))
            if jpg is None or side is None:
                continue
            rel = os.path.relpath(os.path.join(top, stem), keep)
            frames.append([rel.replace(os.sep, "/"), jpg.st_size, side.st_size])
    return frames, incomplete


def _safe(stem: str) -> bool:
    parts = stem.split("/")
    return not stem.startswith("/") and all(p and not p.startswith(".") for p in parts)


def _read_checked(path: str, want: int, kind: str) -> bytes:
    """The file's bytes, or Problem naming what is wrong with it."""
    try:
        with open(path, "rb") as f:
            data = f.read(want + 1)
    except FileNotFoundError:
        raise Problem("deleted on the device after listing, not collected") from None
    except OSError as e:
        raise Problem(f"unreadable on the device ({e.strerror}), not collected") from None
    if len(data) != want:
        what = "truncated" if len(data) < want else "grew"
        raise Problem(f"{what} on the device after listing ({len(data)} bytes, listed "
                      f"{want}), not collected")
    if kind == ".jpg" and not (data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"):
        raise Problem("not a whole JPEG (truncated or damaged on the device), not collected")
    if kind == ".json":
        try:
            ok = isinstance(json.loads(data.decode("utf-8")), dict)
        except (UnicodeDecodeError, ValueError):
            ok = False
        if not ok:
            raise Problem("the sidecar is not a JSON object (truncated or damaged on the "
                          "device), not collected")
    return data


def _sha256(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def remove(keep: str, items: list, problems: list) -> int:
    """Removes pairs whose files hash to what the desktop verified; returns how many."""
    removed, parents = 0, set()
    for stem, jsha, ssha in items:
        base = os.path.join(keep, stem)
        jpg, side = base + ".jpg", base + ".json"
        if not os.path.exists(jpg) and not os.path.exists(side):
            continue
        if _sha256(jpg) != jsha or _sha256(side) not in (ssha, None):
            problems.append([stem, "differs on the device from the copy verified at "
                             "home, not removed"])
            continue
        # The sidecar first: a sidecar means a complete pair, so none is ever half-listed.
        for path in (side, jpg):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        removed += 1
        parents.add(os.path.dirname(base))
    today = time.strftime("%Y-%m-%d", time.gmtime())
    for d in sorted(parents, reverse=True):  # empty day folders, not today's (in use)
        if os.path.basename(d) != today and os.path.abspath(d) != os.path.abspath(keep):
            try:
                os.rmdir(d)
            except OSError:
                pass
    return removed


def pack(keep: str, items: list, stage: str, problems: list) -> tuple[list, int]:
    """Writes ~/edgekit/outgoing/STAGE.tar; returns ([stem, jpg sha256, json sha256]...,
    bytes packed)."""
    packed, total = [], 0
    with tarfile.open(os.path.join(OUTGOING, stage + ".tar"), "w") as tar:
        for stem, jsize, ssize in items:
            base = os.path.join(keep, stem)
            try:
                pair = [(ext, _read_checked(base + ext, size, ext))
                        for ext, size in ((".jpg", jsize), (".json", ssize))]
            except Problem as e:
                problems.append([stem, str(e)])
                continue
            for ext, data in pair:
                info = tarfile.TarInfo(stem + ext)
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
                tar.addfile(info, io.BytesIO(data))
            packed.append([stem] + [hashlib.sha256(d).hexdigest() for _, d in pair])
            total += jsize + ssize
    return packed, total


def clean_outgoing() -> None:
    """Removes tars and plans of interrupted collects."""
    try:
        names = os.listdir(OUTGOING)
    except OSError:
        return
    for name in names:
        path = os.path.join(OUTGOING, name)
        try:
            if time.time() - os.lstat(path).st_mtime > STALE_S:
                os.unlink(path)
        except OSError:
            pass


def read_plan() -> dict:
    """The plan appended to this file by the desktop."""
    with open(os.path.abspath(__file__), "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - (64 << 20)))
        last = f.read().rstrip().rsplit(b"\n", 1)[-1].decode("ascii")
    if not last.startswith(PLAN_MARK):
        raise Problem("no plan appended to collect_remote.py (run by python -m deploy collect)")
    return json.loads(base64.b64decode(last[len(PLAN_MARK):]))


def home_todo(frames: list, home: dict, limit: int) -> list:
    """The listed pairs the desktop lacks (its files missing, none of a different size:
    those the desktop reports), up to ``limit`` bytes, at least one."""
    todo, size = [], 0
    for stem, jsize, ssize in frames:
        have = home.get(stem, [-1, -1])
        if have == [jsize, ssize] or have[0] not in (-1, jsize) or have[1] not in (-1, ssize):
            continue
        if todo and size + jsize + ssize > limit:
            break
        todo.append([stem, jsize, ssize])
        size += jsize + ssize
    return todo


def apply(plan: dict, stage: str) -> dict:
    """Runs one round of the plan; returns the EDGEKIT-COLLECT document."""
    keep = plan.get("keep_dir")
    keep = os.path.join(HOME, os.path.expanduser(keep)) if keep else profile_keep_dir()
    bad = [s[0] for s in plan.get("remove", []) + plan.get("pack", []) if not _safe(s[0])]
    if bad:
        raise Problem(f"refused: a frame name outside the keep dir ({bad[0][:80]})")
    problems = []
    out = {"keep_dir": keep, "removed": remove(keep, plan.get("remove", []), problems)}
    todo = list(plan.get("pack", []))
    if plan.get("list"):
        clean_outgoing()
        out["exists"] = os.path.isdir(keep)
        out["frames"], out["incomplete"] = scan(keep) if out["exists"] else ([], 0)
        if plan.get("home") is not None:
            todo += home_todo(out["frames"], plan["home"], int(plan.get("limit", 1)))
    out["packed"], out["bytes"] = [], 0
    if todo:
        os.makedirs(OUTGOING, exist_ok=True)
        out["packed"], out["bytes"] = pack(keep, todo, stage, problems)
    out["problems"] = problems
    return out


def main(argv: list) -> int:
    if len(argv) != 2 or argv[0] != "apply" or not _safe(argv[1]):
        print("usage: collect_remote.py apply STAGE (a plan appended)", file=sys.stderr)
        return 2
    try:
        emit(apply(read_plan(), argv[1]))
    except Problem as e:
        emit({"error": str(e)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
