"""The keep folder on disk: names, atomic pairs, the size quota and listings for /kept.

Layout (the field-loop contract): ``<dir>/<YYYY-MM-DD>/<stamp>_f<frame:08d>.jpg`` and a
JSON sidecar with the same stem, stamp = UTC ``YYYYMMDDTHHMMSS.mmmZ``. The JPEG is written
first and the sidecar last, each to a dot-named temporary file renamed into place, so a
sidecar's presence means the pair is complete; dot files are never listed or collected.
Names sort in time order, which is what the quota (oldest first) and /kept rely on.
"""

from __future__ import annotations

import collections
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

# <YYYY-MM-DD>/<stamp>_f<frame>.jpg, nothing else (no "..", no dot files, no other folders).
KEPT_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})/(\d{8}T\d{6}\.\d{3}Z_f\d{8,})\.jpg$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
LIST_MAX = 50  # frames in a /kept listing


def stem_for(when: datetime, frame: int) -> tuple[str, str]:
    """(day folder, file stem) of a frame kept at ``when`` (UTC)."""
    stamp = when.strftime("%Y%m%dT%H%M%S.") + f"{when.microsecond // 1000:03d}Z"
    return when.strftime("%Y-%m-%d"), f"{stamp}_f{frame:08d}"


def atomic_write(target: Path, data: bytes) -> None:
    """Writes ``data`` to a dot-named temporary file beside ``target``, flushes it to the
    disk and renames it onto ``target``; a failure removes the temporary file.

    fsync: after a power cut a renamed but unflushed file can come back empty, and a
    sidecar must never describe an empty JPEG. This runs on the writer thread only.

    Raises:
        OSError: the write failed (ENOSPC for a full disk).
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def _pair_bytes(jpg: Path) -> int:
    total = 0
    for p in (jpg, jpg.with_suffix(".json")):
        try:
            total += p.stat().st_size
        except OSError:
            pass
    return total


class KeepStore:
    """The kept pairs of one folder, their total size and the quota.

    Only the writer thread calls :meth:`add` and :meth:`enforce`; :meth:`scan` runs once
    on it at start. :meth:`listing` and :meth:`resolve` (HTTP threads) read the disk only.

    Args:
        root: the keep folder (created when missing).
        quota_bytes: the folder's size at most.
    """

    def __init__(self, root: str | Path, quota_bytes: int) -> None:
        self.root = Path(root).expanduser()
        self.quota_bytes = quota_bytes
        self.bytes = 0
        self._pairs: collections.deque[tuple[str, int]] = collections.deque()  # (rel, bytes)

    def scan(self, clean: bool = False) -> None:
        """Indexes the pairs in the folder (a restart keeps counting them; the writer
        re-reads it now and then, as collect may have removed some). ``clean`` (at start)
        also removes temporary files a crash left behind."""
        pairs = []
        for day in self._days():
            if clean:
                for tmp in day.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
            for jpg in sorted(day.glob("[!.]*.jpg")):
                pairs.append((f"{day.name}/{jpg.name}", _pair_bytes(jpg)))
        self._pairs = collections.deque(pairs)
        self.bytes = sum(n for _, n in pairs)

    def _days(self) -> list[Path]:
        try:
            return sorted(p for p in self.root.iterdir() if p.is_dir() and _DAY.match(p.name))
        except OSError:
            return []

    def write_pair(self, day: str, stem: str, jpeg: bytes, sidecar: dict[str, Any]) -> int:
        """Writes one pair (JPEG first, sidecar last); returns the bytes written.

        Raises:
            OSError: a write failed; nothing of the pair is left behind.
        """
        folder = self.root / day
        folder.mkdir(parents=True, exist_ok=True)
        jpg = folder / f"{stem}.jpg"
        text = (json.dumps(sidecar, indent=1) + "\n").encode()
        atomic_write(jpg, jpeg)
        try:
            atomic_write(folder / f"{stem}.json", text)
        except BaseException:
            jpg.unlink(missing_ok=True)  # a JPEG without its sidecar is not a kept frame
            raise
        return len(jpeg) + len(text)

    def add(self, rel: str, size: int) -> list[str]:
        """Records a new pair and removes the oldest until the quota holds; returns the
        pairs removed (never the new one)."""
        self._pairs.append((rel, size))
        self.bytes += size
        return self.enforce(keep_last=True)

    def enforce(self, keep_last: bool = False) -> list[str]:
        """Removes the oldest pairs (sidecar first, so a half-removed pair is never
        listed) until the folder fits its quota; returns their relative paths."""
        removed = []
        while self.bytes > self.quota_bytes and len(self._pairs) > int(keep_last):
            rel, size = self._pairs.popleft()
            jpg = self.root / rel
            for p in (jpg.with_suffix(".json"), jpg):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass  # collected (and removed) from the device meanwhile
                except OSError:
                    break
            self.bytes -= size
            removed.append(rel)
            try:
                jpg.parent.rmdir()  # only when it was the day's last pair
            except OSError:
                pass
        return removed

    def listing(self, limit: int = LIST_MAX) -> list[dict[str, Any]]:
        """The newest complete pairs, newest first: name (relative path of the JPEG),
        time, reason, label and score (the model's top-1) from each sidecar."""
        out: list[dict[str, Any]] = []
        for day in reversed(self._days()):
            for side in sorted(day.glob("[!.]*.json"), reverse=True):
                if len(out) >= limit:
                    return out
                jpg = side.with_suffix(".jpg")
                try:
                    doc = json.loads(side.read_text("utf-8"))
                except (OSError, ValueError):
                    continue
                if not isinstance(doc, dict) or not jpg.is_file():
                    continue
                raw = doc.get("raw") if isinstance(doc.get("raw"), dict) else {}
                out.append({"name": f"{day.name}/{jpg.name}", "time": doc.get("time"),
                            "reason": doc.get("reason"), "label": raw.get("label"),
                            "score": raw.get("score")})
        return out

    def resolve(self, rel: str) -> Path | None:
        """The JPEG named by ``rel`` when it is a kept frame inside the folder; None for
        anything else (other names, traversal, links leading out)."""
        if not KEPT_NAME.match(rel):
            return None
        path = self.root / rel
        try:
            real = path.resolve(strict=True)
            root = self.root.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if real.parent.parent != root or not real.is_file():
            return None
        return real


def kept_reply(store: KeepStore | None, path: str) -> tuple[int, Any]:
    """The answer to an authorized ``/kept`` (listing, JSON) or ``/kept/NAME`` (the JPEG's
    bytes) request: (HTTP status, a JSON document or bytes)."""
    if store is None:
        return 404, {"error": "keeping is off: set keep.dir (or --keep-dir)"}
    if path == "/kept":
        return 200, {"frames": store.listing()}
    found = store.resolve(path[len("/kept/"):])
    if found is not None:
        try:
            return 200, found.read_bytes()
        except OSError:  # removed by the quota (or collected) meanwhile
            pass
    return 404, {"error": f"no such kept frame: {path[:100]}"}
