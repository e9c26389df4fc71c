"""Turns one source string into a frame reader: camera, device, file, URL, pipeline, picamera2."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import EdgekitError
from .redact import redact

log = logging.getLogger(__name__)

_URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


@dataclass(frozen=True)
class Source:
    """A parsed source string.

    Attributes:
        kind: "camera" (index), "device" (/dev/video*), "file", "url", "gstreamer" or
            "picamera2" (a Raspberry Pi camera through libcamera's Python binding) or
            "imx500" (the AI Camera, with its inference: edge_runtime.imx500_backend).
        target: what is handed to ``cv2.VideoCapture`` (the camera number for picamera2).
        api: the OpenCV backend to use.
    """

    kind: str
    target: int | str
    api: int = cv2.CAP_ANY

    @property
    def live(self) -> bool:
        """True for cameras and streams (no end), False for files."""
        return self.kind != "file"

    @property
    def display(self) -> str:
        """The target quoted for messages, credentials hidden (see :func:`redact`)."""
        return redact(repr(self.target))


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
    if s.lower() == "picamera2" or s.lower().startswith("picamera2:"):
        _, _, num = s.partition(":")
        if num and not num.isdigit():
            raise EdgekitError(f"bad source {redact(repr(s))}: expected picamera2 or "
                               "picamera2:N")
        return Source("picamera2", int(num or 0))
    if s.lower() == "imx500":  # the AI Camera: frames with the sensor's own inference
        return Source("imx500", 0)
    if s.lower().startswith(_URL_SCHEMES):
        return Source("url", s, cv2.CAP_FFMPEG)
    if "!" in s:
        return Source("gstreamer", s, cv2.CAP_GSTREAMER)
    if s.startswith("/dev/video"):
        return Source("device", s, cv2.CAP_V4L2)
    if not Path(s).exists():
        raise EdgekitError(f"video source not found: {redact(s)}")
    if Path(s).is_dir():
        raise EdgekitError(f"video source is a folder, expected a video file: {redact(s)}")
    if Path(s).suffix.lower() in _STILL_SUFFIXES:
        # OpenCV reads a still image as a one-frame sequence, decoding it whole: the same
        # size limit as every other image read (a decompression bomb is refused here).
        from .imageio import probe_file

        probe_file(s)
    return Source("file", s)


_STILL_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff",
                             ".pgm", ".ppm", ".pnm"})


class Picamera2Capture:
    """A Raspberry Pi camera through ``picamera2``, with the ``cv2.VideoCapture`` methods used.

    ``picamera2`` is imported only when this source is asked for (it exists only on a Pi,
    from ``apt install python3-picamera2``; create the venv with ``--system-site-packages``).
    """

    def __init__(self, index: int = 0, width: int | None = None, height: int | None = None,
                 fps: float | None = None) -> None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError:
            raise EdgekitError("source 'picamera2' needs the picamera2 package: sudo apt "
                               "install python3-picamera2, and create the virtualenv with "
                               "--system-site-packages") from None
        try:
            self._cam = Picamera2(index)
            # "RGB888" is B, G, R in memory: what OpenCV calls BGR.
            config = self._cam.create_video_configuration(
                main={"size": (width or 640, height or 480), "format": "RGB888"},
                controls={"FrameRate": float(fps)} if fps else {})
            self._cam.configure(config)
            self._cam.start()
        except Exception as e:  # libcamera raises many kinds
            raise EdgekitError(f"cannot open picamera2 camera {index}: {e}") from None

    def isOpened(self) -> bool:  # cv2.VideoCapture's name
        """Always True once constructed."""
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        """The next frame as BGR."""
        try:
            return True, self._cam.capture_array("main")
        except Exception:  # a failed read is reported as one
            return False, None

    def get(self, _prop: int) -> float:
        """No properties; 0 like OpenCV for an unknown one."""
        return 0.0

    def set(self, _prop: int, _value: float) -> bool:
        """Size and rate are set at construction."""
        return False

    def release(self) -> None:
        """Stops and closes the camera."""
        try:
            self._cam.stop()
            self._cam.close()
        except Exception:  # closing a gone camera
            pass


def open_capture(source: Source, width: int | None = None, height: int | None = None,
                 fps: float | None = None, open_timeout_s: float = 10.0,
                 read_timeout_s: float = 5.0) -> cv2.VideoCapture | Picamera2Capture:
    """Opens a ``cv2.VideoCapture`` for ``source``, asking a camera for size and rate.

    URLs go through FFmpeg with open and read timeouts (RTSP over TCP unless
    ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` says otherwise), so a dead stream cannot block forever.

    Raises:
        EdgekitError: OpenCV cannot open it.
    """
    if source.kind == "picamera2":
        return Picamera2Capture(int(source.target), width, height, fps)
    if source.kind == "imx500":
        from .imx500_backend import Imx500Capture

        return Imx500Capture(width, height, fps)
    # FFmpeg and OpenCV print their own diagnostics for a bad file; our one line says it.
    # They write straight to stderr, where nothing can redact them: for a URL or a
    # pipeline (which may carry a password) OpenCV's own errors are silenced too.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if hasattr(cv2, "utils") and hasattr(cv2.utils, "logging"):
        lg = cv2.utils.logging
        lg.setLogLevel(lg.LOG_LEVEL_SILENT if source.kind in ("url", "gstreamer")
                       else lg.LOG_LEVEL_ERROR)
    if source.kind == "url":
        if str(source.target).lower().startswith(("rtsp://", "rtsps://")):
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
        cap = cv2.VideoCapture(source.target, source.api, params)
    else:
        cap = cv2.VideoCapture(source.target, source.api)
    if not cap.isOpened():
        cap.release()
        raise EdgekitError(f"cannot open video source {source.display} ({source.kind})")
    if source.kind in ("camera", "device"):
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                            (cv2.CAP_PROP_FPS, fps)):
            if value:
                cap.set(prop, value)
    return cap


_FLIP_CODES = {"horizontal": 1, "vertical": 0, "rotate180": -1}


def flip_code(flip: str) -> int | None:
    """The ``cv2.flip`` code for a profile's flip setting (None: no flip)."""
    return _FLIP_CODES.get(flip)


_NVVIDCONV_FLIP = {"none": 0, "rotate180": 2, "horizontal": 4, "vertical": 6}


def jetson_csi_pipeline(sensor_id: int = 0, sensor_mode: int | None = None,
                        width: int | None = None, height: int | None = None,
                        fps: float | None = None, flip: str = "none") -> str:
    """The GStreamer pipeline for a Jetson CSI camera (``nvarguscamerasrc``), BGR frames.

    Args:
        sensor_id: the CSI sensor.
        sensor_mode: the sensor mode (None: automatic).
        width: capture width (None: 1280).
        height: capture height (None: 720).
        fps: frame rate (None: 30).
        flip: "none", "horizontal", "vertical" or "rotate180", done by ``nvvidconv``.
    """
    w, h, rate = width or 1280, height or 720, round(fps or 30)
    mode = f" sensor-mode={sensor_mode}" if sensor_mode is not None else ""
    return (f"nvarguscamerasrc sensor-id={sensor_id}{mode} ! "
            f"video/x-raw(memory:NVMM),width={w},height={h},framerate={rate}/1 ! "
            f"nvvidconv flip-method={_NVVIDCONV_FLIP[flip]} ! video/x-raw,format=BGRx ! "
            "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1")
