"""The Raspberry Pi AI Camera (Sony IMX500): the sensor runs the network, the Pi reads results.

A model ``network.rpk`` (made on the Pi by ``imx500-package`` from convert's
``export/imx500/packerOut.zip``, ``manifest.json`` beside it) loads as an
:class:`Imx500Interpreter`: the TFLite interpreter's methods, whose ``invoke()`` hands back
the scores the camera computed for the frame being classified. The source ``imx500`` is an
:class:`Imx500Capture`: frames from picamera2, each carrying its own inference (read from
the request's metadata with picamera2's ``IMX500.get_outputs``), so a result always belongs
to the picture it is shown, kept and published with. Everything after that (smoothing,
outputs, /metrics, keep, drift) is the daemon's usual path.

picamera2 exists only on the Pi (``apt install python3-picamera2 imx500-all``); it is
imported when an ``.rpk`` model is loaded, never before. :func:`set_helper_factory` lets
tests on x86 stand in for ``picamera2.devices.IMX500`` and ``Picamera2``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgekitError
from .manifest import manifest_beside

log = logging.getLogger(__name__)

# The IMX500's classifier output is unsigned 8-bit with scale 1/256 (imxconv-tf's
# dnnParams.xml): picamera2 hands it over as float32 k/256, so re-quantizing is exact.
OUTPUT_SCALE = 1.0 / 256.0
FIRMWARE_TIMEOUT_S = 300.0  # uploading a network to the sensor takes minutes the first time
INSTALL_HINT = ("the IMX500 needs picamera2 and its firmware: sudo apt install imx500-all "
                "python3-picamera2, and create the virtualenv with --system-site-packages")

_factory_lock = threading.Lock()
_factory: Callable[[], tuple[Any, Any]] | None = None
_active: Imx500Network | None = None


def _picamera2_classes() -> tuple[Any, Any]:
    try:
        from picamera2 import Picamera2  # type: ignore[import-not-found]
        from picamera2.devices import IMX500  # type: ignore[import-not-found]
    except ImportError:
        raise EdgekitError(f"an .rpk model runs on the Raspberry Pi AI Camera: "
                           f"{INSTALL_HINT}") from None
    return IMX500, Picamera2


def set_helper_factory(factory: Callable[[], tuple[Any, Any]] | None) -> None:
    """Replaces how (IMX500, Picamera2) are found (tests); None restores picamera2's."""
    global _factory, _active
    with _factory_lock:
        _factory, _active = factory, None


def helper_classes() -> tuple[Any, Any]:
    """(IMX500 helper class, Picamera2 class).

    Raises:
        EdgekitError: picamera2 missing (with the install line).
    """
    return (_factory or _picamera2_classes)()


class Imx500Network:
    """One network uploaded to the sensor: the picamera2 helper and the camera number.

    Raises:
        EdgekitError: no IMX500 camera, or the firmware upload refused.
    """

    def __init__(self, rpk: Path, resize: str = "stretch") -> None:
        imx500_cls, self.picamera2_cls = helper_classes()
        try:
            # The helper uploads the network: it must exist before Picamera2 opens.
            self.helper = imx500_cls(str(rpk))
            if resize == "center_crop":  # as training saw it: the centred square, not a squash
                self.helper.set_auto_aspect_ratio()
        except PermissionError as e:
            # Older picamera2 reads the upload progress from debugfs, which only root may read.
            raise EdgekitError(f"cannot load {rpk.name} on the IMX500: permission denied on "
                               f"{e.filename or e}: upgrade picamera2 (sudo apt install "
                               "--only-upgrade python3-picamera2) or run the service as root"
                               ) from None
        except (RuntimeError, OSError, FileNotFoundError) as e:
            raise EdgekitError(f"cannot load {rpk.name} on the IMX500: {e} (is the AI Camera "
                               "connected? `rpicam-hello --list-cameras` lists it)") from None
        self.rpk = rpk
        self.camera_num = int(getattr(self.helper, "camera_num", 0))
        intr = getattr(self.helper, "network_intrinsics", None)
        self.inference_rate = getattr(intr, "inference_rate", None) if intr else None
        self.latest: np.ndarray | None = None  # the newest frame's scores (any thread)

    def scores(self, metadata: dict) -> np.ndarray | None:
        """A frame's class scores from its request metadata; None without an inference."""
        outputs = self.helper.get_outputs(metadata, add_batch=False)
        if not outputs:
            return None
        s = np.asarray(outputs[0], np.float32).reshape(-1)
        self.latest = s
        return s


def load_network(rpk: Path, resize: str = "stretch") -> Imx500Network:
    """The network for ``rpk``, uploaded once per process (the camera source uses it too);
    ``resize`` is the manifest's (center_crop sets the sensor's centred inference crop)."""
    global _active
    with _factory_lock:
        if _active is None or _active.rpk != rpk:
            _active = Imx500Network(rpk, resize)
        return _active


