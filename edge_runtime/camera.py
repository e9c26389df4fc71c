"""Turns one source string into OpenCV frames: camera index, device path, file, URL, pipeline."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import EdgekitError

log = logging.getLogger(__name__)

_URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


@dataclass(frozen=True)
class Source:
    """A parsed source string.

    Attributes:
        kind: "camera" (index), "device" (/dev/video*), "file", "url" or "gstreamer".
        target: what is handed to ``cv2.VideoCapture``.
        api: the OpenCV backend to use.
    """

    kind: str
    target: int | str
    api: int = cv2.CAP_ANY

    @property
    def live(self) -> bool:
        """True for cameras and streams (no end), False for files."""
        return self.kind != "file"


def parse_source(text: str) -> Source:
    """Parses a source string.

    Raises:
        EdgekitError: an empty string or a file that does not exist.
    """
    s = text.strip()
    if not s:
        raise EdgekitError("empty --source; expected a camera index, /dev/video*, a video "
                           "file, a URL or a GStreamer pipeline")
    if s.isdigit():
        return Source("camera", int(s))
    if s.lower().startswith(_URL_SCHEMES):
        return Source("url", s, cv2.CAP_FFMPEG)
    if "!" in s:
        return Source("gstreamer", s, cv2.CAP_GSTREAMER)
    if s.startswith("/dev/video"):
        return Source("device", s, cv2.CAP_V4L2)
    if not Path(s).exists():
        raise EdgekitError(f"video source not found: {s}")
    if Path(s).is_dir():
        raise EdgekitError(f"video source is a folder, expected a video file: {s}")
    return Source("file", s)


def open_capture(source: Source, width: int | None = None, height: int | None = None,
                 fps: int | None = None) -> cv2.VideoCapture:
    """Opens a ``cv2.VideoCapture`` for ``source``, asking a camera for size and rate.

    Raises:
        EdgekitError: OpenCV cannot open it.
    """
    # FFmpeg and OpenCV print their own diagnostics for a bad file; our one line says it.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if hasattr(cv2, "utils") and hasattr(cv2.utils, "logging"):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    cap = cv2.VideoCapture(source.target, source.api)
    if not cap.isOpened():
        cap.release()
        raise EdgekitError(f"cannot open video source {source.target!r} ({source.kind})")
    if source.kind in ("camera", "device"):
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                            (cv2.CAP_PROP_FPS, fps)):
            if value:
                cap.set(prop, value)
    return cap


_FLIP_CODES = {"horizontal": 1, "vertical": 0, "rotate180": -1}


def frames(source: Source, max_failures: int = 30, loop: bool = False, flip: str = "none",
           width: int | None = None, height: int | None = None, fps: int | None = None
           ) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(frame_number, bgr_frame)`` until the end of a file (forever with ``loop``).

    ``flip`` ("horizontal", "vertical", "rotate180") corrects a mounted-upside-down camera.

    A live source that fails ``max_failures`` reads in a row is treated as gone.

    Raises:
        EdgekitError: the source cannot be opened, or a file yields no frame at all.
    """
    cap = open_capture(source, width, height, fps)
    flip_code = _FLIP_CODES.get(flip)
    n = 0
    failures = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                if not source.live:
                    if loop and n > 0:
                        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                        continue
                    break
                failures += 1
                if failures >= max_failures:
                    raise EdgekitError(f"video source {source.target!r} stopped delivering "
                                       f"frames ({failures} failed reads)")
                continue
            failures = 0
            yield n, (frame if flip_code is None else cv2.flip(frame, flip_code))
            n += 1
    finally:
        cap.release()
    if n == 0:
        raise EdgekitError(f"no frame could be read from {source.target!r}; is it a video?")
