"""Counters and histograms of the daemon, exposed as Prometheus text for /metrics.

The daemon keeps its own numbers (one lock, updated once per frame); ``prometheus_client``
writes the exposition format and adds the standard ``process_*`` metrics (CPU seconds,
resident memory, open files, start time). It is imported on the first /metrics request
only: measured, it adds about 40 ms and 2 MB to a process that already has numpy and
OpenCV loaded (x86-64), so a daemon that is never scraped pays nothing.
"""

from __future__ import annotations

import bisect
import collections
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from .thermal import ThermalReader

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
                   0.25, 0.5, 1.0, 2.5)
FPS_WINDOW_S = 2.0  # the rate shown is over this many recent seconds
FPS_MAX_FRAMES = 1024
AGE_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
# Top-1 confidence: finer near 1, where a healthy model's answers pile up.
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


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

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper edge, observations at or below it) per bucket, ending with ``+Inf``."""
        out, seen = [], 0
        for edge, n in zip(self.buckets, self.counts):
            seen += n
            out.append((repr(float(edge)), seen))
        out.append(("+Inf", self.count))
        return out


def rss_bytes() -> int:
    """Resident set size of this process (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Metrics:
    """Everything /metrics reports; written by the inference thread, read by HTTP threads.

    Args:
        info: constant labels for ``edgekit_info`` (backend, version, model, ...).
    """

    def __init__(self, info: dict[str, str] | None = None) -> None:
        self.info = dict(info or {})
        self.lock = threading.Lock()
        self.frames = 0
        self.bad_frames = 0
        self.label_changes = 0
        self.model_reloads = 0  # SIGHUP reloads that swapped the model in
        self.model_reload_failures = 0  # ... that failed: the old model kept serving
        self.http_requests = 0
        self.inference = Histogram(LATENCY_BUCKETS)
        self.frame_cost = Histogram(LATENCY_BUCKETS)
        self.frame_age = Histogram(AGE_BUCKETS)
        self.top1 = Histogram(CONFIDENCE_BUCKETS)  # the model's raw top-1 score per frame
        self.predictions: collections.Counter[str] = collections.Counter()  # raw top-1 label
        self.drift: Any = None  # the latest DriftState (None: no baseline)
        self.keeper: Any = None  # the Keeper, for kept / dropped frames and bytes
        self.last_result_t: float | None = None
        self.last_frame_age = 0.0
        self._recent: collections.deque[float] = collections.deque(maxlen=FPS_MAX_FRAMES)
        self.capture: Any = None  # the Capture, for captured/dropped/reconnects/stalls
        self.streaming: Any = None  # the MjpegEncoder, for the number of stream viewers
        self.thermal: ThermalReader | None = ThermalReader()  # read per scrape, cached
        self._registry: Any = None

    def observe_top1(self, top1: Any) -> None:
        """Records the model's raw top class of one frame (a ``Class``: label, score)."""
        with self.lock:
            self.top1.observe(top1.score)
            self.predictions[top1.label] += 1

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
        """Prometheus text exposition format (version 0.0.4).

        Raises:
            ImportError: ``prometheus_client`` is not installed (the ``device`` extra).
        """
        from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

        if self._registry is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Collector(self))
            ProcessCollector(registry=registry)
            self._registry = registry
        return generate_latest(self._registry).decode()