def active_network() -> Imx500Network | None:
    """The network loaded by the model, if any."""
    return _active


class TaggedFrame(np.ndarray):
    """A BGR frame carrying the IMX500's scores for it (``imx500_scores``)."""

    imx500_scores: np.ndarray | None = None


def tag(image: np.ndarray, scores: np.ndarray | None) -> TaggedFrame:
    """``image`` as a :class:`TaggedFrame` (no copy)."""
    out = image.view(TaggedFrame)
    out.imx500_scores = scores
    return out


class Imx500Interpreter:
    """The TFLite interpreter's methods over the camera's own inference.

    The input tensor is a scratch buffer the runtime fills as usual (nothing reads it);
    ``bind_frame`` picks the scores of the frame being classified, ``invoke`` makes them
    the output. A frame without them (a flipped copy) gets the newest frame's scores.

    Raises:
        EdgekitError: no manifest.json beside the model, picamera2 missing, no camera.
    """

    def __init__(self, model_path: str | Path) -> None:
        path = Path(model_path)
        manifest = manifest_beside(path)
        if manifest is None:
            raise EdgekitError(f"{path.name} needs the manifest.json convert wrote beside "
                               f"packerOut.zip (labels, input size) in {path.parent}")
        h, w = manifest.input_size
        self.classes = len(manifest.labels)
        self.network = load_network(path.resolve(), manifest.resize)
        self._buffer = np.zeros((1, h, w, 3), np.uint8)
        self._bound: np.ndarray | None = None
        self._result: np.ndarray | None = None
        self.provider = None  # a TFLite-like model, not ONNX (Classifier reads this)

    def allocate_tensors(self) -> None:
        """Nothing to allocate (TFLite API parity)."""

    def get_input_details(self) -> list[dict[str, Any]]:
        return [{"index": 0, "name": "image", "shape": np.array(self._buffer.shape, np.int32),
                 "dtype": np.uint8, "quantization": (1.0, 0)}]

    def get_output_details(self) -> list[dict[str, Any]]:
        return [{"index": 1, "name": "scores", "shape": np.array([1, self.classes], np.int32),
                 "dtype": np.uint8, "quantization": (OUTPUT_SCALE, 0)}]

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        if index != 0:
            raise ValueError(f"tensor {index} is not the input (0)")
        self._buffer[...] = value

    def tensor(self, index: int) -> Any:
        if index != 0:
            raise ValueError(f"tensor {index} is not the input (0)")
        return lambda: self._buffer

    def bind_frame(self, frame: Any) -> None:
        """The frame whose scores the next ``invoke()`` returns."""
        self._bound = getattr(frame, "imx500_scores", None)
        if self._bound is None:
            self._bound = self.network.latest

    def invoke(self) -> None:
        """Raises ValueError (a skipped frame) when the camera gave no inference for it."""
        s, self._bound = self._bound, None
        if s is None:
            raise ValueError("no IMX500 inference for this frame (only the imx500 camera "
                             "source feeds an .rpk model)")
        if s.size != self.classes:
            raise ValueError(f"the IMX500 returned {s.size} scores, the manifest has "
                             f"{self.classes} labels")
        self._result = np.clip(np.rint(s / OUTPUT_SCALE), 0, 255).astype(np.uint8)[None]

    def get_tensor(self, index: int) -> np.ndarray:
        if index == 0:
            return self._buffer.copy()
        if self._result is None:
            raise ValueError("invoke() has not run")
        return self._result.copy()


