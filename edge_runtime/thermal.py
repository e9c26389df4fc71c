"""SoC temperature and Raspberry Pi throttling for /metrics, read at scrape time, cached.

The hottest ``/sys/class/thermal/thermal_zone*/temp`` (millidegrees) and ``vcgencmd
get_throttled`` bits 0-3 (under-voltage, frequency capped, throttled, soft temperature
limit: *now*, not "has occurred"). Read on an HTTP thread, never the inference thread; a
scrape every few seconds reuses the last reading for ``cache_s``, and a hung ``vcgencmd``
is abandoned after ``timeout_s``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

THROTTLED_NOW_MASK = 0xF  # bits 0-3; bits 16-19 say the same "has occurred since boot"


@dataclass(frozen=True)
class ThermalState:
    """One reading; None where the device cannot tell."""

    celsius: float | None  # the hottest thermal zone
    throttled: bool | None  # None: no vcgencmd (not a Pi), or it failed


def hottest_zone(root: str | Path = "/") -> float | None:
    """The highest temperature of the thermal zones under ``root``, Celsius (None: none)."""
    temps = []
    for f in Path(root, "sys/class/thermal").glob("thermal_zone*/temp"):
        try:
            # Some zones (a sensor that is off) fail the read with EINVAL/ENODATA: skipped.
            temps.append(int(f.read_text("ascii").strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(temps) if temps else None


def throttled_now(timeout_s: float = 1.0) -> bool | None:
    """True while ``vcgencmd get_throttled`` reports under-voltage, capping, throttling or
    the soft temperature limit now; None without ``vcgencmd`` or when it fails."""
    exe = shutil.which("vcgencmd")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True,
                             timeout=timeout_s, check=True).stdout
        value = int(out.strip().rpartition("=")[2], 16)  # "throttled=0x50005"
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        log.debug("vcgencmd get_throttled: %s", e)
        return None
    return bool(value & THROTTLED_NOW_MASK)


class ThermalReader:
    """Cached :func:`hottest_zone` and :func:`throttled_now` for scrapes.

    Args:
        root: where ``sys/class/thermal`` is found (tests use a fake tree).
        cache_s: a reading younger than this is reused.
        timeout_s: ``vcgencmd`` is given this long.
    """

    def __init__(self, root: str | Path = "/", cache_s: float = 5.0,
                 timeout_s: float = 1.0) -> None:
        self.root = Path(root)
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._state: ThermalState | None = None
        self._t = 0.0

    def read(self) -> ThermalState:
        """The current reading (at most ``cache_s`` old)."""
        # One reader at a time: concurrent scrapes wait for it (timeout_s at most) rather
        # than each starting its own vcgencmd.
        with self._lock:
            now = time.monotonic()
            if self._state is None or now - self._t >= self.cache_s:
                self._state = ThermalState(hottest_zone(self.root),
                                           throttled_now(self.timeout_s))
                self._t = time.monotonic()
            return self._state