class _Collector:
    """Turns :class:`Metrics` into metric families at each scrape (no second copy kept)."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m = self.m
        cap = m.capture
        c = {k: getattr(cap, k, 0) if cap is not None else 0
             for k in ("captured", "dropped", "bad_frames", "unreadable", "reconnects",
                       "stalls")}
        since = m.seconds_since_result()
        fps = m.fps  # takes the lock itself
        thermal = _thermal(m.thermal)  # may run vcgencmd: outside the lock
        with m.lock:
            info = GaugeMetricFamily("edgekit_info", "Interpreter backend, its version, "
                                     "model and delegate.", labels=sorted(m.info))
            info.add_metric([str(m.info[k]) for k in sorted(m.info)], 1)
            out: list[Any] = [info]
            for name, help_, value in (
                    ("edgekit_frames", "Frames classified.", m.frames),
                    ("edgekit_frames_captured", "Frames read from the source.", c["captured"]),
                    ("edgekit_frames_dropped", "Frames replaced by a newer one before "
                     "inference took them.", c["dropped"]),
                    ("edgekit_bad_frames", "Frames that could not be read or preprocessed "
                     "(skipped).", c["bad_frames"] + m.bad_frames),
                    ("edgekit_frames_unreadable", "Frames a video file declared but that "
                     "could not be read (damaged or truncated; also in bad_frames).",
                     c["unreadable"]),
                    ("edgekit_reconnects", "Times the source was reopened.", c["reconnects"]),
                    ("edgekit_stalls", "Times the source delivered no new frame for "
                     "watchdog.stall_s.", c["stalls"]),
                    ("edgekit_label_changes", "Changes of the reported label.",
                     m.label_changes),
                    ("edgekit_model_reloads", "Hot reloads (SIGHUP) that swapped the model.",
                     m.model_reloads),
                    ("edgekit_model_reload_failures", "Hot reloads that failed (load or "
                     "self-test); the old model kept serving.", m.model_reload_failures),
                    ("edgekit_http_requests", "HTTP requests served.", m.http_requests)):
                out.append(CounterMetricFamily(name, help_, value=value))
            for name, hist, help_ in (
                    ("edgekit_inference_seconds", m.inference, "Interpreter invoke() time."),
                    ("edgekit_frame_seconds", m.frame_cost, "Per-frame cost: hand-off, "
                     "preprocess, invoke, postprocess, outputs."),
                    ("edgekit_frame_age_seconds", m.frame_age,
                     "Age of the frame when its result was ready.")):
                out.append(HistogramMetricFamily(name, help_, buckets=hist.cumulative(),
                                                 sum_value=hist.sum))
            for name, help_, value in (
                    ("edgekit_last_frame_age_seconds", "Age of the last classified frame "
                     "when its result was ready.", round(m.last_frame_age, 6)),
                    ("edgekit_seconds_since_last_result", "Seconds since the last classified "
                     "frame (-1 before the first).", -1 if since is None else round(since, 3)),
                    ("edgekit_fps", f"Frames classified per second (last {FPS_WINDOW_S:g} s).",
                     round(fps, 2)),
                    ("edgekit_stream_clients", "Connected MJPEG clients.",
                     getattr(m.streaming, "clients", 0))):
                out.append(GaugeMetricFamily(name, help_, value=value))
            out.extend(_field_loop(m))
        yield from out + thermal


def _thermal(reader: ThermalReader | None) -> list[Any]:
    """``edgekit_temperature_celsius`` and ``edgekit_throttled``, each absent where the
    device cannot tell (no thermal zone; no ``vcgencmd``, as on a Jetson, or it failed)."""
    from prometheus_client.core import GaugeMetricFamily

    state = reader.read() if reader is not None else None
    out: list[Any] = []
    if state is not None and state.celsius is not None:
        out.append(GaugeMetricFamily("edgekit_temperature_celsius", "The hottest thermal "
                                     "zone (SoC temperature).", value=state.celsius))
    if state is not None and state.throttled is not None:
        out.append(GaugeMetricFamily("edgekit_throttled", "1 while vcgencmd get_throttled "
                                     "says under-voltage, frequency capped, throttled or "
                                     "soft temperature limit now.", value=int(state.throttled)))
    return out


def _field_loop(m: Metrics) -> list[Any]:
    """Drift, top-1 confidence, predictions and keeping (caller holds ``m.lock``)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    out: list[Any] = [HistogramMetricFamily(
        "edgekit_top1_confidence", "The model's top-1 score per frame (raw, unsmoothed).",
        buckets=m.top1.cumulative(), sum_value=m.top1.sum)]
    pred = CounterMetricFamily("edgekit_predictions", "Frames by the model's raw top-1 "
                               "label.", labels=["label"])
    for label, n in sorted(m.predictions.items()):
        pred.add_metric([label], n)
    out.append(pred)
    if m.drift is not None:  # absent: the model carries no drift baseline (or drift off)
        out.append(GaugeMetricFamily("edgekit_confidence_drift", "Drift of the live "
                                     "top-1 confidence and classes from the validation "
                                     "split (0: alike; the alert fires at the threshold).",
                                     value=m.drift.value))
        out.append(GaugeMetricFamily("edgekit_confidence_drift_alert", "1 while drift is "
                                     "flagged.", value=int(bool(m.drift.alert))))
        components = getattr(m.drift, "components", None)  # a DriftState has them
        if components is not None:
            parts = GaugeMetricFamily("edgekit_drift_component", "Each drift component "
                                      "over its critical value (the drift gauge is the "
                                      "largest).", labels=["component"])
            for name, v in components().items():
                parts.add_metric([name], v)
            out.append(parts)
    if m.keeper is not None:
        c = m.keeper.counts()
        kept = CounterMetricFamily("edgekit_kept_frames", "Frames kept for labelling, by "
                                   "primary reason.", labels=["reason"])
        for reason, n in sorted(c["kept"].items()):
            kept.add_metric([reason], n)
        dropped = CounterMetricFamily("edgekit_keep_dropped", "Frames worth keeping that "
                                      "were not kept, by reason and cause.",
                                      labels=["reason", "cause"])
        for (reason, cause), n in sorted(c["dropped"].items()):
            dropped.add_metric([reason, cause], n)
        out += [kept, dropped,
                GaugeMetricFamily("edgekit_keep_bytes", "Bytes in the keep folder.",
                                  value=c["bytes"]),
                GaugeMetricFamily("edgekit_keep_quota_bytes", "The keep folder's quota.",
                                  value=c["quota_bytes"])]
    return out
