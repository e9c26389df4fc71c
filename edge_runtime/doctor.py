"""``python -m edge_runtime doctor``: checks the machine (and a profile's needs), one line each."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import EXIT_ERROR, EXIT_OK, EdgekitError
from .redact import redact
from .thermal import hottest_zone

CORAL_USB_IDS = {("1a6e", "089a"): "Coral USB Accelerator (not yet initialised)",
                 ("18d1", "9302"): "Coral USB Accelerator"}
THROTTLE_BITS = {0: "under-voltage now", 1: "ARM frequency capped now", 2: "throttled now",
                 3: "soft temperature limit now", 16: "under-voltage has occurred",
                 17: "frequency capping has occurred", 18: "throttling has occurred",
                 19: "soft temperature limit has occurred"}


@dataclass(frozen=True)
class Check:
    """One doctor line.

    Attributes:
        name: what was checked.
        status: "ok", "info", "warn" or "fail" (fail: the profile cannot run).
        detail: what was found.
        fix: how to fix it (empty when nothing to do).
    """

    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        """``[status] name: detail (fix: ...)``."""
        return f"[{self.status:4}] {self.name}: {self.detail}" + (
            f" -- fix: {self.fix}" if self.fix else "")


class Doctor:
    """Runs the checks against a filesystem root (``/``; a fake tree in tests).

    Args:
        cfg: a :class:`edge_runtime.settings.DeviceConfig` whose needs are checked, or None.
        root: where /proc, /sys, /etc and /dev are read from.
        run: runs a command, returning its stdout or None (for ``vcgencmd``).
        edgetpu_loader: loads the Edge TPU delegate (raises EdgekitError when it cannot).
    """

    def __init__(self, cfg: Any = None, root: str | Path = "/",
                 run: Callable[[list[str]], str | None] | None = None,
                 edgetpu_loader: Callable[[str | None], Any] | None = None) -> None:
        self.cfg = cfg
        self.root = Path(root)
        self._run = run or _run_command
        self._load_edgetpu = edgetpu_loader
        self.checks: list[Check] = []

    def _p(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def _read(self, path: str) -> str | None:
        try:
            return self._p(path).read_text(encoding="utf-8", errors="replace").strip("\0\n ")
        except OSError:
            return None

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        """Records one check (credentials in a source URL hidden: doctor output is pasted
        into bug reports)."""
        self.checks.append(Check(name, status, redact(detail), redact(fix)))

    def run_all(self) -> list[Check]:
        """Runs every check; returns them in order."""
        for check in (self.python, self.system, self.board, self.interpreter, self.edgetpu,
                      self.jetson, self.coral_usb, self.cameras, self.opencv, self.governor,
                      self.throttling, self.temperature, self.profile):
            try:
                check()
            except Exception as e:  # one broken check must not hide the rest
                self.add(check.__name__, "warn", f"check failed: {type(e).__name__}: {e}")
        return self.checks

    @property
    def needs_edgetpu(self) -> bool:
        """The profile runs on an Edge TPU."""
        return self.cfg is not None and self.cfg.model.delegate == "edgetpu"

    def _severity(self, needed: bool, has_fallback: bool = False) -> str:
        return "fail" if needed and not has_fallback else ("warn" if needed else "info")

    # -- checks ------------------------------------------------------------------------

    def python(self) -> None:
        v = sys.version_info
        ok = v >= (3, 10)
        self.add("python", "ok" if ok else "fail", f"{platform.python_version()} "
                 f"({sys.executable})", "" if ok else "install Python >= 3.10")

    def system(self) -> None:
        machine = platform.machine()
        detail = f"{platform.system()} {platform.release()}, {machine}"
        if machine in ("armv7l", "armv6l"):
            self.add("system", "warn", detail + " (32-bit)", "ai-edge-litert has no 32-bit "
                     "ARM wheels: use a 64-bit OS, or pip install tflite-runtime")
        else:
            self.add("system", "ok", detail)

    def board(self) -> None:
        model = self._read("/proc/device-tree/model")
        tegra = self._read("/etc/nv_tegra_release")
        found = [x for x in (model, tegra.splitlines()[0] if tegra else None) if x]
        self.add("board", "info", "; ".join(found) if found else "no board model found "
                 "(a PC or VM)")

    def interpreter(self) -> None:
        from .backend import backend

        try:
            b = backend()
        except EdgekitError as e:
            self.add("interpreter", "fail", str(e), "pip install ai-edge-litert")
            return
        if b.name == "tensorflow":
            self.add("interpreter", "warn", f"{b.name} {b.version} (development fallback)",
                     "pip install ai-edge-litert (no TensorFlow on the device)")
        else:
            self.add("interpreter", "ok", f"{b.name} {b.version}")

    @property
    def needs_onnx(self) -> bool:
        """The profile runs an ONNX model."""
        return self.cfg is not None and self.cfg.model.path.lower().endswith(".onnx")

    def jetson(self) -> None:
        """JetPack/L4T release, CUDA and TensorRT libraries, and the ONNX Runtime providers
        that load: on a Jetson, or whenever a profile runs an ONNX model."""
        import ctypes.util

        tegra = self._read("/etc/nv_tegra_release")
        if tegra is None and not self.needs_onnx:
            return
        if tegra is not None:
            import re

            first = tegra.splitlines()[0] if tegra else ""
            m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
            self.add("jetpack", "info", f"L4T {m.group(1)}.{m.group(2)}" if m
                     else f"unrecognised /etc/nv_tegra_release: {first[:80]}")
            for lib, what in (("cudart", "CUDA runtime"), ("nvinfer", "TensorRT")):
                found = ctypes.util.find_library(lib)
                self.add(what.lower().replace(" ", "_"), "ok" if found else "warn",
                         found or f"lib{lib} not found",
                         "" if found else "sudo apt install nvidia-jetpack (JetPack's "
                         "CUDA/TensorRT packages)")
        from .onnx_backend import INSTALL_HINT, available_providers

        have = available_providers()
        gpu = [p for p in have if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")]
        m = self.cfg.model if self.cfg is not None else None
        fallback = bool(m and m.fallback)
        if not have:
            self.add("onnxruntime", self._severity(self.needs_onnx, fallback),
                     "not installed", INSTALL_HINT)
        elif not gpu:
            self.add("onnxruntime", "warn" if (self.needs_onnx or tegra) else "info",
                     f"providers: {', '.join(have)} (no GPU provider"
                     + ("; the profile's fallback model runs on the CPU)" if fallback else ")"),
                     "on a Jetson: the onnxruntime-gpu wheel for your JetPack release from "
                     "NVIDIA's Jetson packages (PyPI has no aarch64 GPU build)")
        else:
            self.add("onnxruntime", "ok", f"providers: {', '.join(have)}")

    def edgetpu(self) -> None:
        device = self.cfg.model.edgetpu_device if self.needs_edgetpu else None
        has_fallback = bool(self.needs_edgetpu and self.cfg.model.fallback)
        try:
            (self._load_edgetpu or _load_edgetpu)(device)
        except EdgekitError as e:
            status = self._severity(self.needs_edgetpu, has_fallback)
            msg = str(e).split(";")[0]
            if has_fallback:
                msg += f" (the profile falls back to {self.cfg.model.fallback} on the CPU)"
            self.add("edgetpu", status, msg, "install libedgetpu1-std from Coral's apt "
                     "repository and plug in the accelerator")
            return
        where = f" ({device})" if device else ""
        self.add("edgetpu", "ok", f"Edge TPU delegate loaded{where}")

    def coral_usb(self) -> None:
        found = []
        for dev in sorted(self._p("/sys/bus/usb/devices").glob("*")):
            vid = self._read(f"/sys/bus/usb/devices/{dev.name}/idVendor")
            pid = self._read(f"/sys/bus/usb/devices/{dev.name}/idProduct")
            if (vid, pid) in CORAL_USB_IDS:
                speed = self._read(f"/sys/bus/usb/devices/{dev.name}/speed") or "?"
                found.append((dev.name, vid, pid, speed))
        usb_needed = self.needs_edgetpu and (self.cfg.model.edgetpu_device or "usb").startswith(
            "usb")
        has_fallback = bool(self.needs_edgetpu and self.cfg.model.fallback)
        pci = self._p("/dev/apex_0").exists()
        if not found:
            status = self._severity(usb_needed and not pci, has_fallback)
            self.add("coral_usb", status, "no Coral USB Accelerator (1a6e:089a / 18d1:9302)"
                     + ("; a PCIe Edge TPU is present (/dev/apex_0)" if pci else ""),
                     "plug in the accelerator (lsusb should list it)" if usb_needed else "")
            return
        for name, vid, pid, speed in found:
            label = CORAL_USB_IDS[(vid, pid)]
            detail = f"{label} {vid}:{pid} on bus {name}, {speed} Mbit/s"
            if speed.isdigit() and int(speed) < 5000:
                self.add("coral_usb", "warn", detail + " (USB 2: several times slower)",
                         "plug it into a USB 3 port (blue) with a USB 3 cable")
            else:
                self.add("coral_usb", "ok", detail)

    def cameras(self) -> None:
        devices = sorted(self._p("/dev").glob("video*"), key=lambda p: (len(p.name), p.name))
        names = []
        for d in devices:
            label = self._read(f"/sys/class/video4linux/{d.name}/name")
            names.append(f"/dev/{d.name}" + (f" ({label})" if label else ""))
        need, other = None, None  # the device the profile reads; or its other kind of source
        if self.cfg is not None:
            from .camera import parse_source

            try:
                src = parse_source(self.cfg.camera.source_string())
            except EdgekitError as e:
                self.add("camera", "fail", str(e), "set camera.source in the profile")
                return
            if src.kind == "camera":
                need = f"/dev/video{src.target}"
            elif src.kind == "device":
                need = str(src.target)
            else:
                other = src.kind
        detail = ", ".join(names) if names else "no /dev/video* devices"
        if need is not None and not self._p(need).exists():
            self.add("camera", "fail", f"{need} not found; found: {detail}",
                     "connect the camera (ls /dev/video*) or set camera.source")
        elif names:
            self.add("camera", "ok", detail)
        elif other is not None:  # a video file, URL or pipeline needs no camera here
            self.add("camera", "ok", f"{detail} (the profile's source: {other})")
        else:
            self.add("camera", "warn", detail, "connect a camera (ls /dev/video*; a CSI "
                     "camera needs its overlay enabled), or use a video file or URL")

    def opencv(self) -> None:
        import cv2

        info = cv2.getBuildInformation()
        io = {}
        for key, name in (("GStreamer", "gstreamer"), ("FFMPEG", "ffmpeg"),
                          ("v4l/v4l2", "v4l2")):
            line = next((ln for ln in info.splitlines() if ln.strip().startswith(key + ":")), "")
            io[name] = "YES" in line.split(":", 1)[-1] if line else False
        detail = f"{cv2.__version__}; " + ", ".join(f"{k} {'yes' if v else 'no'}"
                                                     for k, v in io.items())
        need = None
        if self.cfg is not None:
            s = self.cfg.camera.source_string()
            if "!" in s:
                need = "gstreamer"
            elif s.lower().startswith(("rtsp://", "rtsps://", "http://", "https://")):
                need = "ffmpeg"
        if need and not io[need]:
            fix = ("use the distribution's OpenCV (apt install python3-opencv) with a venv "
                   "made with --system-site-packages; opencv-python wheels lack GStreamer"
                   if need == "gstreamer" else "pip install opencv-python-headless")
            self.add("opencv", "fail", detail + f" (the profile's source needs {need})", fix)
        else:
            self.add("opencv", "ok", detail)

    def governor(self) -> None:
        gov = self._read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
        if gov is None:
            self.add("cpu_governor", "info", "not exposed (VM or container)")
        elif gov in ("powersave",):
            self.add("cpu_governor", "warn", gov, "echo performance | sudo tee "
                     "/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor")
        else:
            self.add("cpu_governor", "ok", gov)

    def throttling(self) -> None:
        out = self._run(["vcgencmd", "get_throttled"])
        if out is None:
            self.add("throttling", "info", "vcgencmd not available (not a Raspberry Pi)")
            return
        try:
            value = int(out.strip().split("=")[-1], 16)
        except ValueError:
            self.add("throttling", "warn", f"unreadable: {out.strip()!r}")
            return
        if value == 0:
            self.add("throttling", "ok", "throttled=0x0")
            return
        flags = [text for bit, text in THROTTLE_BITS.items() if value & (1 << bit)]
        self.add("throttling", "warn", f"throttled={value:#x}: " + ", ".join(flags),
                 "use the official power supply (5 V 3 A / 5 A on a Pi 5) and a heatsink/fan")

    def temperature(self) -> None:
        hottest = hottest_zone(self.root)  # what /metrics reports as edgekit_temperature_celsius
        if hottest is None:
            self.add("temperature", "info", "no thermal zones")
        elif hottest >= 80.0:
            self.add("temperature", "warn", f"{hottest:.1f} C (throttling soon)",
                     "add a heatsink or fan; improve airflow")
        else:
            self.add("temperature", "ok", f"{hottest:.1f} C")

    def profile(self) -> None:
        if self.cfg is None:
            return
        m = self.cfg.model
        for name, path, needed in (("model", m.path, not (self.needs_edgetpu and m.fallback)),
                                   ("fallback_model", m.fallback, True)):
            if path is None:
                continue
            if Path(path).is_file():
                self.add(name, "ok", path)
            else:
                self.add(name, "fail" if needed else "warn", f"{path} not found",
                         "copy the model there or set model.path / model.fallback")
        out = self.cfg.output.jsonl
        if out not in ("-", "off"):
            folder = Path(out).parent
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            ok = os.access(folder, os.W_OK)
            self.add("output", "ok" if ok else "fail", f"{out}" + ("" if ok else
                     f" ({folder} is not writable)"),
                     "" if ok else f"sudo install -d -o $USER {Path(out).parent}")
        if self.cfg.http.enabled:
            self._port_check()
        if self.cfg.camera.source.lower().startswith("picamera2"):
            self._import_check("picamera2", "sudo apt install python3-picamera2; make the "
                               "venv with --system-site-packages")
        from .imx500_backend import doctor_checks, uses_imx500

        if uses_imx500(self.cfg.camera.source, m.path):  # the Raspberry Pi AI Camera
            for check in doctor_checks(self._p, m.path):
                self.add(*check)
        if self.cfg.mqtt.enabled:
            self._import_check("paho.mqtt.client", "pip install paho-mqtt")

    def _port_check(self) -> None:
        h = self.cfg.http
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((h.host, h.port))
            self.add("http", "ok", f"{h.host}:{h.port} is free")
        except OSError as e:
            self.add("http", "fail", f"cannot bind {h.host}:{h.port}: {e.strerror}",
                     "stop what uses the port or set http.port")
        finally:
            s.close()

    def _import_check(self, module: str, fix: str) -> None:
        import importlib

        try:
            importlib.import_module(module)
            self.add(module.split(".")[0], "ok", "importable")
        except ImportError:
            self.add(module.split(".")[0], "fail", "not installed", fix)


def _load_edgetpu(device: str | None) -> Any:
    """Loads the delegate; a missing library is found with ctypes first (no noisy failure)."""
    import ctypes

    from .backend import EDGETPU_LIBRARY, load_edgetpu_delegate

    try:
        ctypes.CDLL(EDGETPU_LIBRARY)
    except OSError as e:
        raise EdgekitError(f"Edge TPU delegate did not load ({EDGETPU_LIBRARY}): {e}") from None
    return load_edgetpu_delegate(device)


def _run_command(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def run_doctor(config: str | Path | None = None, overrides: list[str] | None = None,
               as_json: bool = False, root: str | Path = "/") -> int:
    """Prints one line per check; returns non-zero when something the profile needs fails.

    Raises:
        EdgekitError: the profile itself does not load.
    """
    cfg = None
    if config is not None:
        from .config import load_config

        cfg = load_config(config, overrides)
    checks = Doctor(cfg, root).run_all()
    for c in checks:
        print(json.dumps(asdict(c)) if as_json else c.line())
    failed = [c.name for c in checks if c.status == "fail"]
    if not as_json:
        print(f"{len(checks)} checks, {len(failed)} failed" +
              (f": {', '.join(failed)}" if failed else ""))
    return EXIT_ERROR if failed else EXIT_OK
