"""The camera loop: frames in, one JSON line per classified frame out, clean stop on signals."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import IO, Any

from .camera import Source, frames
from .classify import Classifier
from .preprocess import bgr_to_rgb


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between frames."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None

    def install(self) -> Callable[[], None]:
        """Installs handlers for SIGINT and SIGTERM; returns a function restoring the old."""
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, _frame: object) -> None:
            self.signal = signum
            self.event.set()

        for s in old:
            signal.signal(s, handler)

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore


def run(classifier: Classifier, source: Source, out: IO[str] = sys.stdout,
        max_frames: int | None = None, stop: StopFlag | None = None,
        threshold: float = 0.0, loop: bool = False, camera: Any = None) -> dict[str, float]:
    """Classifies frames from ``source`` and writes one JSON line per frame to ``out``.

    Each line: ``{"time", "frame", "index", "label", "score", "inference_ms"}``; ``label``
    is null when the best score is below ``threshold``. Stops at the end of a file, after
    ``max_frames``, or when ``stop`` is set; ``loop`` replays a file from the start.
    ``camera`` (:class:`edge_runtime.config.CameraSettings`) sets capture size, rate, flip.

    Returns:
        A summary: frames, seconds, fps, mean inference_ms.
    """
    stop = stop or StopFlag()
    t_start = time.perf_counter()
    count = 0
    total_invoke = 0.0
    capture = {} if camera is None else {"flip": camera.flip, "width": camera.width,
                                         "height": camera.height, "fps": camera.fps}
    for n, frame in frames(source, loop=loop, **capture):
        if stop.event.is_set():
            break
        scores = classifier.scores(bgr_to_rgb(frame))
        best = int(scores.argmax())
        score = float(scores[best])
        total_invoke += classifier.last_invoke_ms
        line = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "frame": n,
            "index": best if score >= threshold else None,
            "label": classifier.labels.get(best, str(best)) if score >= threshold else None,
            "score": round(score, 6),
            "inference_ms": round(classifier.last_invoke_ms, 3),
        }
        out.write(json.dumps(line) + "\n")
        out.flush()
        count += 1
        if max_frames is not None and count >= max_frames:
            break
    seconds = time.perf_counter() - t_start
    return {"frames": count, "seconds": round(seconds, 3),
            "fps": round(count / seconds, 2) if seconds > 0 else 0.0,
            "mean_inference_ms": round(total_invoke / count, 3) if count else 0.0}