class Imx500Capture:
    """The AI Camera through picamera2, with the ``cv2.VideoCapture`` methods the capture
    thread uses; every frame comes tagged with the sensor's inference for it.

    Raises:
        EdgekitError: no ``.rpk`` model loaded, the camera does not start, or no inference
            arrives within ``firmware_timeout_s`` (the network upload failed).
    """

    def __init__(self, width: int | None = None, height: int | None = None,
                 fps: float | None = None, firmware_timeout_s: float = FIRMWARE_TIMEOUT_S
                 ) -> None:
        net = active_network()
        if net is None:
            raise EdgekitError("source 'imx500' needs an IMX500 model: --model "
                               "network.rpk (imx500-package makes it from packerOut.zip)")
        self.network = net
        rate = float(fps or net.inference_rate or 30.0)
        try:
            self._cam = net.picamera2_cls(net.camera_num)
            # "RGB888" is B, G, R in memory: what OpenCV calls BGR.
            config = self._cam.create_preview_configuration(
                main={"size": (width or 640, height or 480), "format": "RGB888"},
                controls={"FrameRate": rate}, buffer_count=12)
            self._cam.start(config, show_preview=False)
        except Exception as e:  # libcamera raises many kinds
            raise EdgekitError(f"cannot start the IMX500 camera {net.camera_num}: {e}") from None
        self._wait_first(firmware_timeout_s)

    def _wait_first(self, timeout: float) -> None:
        log.info("waiting for the IMX500 network firmware (minutes on its first upload)")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            md = self._cam.capture_metadata()
            if self.network.scores(md) is not None:
                return
        self.release()
        raise EdgekitError(f"no inference from the IMX500 in {timeout:.0f} s: the network "
                           f"{self.network.rpk.name} did not load (see `dmesg | grep imx500`)")

    def isOpened(self) -> bool:  # cv2.VideoCapture's name
        """Always True once constructed."""
        return True

    def read(self, tries: int = 30) -> tuple[bool, np.ndarray | None]:
        """The next frame with an inference, as BGR tagged with its scores."""
        for _ in range(tries):
            try:
                request = self._cam.capture_request()
            except Exception:  # a failed read is reported as one
                return False, None
            try:
                scores = self.network.scores(request.get_metadata())
                image = request.make_array("main") if scores is not None else None
            finally:
                request.release()
            if image is not None:
                return True, tag(np.ascontiguousarray(image[..., :3]), scores)
        return False, None

    def get(self, _prop: int) -> float:
        """No properties; 0 like OpenCV for an unknown one."""
        return 0.0

    def set(self, _prop: int, _value: float) -> bool:
        """Size and rate are set at construction."""
        return False

    def release(self) -> None:
        """Stops and closes the camera (the network stays on the sensor)."""
        try:
            self._cam.stop()
            self._cam.close()
        except Exception:  # closing a gone camera
            pass


def uses_imx500(source: str, model_path: str | None) -> bool:
    """The profile runs on the AI Camera (source ``imx500`` or an ``.rpk`` model)."""
    return str(source).strip().lower() == "imx500" or str(model_path or "").lower().endswith(".rpk")


def doctor_checks(p: Callable[[str], Path], model_path: str | None,
                  which: Callable[[str], str | None] = shutil.which
                  ) -> list[tuple[str, str, str, str]]:
    """What the AI Camera needs, as doctor lines ``(name, status, detail, fix)``.

    Args:
        p: maps an absolute path to the filesystem doctor reads (a fake root in tests).
        model_path: the profile's model.
        which: finds an executable.
    """
    out = [_picamera2_check()]
    fw = sorted(f.name for f in p("/lib/firmware").glob("imx500_*"))
    out.append(("imx500_firmware", "ok" if fw else "fail",
                ", ".join(fw) if fw else "no /lib/firmware/imx500_* (the sensor's loader and "
                "main firmware)", "" if fw else "sudo apt install imx500-all"))
    found = [d for d in sorted(p("/sys/class/video4linux").glob("v4l-subdev*"))
             if "imx500" in _link(d / "device" / "driver" / "module")]
    out.append(("imx500_camera", "ok" if found else "fail",
                f"{found[0].name} (imx500 driver)" if found else "no IMX500 sensor found",
                "" if found else "connect the AI Camera's ribbon cable and reboot; "
                "`rpicam-hello --list-cameras` should list imx500"))
    tool = which("imx500-package")
    model = Path(model_path) if model_path else None
    need_tool = model is not None and model.suffix == ".rpk" and not p(str(model)).is_file()
    out.append(("imx500_tools", "ok" if tool else ("fail" if need_tool else "info"),
                tool or "imx500-package not installed" + (
                    f" and {model} is missing" if need_tool else " (only needed to make an "
                    ".rpk from packerOut.zip)"),
                "" if tool else "sudo apt install imx500-tools; then imx500-package -i "
                "packerOut.zip -o DIR makes DIR/network.rpk"))
    return out


def _picamera2_check() -> tuple[str, str, str, str]:
    """Imports picamera2 for real: apt's build fails to import beside a pip numpy 2
    ("numpy.dtype size changed"), which a find_spec would call fine."""
    try:
        import picamera2  # type: ignore[import-not-found]  # noqa: F401
    except ImportError as e:
        if getattr(e, "name", None) == "picamera2":
            return ("picamera2", "fail", "not installed", "sudo apt install python3-picamera2; "
                    "make the venv with --system-site-packages (make deploy does)")
        why = f"import failed: {type(e).__name__}: {e}"
    except Exception as e:  # a binary mismatch raises ValueError/AttributeError, not ImportError
        why = f"import failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    else:
        return ("picamera2", "ok", "importable", "")
    return ("picamera2", "fail", why[:200], "the venv's packages clash with apt's picamera2 "
            "(often a pip numpy 2): remake the venv with --system-site-packages and the "
            "system's numpy (make deploy does)")


def _link(path: Path) -> str:
    try:
        return str(path.readlink())
    except OSError:
        return ""


__all__ = ["Imx500Capture", "Imx500Interpreter", "Imx500Network", "TaggedFrame",
           "active_network", "doctor_checks", "load_network", "set_helper_factory", "tag",
           "uses_imx500"]
