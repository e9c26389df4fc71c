"""The daemon's own pipeline (``Capture`` + ``FrameClassifier`` in ``Daemon``), measured.

Two entry points share it:

* :func:`measure_end_to_end` — what ``python -m benchmarks RUN --video V`` reports per
  model: the daemon's loop over a video (paced at its frame rate, newest frame only, as a
  live camera feeds it) or a live source; latency, frame age, fps and drops.
* ``python -m benchmarks.pipeline`` (``make bench-pipeline``) — the daemon against bare
  ``invoke()``: cost, throughput, age, start-up and RSS.

Usage:
    python -m benchmarks.pipeline --model M.tflite [--video V.avi] [--frames 1000]
        [--threads N] [--source-fps F] [--source file|camera|camera-mjpg|camera-bgr]
        [--repeats N] [--codec mjpg|i420] [--interpolation linear|area] [--json OUT]

Without ``--video`` a 640x480 test video is written to a temporary folder (``--codec
mjpg``, the default, or ``i420``: uncompressed YUV 4:2:0, as a camera's ISP delivers). The
source is replayed in real time at ``--source-fps`` (default: twice the bare inference
rate, so frames arrive faster than inference and only the newest is classified).
``--source file`` (the default) reads the video through OpenCV's FFmpeg backend, which
decodes every frame inside ``grab()``; ``--source camera`` / ``camera-mjpg`` play its
frames from memory through a simulated V4L2 camera instead (``grab()`` waits for the next
frame, ``retrieve()`` converts it from YUYV / decodes its JPEG, as OpenCV does for a USB
camera); ``--source camera-bgr`` hands over ready BGR frames (a copy each), as a camera
whose ISP converts in hardware does (picamera2 on a Pi, ``nvvidconv`` on a Jetson).
Reports, with the targets from the daemon's specification:

* per-frame cost (hand-off + preprocess + invoke + postprocess) / bare ``invoke()``;
* pipelined throughput x bare ``invoke()`` latency;
* p95 frame age / ``invoke()`` latency;
* process start to first result (a separate ``python -m edge_runtime run`` process);
* RSS at the end, and its growth from the first to the last tenth of the run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.camera import Source, parse_source
from edge_runtime.capture import Capture
from edge_runtime.classify import Classifier
from edge_runtime.config import load_config
from edge_runtime.errors import EdgekitError, Parser
from edge_runtime.loop import Daemon, StopFlag
from edge_runtime.metrics import Metrics, rss_bytes
from edge_runtime.outputs import JsonlWriter
from edge_runtime.redact import redact

from .measure import percentiles


class _Recorder(Metrics):
    """Metrics that also keep every frame's numbers (preallocated: no growth) and RSS."""

    def __init__(self, frames: int, rss_every: int) -> None:
        super().__init__()
        self.table = np.zeros((frames, 4), np.float64)
        self.n = 0
        self.rss: list[tuple[int, int]] = []
        self.rss_every = rss_every

    @property
    def rows(self) -> np.ndarray:
        """(invoke, cost, age) seconds per classified frame."""
        return self.table[:self.n, :3]

    @property
    def done_t(self) -> np.ndarray:
        """``time.monotonic()`` when each classified frame's result was ready."""
        return self.table[:self.n, 3]

    def observe(self, invoke_s: float, cost_s: float, age_s: float) -> None:
        super().observe(invoke_s, cost_s, age_s)
        if self.n < len(self.table):
            self.table[self.n] = (invoke_s, cost_s, age_s, time.monotonic())
            self.n += 1
        if self.n % self.rss_every == 0:
            self.rss.append((self.n, rss_bytes()))


# Codecs make_video can write: fourcc, and frames written (raw video is large).
CODECS = {"mjpg": ("MJPG", 300), "i420": ("I420", 120)}


