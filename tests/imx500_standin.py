"""A stand-in for picamera2 with the surface edgekit uses of ``picamera2.devices.IMX500``.

Written into a temporary folder as a ``picamera2`` package (see :func:`install`), so the real
CLI imports it exactly as it would the Pi's. Frame ``n`` is a flat grey of value
``(n % classes) * 64 + 32`` and its inference puts 0.75 on class ``n % classes``: a result can be
checked against the picture it came with.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = '''
import numpy as np

CLASSES = {classes}
NO_INFERENCE_FRAMES = {blank}  # the first frames come before the network is loaded


def grey(n):
    return (n % CLASSES) * 64 + 32


def frame_scores(n):
    s = np.full(CLASSES, 0.25 / (CLASSES - 1), np.float32)
    s[n % CLASSES] = 0.75
    return np.round(s * 256) / 256


class _Request:
    def __init__(self, cam, n):
        self.cam, self.n = cam, n

    def get_metadata(self):
        if self.n < NO_INFERENCE_FRAMES:
            return {{"FrameNo": self.n}}
        return {{"FrameNo": self.n, "CnnOutputTensor": frame_scores(self.n).tolist()}}

    def make_array(self, name):
        w, h = self.cam.size
        return np.full((h, w, 3), grey(self.n), np.uint8)

    def release(self):
        self.cam.released += 1


class Picamera2:
    def __init__(self, num=0):
        self.num, self.n, self.released, self.size = num, 0, 0, (640, 480)

    def create_preview_configuration(self, main=None, controls=None, buffer_count=4):
        self.size = tuple((main or {{}}).get("size", (640, 480)))
        return {{"main": main, "controls": controls}}

    def start(self, config=None, show_preview=False):
        self.started = True

    def capture_request(self):
        r = _Request(self, self.n)
        self.n += 1
        return r

    def capture_metadata(self):
        r = self.capture_request()
        r.release()
        return r.get_metadata()

    def stop(self):
        pass

    def close(self):
        pass
'''

DEVICES = '''
import os

import numpy as np


class _Intrinsics:
    inference_rate = 30.0
    task = "classification"


class IMX500:
    def __init__(self, network_file, camera_id=""):
        if not os.path.isfile(network_file):
            raise RuntimeError(f"Firmware file {{network_file}} does not exist.")
        if {no_camera}:
            raise RuntimeError("IMX500: Requested camera dev-node not found")
        self.camera_num = 0
        self.network_intrinsics = _Intrinsics()
        self.roi = "full sensor"

    def set_auto_aspect_ratio(self):  # the real one: a centred crop of the input's aspect
        self.roi = "centred crop"

    def get_outputs(self, metadata, add_batch=False):
        t = metadata.get("CnnOutputTensor")
        if not t:
            return None
        out = np.fromiter(t, dtype=np.float32)
        return [out[None] if add_batch else out]
'''


def install(folder: Path, classes: int = 4, blank: int = 3, no_camera: bool = False) -> Path:
    """Writes the stand-in ``picamera2`` package under ``folder``; returns ``folder`` (for
    PYTHONPATH or sys.path)."""
    pkg = folder / "picamera2"
    (pkg / "devices").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(PACKAGE.format(classes=classes, blank=blank))
    (pkg / "devices" / "__init__.py").write_text(DEVICES.format(no_camera=no_camera))
    return folder
