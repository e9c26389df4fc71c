"""Counters and histograms of the daemon, rendered as Prometheus text for /metrics."""

from __future__ import annotations

import bisect
import collections
import threading
import time
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
                   0.25, 0.5, 1.0, 2.5)
FPS_WINDOW_S = 2.0  # the rate shown is over this many recent seconds
FPS_MAX_FRAMES = 1024
AGE_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """A Prometheus histogram (seconds) with fixed buckets; observe() is O(log buckets)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Adds one observation."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float:
        """An upper-bound estimate of the ``q`` quantile (the bucket's upper edge)."""
        if not self.count:
            return 0.0
        target = q * self.count
        seen = 0
        for edge, n in zip(self.buckets, self.counts):
            seen += n
            if seen >= target:
                return edge
        return float("inf")

    def render(self, name: str, labels: str = "") -> list[str]:
        """The ``_bucket``, ``_sum`` and ``_count`` lines."""
        sep = "," if labels else ""
        lines = []
        cumulative = 0
        for edge, n in zip(self.buckets, self.counts):
            cumulative += n
            lines.append(f'{name}_bucket{{{labels}{sep}le="{edge:g}"}} {cumulative}')
        lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        lines.append(f"{name}_sum{suffix} {self.sum:.6f}")
        lines.append(f"{name}_count{suffix} {self.count}")
        return lines


def rss_bytes() -> int:
    """Resident set size of this process (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _escape(value: str) -> str:
    return str(value).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


class Metrics:
    """Everything /metrics reports; written by the inference thread, read by HTTP threads.

    Args:
        info: constant labels for ``edgekit_build_info`` (backend, version, model, ...).
    """

    def __init__(self, info: dict[str, str] | None = None) -> None:
        self.info = dict(info or {})
        self.lock = threading.Lock()
        self.start_wall = time.time()
        self.frames = 0
        self.bad_frames = 0
        self.label_changes = 0
        self.inference = Histogram(LATENCY_BUCKETS)
        self.frame_cost = Histogram(LATENCY_BUCKETS)
        self.frame_age = Histogram(AGE_BUCKETS)
        self.last_result_t: float | None = None
        self.last_frame_age = 0.0
        self._recent: collections.deque[float] = collections.deque(maxlen=FPS_MAX_FRAMES)
        self.capture: Any = None  # the Capture, for captured/dropped/reconnects/stalls
        self.streaming: Any = None  # the MjpegEncoder, for the number of stream viewers
        self.http_requests = 0

    def observe(self, invoke_s: float, cost_s: float, age_s: float) -> None:
        """Records one classified frame."""
        now = time.monotonic()
        with self.lock:
            self.frames += 1
            self.inference.observe(invoke_s)
            self.frame_cost.observe(cost_s)
            self.frame_age.observe(age_s)
            self.last_frame_age = age_s
            self.last_result_t = now
            self._recent.append(now)

    @property
    def fps(self) -> float:
        """Frames classified per second over the last ``FPS_WINDOW_S`` seconds.

        Meaningful from the second frame on (no blank first second) and back to 0 when
        results stop arriving, so a stalled camera never shows its old rate.
        """
        now = time.monotonic()
        with self.lock:
            times = [t for t in self._recent if now - t <= FPS_WINDOW_S]
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def seconds_since_result(self) -> float | None:
        """Seconds since the last classified frame (None before the first)."""
        t = self.last_result_t
        return None if t is None else time.monotonic() - t

    def render(self) -> str:
        """Prometheus text exposition format (version 0.0.4)."""
        cap = self.capture
        c = {k: getattr(cap, k, 0) if cap is not None else 0
             for k in ("captured", "dropped", "bad_frames", "reconnects", "stalls")}
        info = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(self.info.items()))
        since = self.seconds_since_result()
        fps = self.fps  # takes the lock itself
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, value: Any) -> None:
            out.extend((f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"))

        with self.lock:
            out += ["# HELP edgekit_info Interpreter backend, its version, model and delegate.",
                    "# TYPE edgekit_info gauge", f"edgekit_info{{{info}}} 1"]
            metric("edgekit_frames_total", "counter", "Frames classified.", self.frames)
            metric("edgekit_frames_captured_total", "counter", "Frames read from the source.",
                   c["captured"])
            metric("edgekit_frames_dropped_total", "counter",
                   "Frames replaced by a newer one before inference took them.", c["dropped"])
            metric("edgekit_bad_frames_total", "counter",
                   "Frames that could not be read or preprocessed (skipped).",
                   c["bad_frames"] + self.bad_frames)
            metric("edgekit_reconnects_total", "counter", "Times the source was reopened.",
                   c["reconnects"])
            metric("edgekit_stalls_total", "counter", "Times the source delivered no new "
                   "frame for watchdog.stall_s.", c["stalls"])
            metric("edgekit_label_changes_total", "counter", "Changes of the reported label.",
                   self.label_changes)
            for name, hist, help_ in (
                    ("edgekit_inference_seconds", self.inference, "Interpreter invoke() time."),
                    ("edgekit_frame_seconds", self.frame_cost, "Per-frame cost: hand-off, "
                     "preprocess, invoke, postprocess, outputs."),
                    ("edgekit_frame_age_seconds", self.frame_age,
                     "Age of the frame when its result was ready.")):
                out += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
                out += hist.render(name)
            metric("edgekit_last_frame_age_seconds", "gauge", "Age of the last classified "
                   "frame when its result was ready.", f"{self.last_frame_age:.6f}")
            metric("edgekit_seconds_since_last_result", "gauge", "Seconds since the last "
                   "classified frame (-1 before the first).",
                   f"{since:.3f}" if since is not None else -1)
            metric("edgekit_fps", "gauge", "Frames classified per second (last "
                   f"{FPS_WINDOW_S:g} s).", f"{fps:.2f}")
            metric("edgekit_stream_clients", "gauge", "Connected MJPEG clients.",
                   getattr(self.streaming, "clients", 0))
            metric("edgekit_http_requests_total", "counter", "HTTP requests served.",
                   self.http_requests)
            metric("edgekit_process_resident_memory_bytes", "gauge", "Resident set size.",
                   rss_bytes())
            metric("edgekit_start_time_seconds", "gauge", "Start time, Unix seconds.",
                   f"{self.start_wall:.3f}")
        return "\n".join(out) + "\n"