def make_video(path: Path, frames: int | None = None, size: tuple[int, int] = (640, 480),
               codec: str = "mjpg") -> Path:
    """Writes a 640x480 video of moving shapes on a noisy background: MJPG (JPEG frames,
    decoded in software like a USB camera's MJPG) or I420 (uncompressed YUV 4:2:0, what
    a camera's ISP hands over; "decoding" is only the conversion to BGR)."""
    w, h = size
    fourcc, default_frames = CODECS[codec]
    frames = frames or default_frames
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30, (w, h))
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 40, (h, w, 3), np.uint8)
    for i in range(frames):
        img = cv2.add(np.full((h, w, 3), (90, 110, 120), np.uint8), noise)
        cv2.circle(img, (50 + (i * 7) % (w - 100), h // 2), 60, (40, 60, 220), -1)
        cv2.rectangle(img, (w - 150, 40 + (i * 3) % (h - 140)),
                      (w - 50, 140 + (i * 3) % (h - 140)), (200, 120, 30), -1)
        out.write(img)
    out.release()
    return path


class SimCamera:
    """A live camera from a video's frames: ``grab()`` blocks until the next frame is due
    at ``fps`` (a frame missed is skipped, as a camera's driver does), ``retrieve()``
    converts it from YUYV (or decodes it from JPEG, ``mjpg``) to BGR, the way OpenCV's
    V4L2 backend hands over a USB camera's frame. The methods the capture thread uses."""

    def __init__(self, video: Path, fps: float, fmt: str = "yuyv", limit: int = 300) -> None:
        cap = cv2.VideoCapture(str(video))
        self.frames = []
        self.fmt = fmt
        while len(self.frames) < limit:
            ok, bgr = cap.read()
            if not ok:
                break
            self.frames.append(cv2.imencode(".jpg", bgr)[1] if fmt == "mjpg" else
                               cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_YUYV) if fmt == "yuyv"
                               else bgr)
        cap.release()
        if not self.frames:
            raise EdgekitError(f"no frame could be read from {video}")
        self.period = 1.0 / fps
        self.t0 = time.monotonic()
        self.index = -1

    def isOpened(self) -> bool:  # noqa: N802 - cv2.VideoCapture's name
        return True

    def grab(self) -> bool:
        n = int((time.monotonic() - self.t0) / self.period) + 1
        n = max(n, self.index + 1)
        delay = self.t0 + n * self.period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.index = n
        return True

    def retrieve(self) -> tuple[bool, np.ndarray]:
        raw = self.frames[self.index % len(self.frames)]
        if self.fmt == "mjpg":
            return True, cv2.imdecode(raw, cv2.IMREAD_COLOR)
        if self.fmt == "yuyv":
            return True, cv2.cvtColor(raw, cv2.COLOR_YUV2BGR_YUYV)
        return True, raw.copy()

    def read(self) -> tuple[bool, np.ndarray]:
        self.grab()
        return self.retrieve()

    def get(self, _prop: int) -> float:
        return 1.0 / self.period

    def set(self, _prop: int, _value: float) -> bool:
        return False

    def release(self) -> None:
        self.frames = []


# --source choices played by SimCamera, and the format each camera delivers.
SIM_FORMATS = {"camera": "yuyv", "camera-mjpg": "mjpg", "camera-bgr": "bgr"}


def source_fps(source: str) -> float | None:
    """The frame rate a video file declares, or None."""
    from edge_runtime.camera import open_capture

    cap = open_capture(parse_source(source))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()
    return fps if 0.0 < fps < 1000.0 else None


def measure_end_to_end(model: str | Path, source: str, threads: int | None = None,
                       max_frames: int | None = 60, fps: float | None = None,
                       edgetpu: bool | str = False) -> dict[str, Any]:
    """Runs the daemon's loop (its ``Capture`` and ``Daemon``, JSON lines off) on ``source``
    and measures what a live deployment sees.

    A file paced at a frame rate is read the way ``camera.realtime`` replays it: frames
    arrive on time and inference takes only the newest, so when it is slower than the
    camera, frames are dropped unseen. Unpaced (``fps=0``), the file is read as
    ``run --source FILE`` reads it: every frame classified, in order, none dropped.

    Per classified frame: ``latency_ms`` (frame read -> result handed to the outputs),
    ``frame_age_ms`` (frame read -> taken by inference: the latency less the frame's own
    cost) and ``inference_ms`` (``invoke()``); ``fps`` is classified frames per second
    between the first and the last result.

    Args:
        model: the ``.tflite`` file.
        source: anything ``edge_runtime run --source`` takes (file, camera index, URL).
        threads: interpreter threads.
        max_frames: stop after this many classified frames (None or 0: the whole source).
        fps: pace a file at this rate; None: the file's own rate (30 when it has none);
            0: unpaced, every frame classified.
        edgetpu: run on the Edge TPU delegate.

    Returns:
        source, paced_fps, threads, frames_captured, frames_processed, frames_dropped,
        seconds, fps, latency_ms {...}, frame_age_ms {...}, inference_ms {...}.

    Raises:
        EdgekitError: the source cannot be opened or yields no frame.
    """
    src = parse_source(source)
    pace = None
    if not src.live:
        pace = (source_fps(source) or 30.0) if fps is None else (fps or None)
    sets = ["output.jsonl=off", f"camera.source={source}"] + (
        ["camera.realtime=true", f"camera.fps={pace}"] if pace else [])
    cfg = load_config(None, sets, environ={})
    clf = Classifier(model, threads=threads, edgetpu=edgetpu)
    # One untimed inference so the first frame does not pay for lazy initialisation.
    clf.scores(np.zeros((*clf.input_size, 3), np.uint8))
    limit = max_frames or None
    rec = _Recorder(limit or 100_000, max(1, (limit or 100_000) // 10))
    cap = Capture(src, cfg.camera, cfg.watchdog).start()
    try:
        Daemon(clf, cap, cfg, None, StopFlag(), max_frames=limit, metrics=rec).run()
    finally:
        cap.stop()
    if not rec.n:
        raise EdgekitError(f"no frame could be read from {src.display}")
    invoke, cost, age = (rec.rows[:, k] for k in range(3))
    done = rec.done_t
    # n results span n - 1 intervals between the first and the last result.
    seconds = float(done[-1] - done[0])
    return {"source": redact(str(source)), "paced_fps": pace, "threads": threads,
            "frames_captured": cap.captured, "frames_processed": rec.n,
            "frames_dropped": cap.dropped, "seconds": round(seconds, 3),
            "fps": (rec.n - 1) / seconds if seconds > 0 else 0.0,
            "latency_ms": percentiles((age * 1e3).tolist()),
            "frame_age_ms": percentiles((np.maximum(age - cost, 0.0) * 1e3).tolist()),
            "inference_ms": percentiles((invoke * 1e3).tolist())}


def bare_invoke(model: Path, threads: int | None, runs: int = 300) -> list[float]:
    """``invoke()`` latencies (seconds) with the input written once, warm-up excluded."""
    clf = Classifier(model, threads=threads)
    spec = clf.spec
    clf.interpreter.set_tensor(spec.index, np.zeros((1, spec.height, spec.width, 3),
                                                    spec.dtype))
    for _ in range(20):
        clf.interpreter.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        clf.interpreter.invoke()
        times.append(time.perf_counter() - t0)
    return times


def start_to_first_result(model: Path, video: Path, threads: int | None,
                          repeats: int = 3) -> list[float]:
    """Seconds from starting ``python -m edge_runtime run`` to its first JSON line."""
    out = []
    for _ in range(repeats):
        cmd = [sys.executable, "-m", "edge_runtime", "run", "--model", str(model), "--source",
               str(video), "--max-frames", "1"] + (["--threads", str(threads)] if threads
                                                     else [])
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        p.stdout.readline()
        out.append(time.perf_counter() - t0)
        p.wait(30)
    return out


def daemon_peak_rss(model: Path, video: Path, threads: int | None, frames: int,
                    interpolation: str | None) -> float:
    """Peak RSS (MB) of a real ``python -m edge_runtime run`` over ``frames`` frames of
    the video: the daemon's own memory, without this benchmark's."""
    # VmHWM, not ru_maxrss: on Linux ru_maxrss carries over the parent's peak through
    # fork/exec, so it would report this benchmark's memory, not the daemon's.
    cmd = [sys.executable, "-c", "import re, sys; from edge_runtime.cli import main; "
           "rc = main(sys.argv[1:]); print(re.search(r'VmHWM:\\s+(\\d+)', "
           "open('/proc/self/status').read()).group(1), file=sys.stderr); sys.exit(rc)",
           "run", "--model", str(model), "--source", str(video), "--loop",
           "--max-frames", str(frames), "--output", os.devnull]
    cmd += (["--threads", str(threads)] if threads else []) + \
        (["--interpolation", interpolation] if interpolation else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [x for x in p.stderr.split() if x.isdigit()]
    if p.returncode != 0 or not lines:
        raise EdgekitError(f"the daemon failed: {p.stderr.strip().splitlines()[-1:]}")
    return int(lines[-1]) / 1024.0  # VmHWM is in KiB


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``."""
    return float(np.quantile(np.asarray(values), q)) if values else 0.0


def _pipeline_run(model: Path, video: Path, frames: int, threads: int | None, fps: float,
                  source: str, interpolation: str | None = None
                  ) -> tuple[_Recorder, dict, int]:
    """One daemon run over the source: (per-frame records, summary, frames dropped)."""
    cfg = load_config(None, ["output.jsonl=off", f"camera.source={video}",
                             "camera.realtime=true", "camera.loop=true", f"camera.fps={fps}"]
                      + ([f"model.threads={threads}"] if threads else []), environ={})
    rec = _Recorder(frames, max(1, frames // 10))
    clf = Classifier(model, threads=threads, interpolation=interpolation)
    if source in SIM_FORMATS:
        sim = SimCamera(video, fps, SIM_FORMATS[source])
        cap = Capture(Source("camera", 0), cfg.camera, cfg.watchdog,
                      opener=lambda _s, _c: sim).start()
    else:
        cap = Capture(parse_source(str(video)), cfg.camera, cfg.watchdog).start()
    with open(os.devnull, "w", encoding="utf-8") as null:
        writer = JsonlWriter("-", stream=null)  # a JSON line per frame, as the daemon writes
        try:
            summary = Daemon(clf, cap, cfg, writer, StopFlag(), max_frames=frames,
                             metrics=rec).run()
        finally:
            cap.stop()
    return rec, summary, cap.dropped


def run_bench(model: Path, video: Path, frames: int, threads: int | None,
              source_fps: float | None, source: str = "file", repeats: int = 1,
              interpolation: str | None = None) -> dict:
    """Runs every measure; returns the report.

    Each repeat measures bare ``invoke()`` just before and just after its pipeline run and
    compares the pipeline with their mean, so a machine whose speed drifts (a shared VM,
    a warming board) is compared with itself. Ratios are medians over the repeats, with
    their range.
    """
    first = bare_invoke(model, threads)
    fps = source_fps or 2.0 / statistics.fmean(first)
    runs = []
    for i in range(repeats):
        before = first if i == 0 else bare_invoke(model, threads)
        rec, summary, dropped = _pipeline_run(model, video, frames, threads, fps, source,
                                              interpolation)
        after = bare_invoke(model, threads)
        bare = statistics.fmean(before + after)
        rows = rec.rows[min(20, len(rec.rows) // 10):]  # warm-up excluded
        invoke, cost, age = (rows[:, k].tolist() for k in range(3))
        rss = rec.rss
        runs.append({
            "bare_invoke_ms": {"mean": bare * 1e3, "before": statistics.fmean(before) * 1e3,
                               "after": statistics.fmean(after) * 1e3,
                               "p50": pct(before + after, 0.5) * 1e3},
            "pipeline_invoke_ms": {"mean": statistics.fmean(invoke) * 1e3,
                                   "p50": pct(invoke, 0.5) * 1e3},
            "frame_cost_ms": {"mean": statistics.fmean(cost) * 1e3, "p50": pct(cost, 0.5) * 1e3},
            "frame_age_ms": {"p50": pct(age, 0.5) * 1e3, "p95": pct(age, 0.95) * 1e3},
            "throughput_fps": summary["fps"], "frames": summary["frames"], "dropped": dropped,
            "rss_mb": {"samples": [(n, round(b / 2**20, 1)) for n, b in rss],
                       "end": round(rss_bytes() / 2**20, 1)},
            "ratios": {
                "cost": statistics.fmean(cost) / bare,
                "throughput": summary["fps"] * bare,
                "age": pct(age, 0.95) / bare,
                "rss_growth_mb": round((rss[-1][1] - rss[0][1]) / 2**20, 2)
                if len(rss) > 1 else 0.0,
            },
        })
    start = start_to_first_result(model, video, threads)
    daemon_rss = daemon_peak_rss(model, video, threads, frames, interpolation)

    def med(key: str) -> float:
        return statistics.median(r["ratios"][key] for r in runs)

    def rng(key: str) -> list[float]:
        return [round(min(r["ratios"][key] for r in runs), 3),
                round(max(r["ratios"][key] for r in runs), 3)]

    return {
        "model": str(model), "threads": threads or "default", "repeats": repeats,
        "interpolation": interpolation or "the model's",
        "source": (f"{video} replayed" if source == "file" else f"simulated {source} from "
                   f"{video}") + f" at {fps:.0f} fps",
        "runs": runs,  # rss_mb here is this benchmark process's (simulators included)
        "start_to_first_result_s": start,
        "ratios": {
            "cost_over_bare_invoke (<=1.10)": med("cost"),
            "throughput_x_bare_latency (>=0.95)": med("throughput"),
            "p95_age_over_invoke (<=2)": med("age"),
            "start_to_first_result_s (<=1.0)": statistics.median(start),
            "daemon_peak_rss_mb (<=150)": round(daemon_rss, 1),
            "rss_growth_mb (~0)": max(r["ratios"]["rss_growth_mb"] for r in runs),
        },
        "ratio_ranges": {"cost": rng("cost"), "throughput": rng("throughput"),
                         "age": rng("age")},
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = Parser(prog="python -m benchmarks.pipeline",
               description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--video", type=Path, default=None, help="640x480 video (default: made)")
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--source-fps", type=float, default=None)
    p.add_argument("--source", choices=("file", *SIM_FORMATS), default="file",
                   help="the video file through FFmpeg, or a simulated YUYV / MJPG / BGR "
                        "camera")
    p.add_argument("--repeats", type=int, default=1,
                   help="pipeline runs, each between two bare measurements (medians reported)")
    p.add_argument("--codec", choices=tuple(CODECS), default="mjpg",
                   help="codec of the video made when --video is not given")
    p.add_argument("--interpolation", choices=("linear", "area"), default=None,
                   help="frame resize (default: the manifest's; 'area' without one)")
    p.add_argument("--json", type=Path, default=None, help="write the report here too")
    args = p.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            video = args.video or make_video(Path(tmp) / f"bench_640x480_{args.codec}.avi",
                                             codec=args.codec)
            report = run_bench(args.model, video, args.frames, args.threads, args.source_fps,
                               args.source, max(1, args.repeats), args.interpolation)
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        from edge_runtime.fileio import write_json

        write_json(args.json, report)  # temp file + rename
    return 0


if __name__ == "__main__":
    sys.exit(main())
