"""Temporary work folders inside an export folder that an interrupted convert does not leave
behind: each is locked while in use, removed on the way out (SIGTERM included), and the next
run removes any that a SIGKILL or a power cut left (unlocked ones with our prefix only)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; staleness is judged by age instead
    fcntl = None  # type: ignore[assignment]

PREFIXES = (".savedmodel-", ".edgetpu-")
LOCK_NAME = ".lock"
# A folder without a lock file is being created (mkdtemp, then the lock) or comes from an
# older edgekit; without locks at all (Windows) only age tells.
UNLOCKED_GRACE_S = 60.0
NO_LOCKS_MAX_AGE_S = 24 * 3600.0


def _lock(folder: Path) -> IO[str]:
    handle = open(folder / LOCK_NAME, "w", encoding="utf-8")  # noqa: SIM115 - held open
    if fcntl is not None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _in_use(folder: Path, now: float) -> bool:
    lock = folder / LOCK_NAME
    try:
        age = now - folder.stat().st_mtime
    except OSError:
        return True  # vanished or unreadable: not ours to touch
    if not lock.is_file():
        return age < UNLOCKED_GRACE_S
    if fcntl is None:
        return age < NO_LOCKS_MAX_AGE_S
    try:
        with open(lock, encoding="utf-8") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # its process is alive and holds it
    except OSError:
        return True
    return False


def remove_stale(parent: str | Path, prefixes: tuple[str, ...] = PREFIXES) -> list[Path]:
    """Removes work folders in ``parent`` that no running process holds.

    Only real folders (not links) named with one of ``prefixes`` are considered; a locked
    one, or an unlocked one younger than a minute, is kept.

    Returns:
        The folders removed.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    removed, now = [], time.time()
    for entry in sorted(parent.iterdir()):
        if not entry.name.startswith(prefixes) or entry.is_symlink() or not entry.is_dir():
            continue
        if not _in_use(entry, now):
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    return removed


@contextlib.contextmanager
def work_dir(parent: str | Path, prefix: str) -> Iterator[Path]:
    """A new locked folder ``parent/<prefix>XXXX``, removed when the block ends, however.

    Raises:
        ValueError: ``prefix`` is not one :func:`remove_stale` knows.
    """
    if not prefix.startswith(PREFIXES):
        raise ValueError(f"work folder prefix {prefix!r}, expected one of {PREFIXES}")
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    handle = None
    try:
        handle = _lock(folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if handle is not None:
            handle.close()


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while :func:`signals_interrupt` was active."""


def _raise(signum: int, _frame: object) -> None:
    raise Terminated(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise :class:`Terminated` (a KeyboardInterrupt), so
    ``finally`` blocks run and remove work folders, instead of the process dying at once.

    Only signals still at their default action are taken (a CLI's own handler is left
    alone), only in the main thread, and the previous handlers come back afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            taken[sig] = signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, previous in taken.items():
            signal.signal(sig, previous)


__all__ = ["PREFIXES", "Terminated", "remove_stale", "signals_interrupt", "work_dir"]
