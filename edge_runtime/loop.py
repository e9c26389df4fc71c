"""The daemon's main loop: newest frame in, result out to JSON lines, HTTP, MQTT, systemd."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2

from .capture import Capture
from .classify import Classifier, top_k
from .errors import EdgekitError
from .fileio import file_sha256
from .infer import FrameClassifier
from .metrics import Metrics
from .outputs import JsonlWriter
from .smoothing import Result, Smoother
from .systemd import Notifier

log = logging.getLogger(__name__)

# How often STATUS= is sent to systemd, seconds.
STATUS_EVERY_S = 10.0
RAW_TOP_K = 3  # /latest's raw_top: the model's own best classes, whatever classify.* says


def model_sha256(path: Path) -> str | None:
    """The model file's sha256 for /healthz and /latest (None: unreadable). Read once per
    load, never per frame: 60 ms for a 3.6 MB model on a busy x86-64 box, more on a Pi."""
    try:
        return file_sha256(path)
    except OSError as e:
        log.warning("cannot hash %s: %s", path, e.strerror or e)
        return None


def drift_monitor(classifier: Classifier, settings: Any) -> Any:
    """The :class:`edge_runtime.drift.DriftMonitor` for a model (``drift:`` section), or
    None when drift is off or the model carries no usable baseline (a malformed one is
    said once and the model serves without drift: a diagnostic never stops inference)."""
    manifest = classifier.manifest
    if not settings.enabled or manifest is None:
        return None
    from .drift import DriftMonitor

    try:
        return DriftMonitor.from_manifest(manifest.to_dict(), window=settings.window,
                                          threshold=settings.threshold,
                                          model=classifier.model_path.name)
    except EdgekitError as e:
        log.warning("drift off for %s: %s", classifier.model_path.name, e)
        return None


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between frames. SIGHUP (``systemctl
    reload``) sets :attr:`reload` instead: re-read the profile and the model."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None
        self.reload = threading.Event()

    def install(self) -> Callable[[], None]:
        """Installs handlers for SIGINT, SIGTERM and SIGHUP; returns a function restoring
        the old."""
        hup = getattr(signal, "SIGHUP", None)
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, hup) if s}

        def handler(signum: int, _frame: object) -> None:
            if signum == hup:
                self.reload.set()
                return
            self.signal = signum
            self.event.set()

        for s in old:
            signal.signal(s, handler)

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore


# The fields of a JSON line without ``output.details``.
BRIEF_FIELDS = ("time", "frame", "index", "label", "score", "inference_ms")


def result_fields(result: Result, frame_seq: int, invoke_ms: float, age_ms: float,
                  dropped: int) -> dict[str, Any]:
    """One result as a JSON-able dict.

    :data:`BRIEF_FIELDS` (``time``, ``frame``, ``index``, ``label``, ``score``,
    ``inference_ms``), then ``frame_age_ms`` (capture to result), ``dropped`` (frames
    skipped since the previous result), ``top`` (best allowed classes) and ``raw`` (the
    model's own top-1, unsmoothed).
    """
    line: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "frame": frame_seq,
        "index": result.index,
        "label": result.label,
        "score": round(result.score, 6),
        "inference_ms": round(invoke_ms, 3),
        "frame_age_ms": round(age_ms, 3),
        "dropped": dropped,
        "top": [{"index": c.index, "label": c.label, "score": round(c.score, 6)}
                for c in result.top],
    }
    raw = result.raw
    if raw is not None:
        line["raw"] = {"index": raw.index, "label": raw.label, "score": round(raw.score, 6)}
    return line


class Daemon:
    """Classifies frames from a :class:`Capture` until the source ends, a limit, or a stop.

    Per frame: take the newest frame (already resized for the model by the capture
    thread, see :attr:`Capture.prepare`), write it into the input tensor, invoke, smooth
    and threshold, then hand the result to every output. Outputs never block
    inference: the JSON-lines writer is a local write, HTTP clients are served from
    other threads off a published reference, MQTT only queues. A frame that cannot be
    preprocessed is counted as bad and skipped.

    Args:
        classifier: the loaded model.
        capture: a started :class:`Capture`.
        cfg: the :class:`edge_runtime.config.DeviceConfig`.
        writer: JSON-lines output, or None.
        stop: the stop flag (signals).
        max_frames: stop after this many classified frames.
        server: the HTTP :class:`edge_runtime.server.Server`, or None.
        mqtt: an :class:`edge_runtime.outputs.MqttPublisher`, or None.
        notifier: systemd :class:`Notifier`, or None.
        metrics: shared :class:`Metrics` (created when None).
        keeper: a started :class:`edge_runtime.keep.Keeper`, or None (keeping off).
    """

    def __init__(self, classifier: Classifier, capture: Capture, cfg: Any,
                 writer: JsonlWriter | None, stop: StopFlag, max_frames: int | None = None,
                 server: Any = None, mqtt: Any = None, notifier: Notifier | None = None,
                 metrics: Metrics | None = None, keeper: Any = None) -> None:
        self.classifier = classifier
        self.frames = FrameClassifier(classifier)
        self.smoother = Smoother(classifier.labels, classifier.num_classes, cfg.classify,
                                 cfg.smoothing)
        self.capture = capture
        self.cfg = cfg
        self.writer = writer
        self.stop = stop
        self.max_frames = max_frames
        self.server = server
        self.mqtt = mqtt
        self.notifier = notifier or Notifier(enabled=False)
        self.metrics = metrics or Metrics()
        self.metrics.capture = capture
        self.keeper = keeper
        self.metrics.keeper = keeper
        # Confidence drift: the raw top-1 of every frame against the model's baseline.
        self.drift = drift_monitor(classifier, cfg.drift)
        self.metrics.drift = None
        self.started_t = time.monotonic()
        self.model_sha256 = model_sha256(classifier.model_path)
        # Preprocess on the capture thread, as frames arrive (overlapping invoke()).
        capture.prepare = self.frames.prepare
        self.count = 0
        self.total_invoke_ms = 0.0
        # Hot reload (SIGHUP): ``reloader()`` returns (classifier, cfg) for the re-read
        # profile, loaded and self-tested on a thread beside the serving model; the main
        # loop swaps them in between two frames. None: SIGHUP is ignored.
        self.reloader: Callable[[], tuple[Any, Any]] | None = None
        self._reload_thread: threading.Thread | None = None
        self._reloaded: tuple[Any, Any] | None = None
        self._reprepare = 0
        self.reload_error: str | None = None

    def status(self) -> dict[str, Any]:
        """Totals for /latest and /healthz."""
        cap = self.capture
        b = self.classifier.backend
        return {"backend": f"{b.name} {b.version}", "model": self.classifier.model_path.name,
                "model_sha256": self.model_sha256,
                "uptime_s": round(time.monotonic() - self.started_t, 1),
                "frames_total": self.count, "dropped_total": cap.dropped,
                "bad_frames_total": cap.bad_frames + self.metrics.bad_frames,
                "unreadable_frames_total": cap.unreadable,
                "reconnects_total": cap.reconnects, "capture": cap.state,
                "last_error": cap.last_error,
                "selftest": getattr(self.classifier, "selftest_status", "off"),
                "reloads_total": self.metrics.model_reloads,
                "reload_failures_total": self.metrics.model_reload_failures,
                "last_reload_error": self.reload_error, **self._drift_fields()}

    def _drift_fields(self) -> dict[str, Any]:
        """``drift``, ``drift_alert`` and ``drift_components`` for /healthz and /latest
        (null without a baseline)."""
        state = self.metrics.drift
        return {"drift": None if state is None else state.value,
                "drift_alert": None if state is None else state.alert,
                "drift_components": None if state is None else state.components()}

    def _reload_worker(self) -> None:
        try:
            clf, cfg = self.reloader()
            self._reloaded = (clf, cfg, drift_monitor(clf, cfg.drift),
                              model_sha256(clf.model_path))
        except Exception as e:  # any failure keeps the serving model; said, never fatal
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            self.reload_error = msg
            with self.metrics.lock:
                self.metrics.model_reload_failures += 1
            log.error("reload failed, still serving %s: %s", self.classifier.model_path, msg)

    def _check_reload(self) -> None:
        """Starts a requested reload; swaps in a loaded model (between two frames)."""
        if self.stop.reload.is_set() and self.reloader is not None and \
                (self._reload_thread is None or not self._reload_thread.is_alive()):
            self.stop.reload.clear()
            self._reload_thread = threading.Thread(target=self._reload_worker,
                                                   name="edgekit-reload", daemon=True)
            self._reload_thread.start()
        if self._reloaded is None:
            return
        clf, cfg, drift, sha = self._reloaded
        self._reloaded = None
        old = self.classifier.model_path
        self.classifier, self.frames, self.cfg = clf, FrameClassifier(clf), cfg
        self.model_sha256 = sha
        self.drift = drift  # the new model's own baseline
        self.metrics.drift = None
        if self.keeper is not None:
            self.keeper.set_model(clf.model_path, clf.labels, cfg.classify.threshold,
                                  cfg.keep if cfg.keep.dir == self.keeper.settings.dir
                                  else None)
        self.smoother = Smoother(clf.labels, clf.num_classes, cfg.classify, cfg.smoothing)
        self.capture.prepare = self.frames.prepare
        self._reprepare = 2  # frames the capture thread may have prepared for the old model
        self.reload_error = None
        with self.metrics.lock:
            self.metrics.model_reloads += 1
            self.metrics.info["model"] = str(clf.model_path)
            self.metrics.info["selftest"] = getattr(clf, "selftest_status", "off")
        log.warning("reloaded: %s -> %s (camera, output, http and keep.dir settings need a "
                    "restart)", old, clf.model_path)

    def _keepalive(self, progressed: bool, now: float) -> None:
        """WATCHDOG=1 while frames are classified, or while the camera is being reopened
        by a supervisor that is itself alive; silence lets systemd restart a hung process."""
        cap = self.capture
        if progressed or (cap.state == "reconnecting" and now - cap.heartbeat_t < 2.0):
            self.notifier.watchdog(now)

    def _classify(self, frame: Any, t0: float) -> None:
        try:
            prepared = frame.input
            if self._reprepare:
                self._reprepare -= 1
                prepared = None
            scores = self.frames.scores(frame.image, prepared)
        except (cv2.error, ValueError) as e:
            with self.metrics.lock:
                self.metrics.bad_frames += 1
            log.warning("bad frame %d skipped: %s", frame.seq, str(e).strip().splitlines()[-1])
            return
        result = self.smoother(scores)
        raw = result.raw
        if self.drift is not None and raw is not None:
            # prepared: the model input from the capture thread (None for the frames
            # prepared for the old model just after a reload: they skip the input component).
            self.drift.update(raw.index, raw.score, prepared)
            self.metrics.drift = self.drift.snapshot()  # recomputed every few frames
        if self.keeper is not None:
            self.keeper.offer(frame, scores, result, self.metrics.drift)
        invoke_ms = self.frames.last_invoke_ms
        age_ms = (time.monotonic() - frame.t) * 1000.0
        out = self.cfg.output
        line = result_fields(result, frame.seq, invoke_ms, age_ms, frame.dropped)
        if self.writer is not None and (not out.on_change or result.changed or not self.count):
            self.writer.write(line if out.details else {k: line[k] for k in BRIEF_FIELDS})
        if result.changed:
            with self.metrics.lock:
                self.metrics.label_changes += 1
            if self.mqtt is not None:
                self.mqtt.publish(line)
        if self.server is not None:
            line["fps"] = round(self.metrics.fps, 2)
            line["raw_top"] = [{"index": c.index, "label": c.label, "score": round(c.score, 6)}
                               for c in top_k(scores, RAW_TOP_K, self.classifier.labels)]
            self.server.publish(frame.image, line)
        # Per-frame cost: from the hand-off (or the frame's arrival, if we waited) to the
        # result handed to every output; the frame's age is taken when the result is ready.
        self.metrics.observe(invoke_ms / 1000.0, time.monotonic() - max(t0, frame.t),
                             age_ms / 1000.0)
        if raw is not None:
            self.metrics.observe_top1(raw)
        self.count += 1
        self.total_invoke_ms += invoke_ms

    def run(self) -> dict[str, float]:
        """Runs until done; returns frames, seconds, fps, mean inference_ms and
        ``unreadable`` (frames a damaged file declared but never delivered).

        Raises:
            EdgekitError: a file source that yielded no frame at all.
        """
        t_start = time.perf_counter()
        self.notifier.ready(f"classifying {self.capture.source.kind} "
                            f"{self.capture.source.display}")
        next_status = time.monotonic() + STATUS_EVERY_S
        while not self.stop.event.is_set():
            self._check_reload()
            t0 = time.monotonic()
            frame = self.capture.get(0.1)
            now = time.monotonic()
            if now >= next_status:  # also while the camera is being reopened
                next_status = now + STATUS_EVERY_S
                self.notifier.status(self._status_text())
            if frame is None:
                if self.capture.finished:
                    if self.capture.error is not None:
                        raise self.capture.error
                    break
                self._keepalive(False, now)
                continue
            before = self.count
            self._classify(frame, t0)
            self._keepalive(self.count > before, now)
            if self.max_frames is not None and self.count >= self.max_frames:
                break
        seconds = time.perf_counter() - t_start
        return {"frames": self.count, "seconds": round(seconds, 3),
                "fps": round(self.count / seconds, 2) if seconds > 0 else 0.0,
                "mean_inference_ms": round(self.total_invoke_ms / self.count, 3)
                if self.count else 0.0,
                "unreadable": self.capture.unreadable}

    def _status_text(self) -> str:
        s = self.smoother
        label = s.label(s.current) if s.current is not None else "none"
        cap = self.capture
        return (f"{self.metrics.fps:.1f} fps, label {label}, {cap.dropped} dropped, "
                f"{cap.reconnects} reconnects"
                + (f", {cap.unreadable} unreadable" if cap.unreadable else "")
                + (f"; last error: {cap.last_error}" if cap.state == "reconnecting"
                   and cap.last_error else ""))
