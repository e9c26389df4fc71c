"""Device profiles: YAML files loaded into typed, validated settings.

Precedence, highest first: command-line flags and ``--set section.key=value`` >
environment variables ``EDGEKIT_<SECTION>_<KEY>`` (e.g. ``EDGEKIT_MODEL_THREADS=2``,
``EDGEKIT_HTTP_TOKEN=...``) > the profile file > the defaults below. An unknown key or a
bad value is an error naming the file (or layer) and the field. List fields (``classify.allow``,
``classify.deny``) take a YAML list, or a comma-separated string from ``--set``/environment.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EdgekitError


@dataclass(frozen=True)
class ModelSettings:
    """Which model runs and how.

    Attributes:
        path: the ``.tflite`` file (relative paths are relative to the working directory).
        fallback: a CPU model used when the Edge TPU is missing (None: fail instead).
        threads: interpreter CPU threads (None: the backend's default).
        delegate: "cpu" or "edgetpu".
        edgetpu_device: "usb", "usb:N", "pci:N" or None for the first found.
        interpolation: how frames are shrunk, "linear" or "area"; None: as the model's
            manifest says ("area" for a model without one). Set it for a model not made
            here whose training resize you know.
    """

    path: str = "runs/demo/export/model_int8.tflite"
    fallback: str | None = None
    threads: int | None = None
    delegate: str = "cpu"
    edgetpu_device: str | None = None
    interpolation: str | None = None

    def __post_init__(self) -> None:
        if self.interpolation is not None and self.interpolation not in ("linear", "area"):
            raise ValueError(f"interpolation {self.interpolation!r}, expected 'linear' or "
                             "'area'")
        if self.delegate not in ("cpu", "edgetpu"):
            raise ValueError(f"delegate {self.delegate!r}, expected 'cpu' or 'edgetpu'")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads {self.threads}, expected >= 1")


@dataclass(frozen=True)
class CameraSettings:
    """Where frames come from.

    Attributes:
        source: camera index, /dev/video*, file, URL, GStreamer pipeline or "picamera2";
            "csi" builds a Jetson ``nvarguscamerasrc`` pipeline from the fields below.
        width: requested capture width (None: the camera's default).
        height: requested capture height.
        fps: requested frame rate (for a ``realtime`` file: the replay rate).
        flip: "none", "horizontal", "vertical" or "rotate180".
        sensor_id: Jetson CSI sensor id.
        sensor_mode: Jetson CSI sensor mode (None: automatic).
        loop: replay a video file endlessly.
        realtime: replay a file at its frame rate keeping only the newest frame, as a
            camera would (default: every frame of a file is classified, in order).
        open_timeout_s: FFmpeg (URL) open timeout.
        read_timeout_s: FFmpeg (URL) read timeout.
    """

    source: str = "0"
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    flip: str = "none"
    sensor_id: int = 0
    sensor_mode: int | None = None
    loop: bool = False
    realtime: bool = False
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.flip not in ("none", "horizontal", "vertical", "rotate180"):
            raise ValueError(f"flip {self.flip!r}, expected none, horizontal, vertical or "
                             "rotate180")
        for name in ("width", "height", "fps"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} {v}, expected >= 1")
        for name in ("open_timeout_s", "read_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} {getattr(self, name)}, expected > 0")

    def source_string(self) -> str:
        """The source string for :func:`edge_runtime.camera.parse_source`."""
        if self.source != "csi":
            return self.source
        w, h, fps = self.width or 1280, self.height or 720, round(self.fps or 30)
        flip = {"none": 0, "rotate180": 2, "horizontal": 4, "vertical": 6}[self.flip]
        mode = f" sensor-mode={self.sensor_mode}" if self.sensor_mode is not None else ""
        return (f"nvarguscamerasrc sensor-id={self.sensor_id}{mode} ! "
                f"video/x-raw(memory:NVMM),width={w},height={h},framerate={fps}/1 ! "
                f"nvvidconv flip-method={flip} ! video/x-raw,format=BGRx ! videoconvert ! "
                "video/x-raw,format=BGR ! appsink drop=true max-buffers=1")


@dataclass(frozen=True)
class ClassifySettings:
    """Post-processing of scores.

    Attributes:
        top_k: classes reported per frame (in ``top`` of detailed results).
        threshold: below this score a frame's label is null.
        allow: only these labels may be reported (empty: all).
        deny: these labels are never reported.
    """

    top_k: int = 1
    threshold: float = 0.0
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k {self.top_k}, expected >= 1")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold}, expected 0..1")
        both = set(self.allow) & set(self.deny)
        if both:
            raise ValueError(f"labels both allowed and denied: {sorted(both)}")


@dataclass(frozen=True)
class SmoothingSettings:
    """Temporal smoothing so the reported label does not flicker.

    Attributes:
        window: moving average over this many frames (1: no smoothing).
        hysteresis: a new label must beat the current one by this much (averaged score),
            and the current label is kept until it falls this far below the threshold.
    """

    window: int = 1
    hysteresis: float = 0.0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window {self.window}, expected >= 1")
        if not 0.0 <= self.hysteresis < 1.0:
            raise ValueError(f"hysteresis {self.hysteresis}, expected 0 <= h < 1")


@dataclass(frozen=True)
class OutputSettings:
    """Where results go.

    Attributes:
        jsonl: JSON-lines file to append to; "-" for stdout; "off" for none.
        max_bytes: rotate the file when it grows past this size (0: never).
        backups: rotated files kept (``FILE.1`` ... ``FILE.N``).
        details: add ``frame_age_ms``, ``dropped``, ``top`` and ``raw`` to each line.
        on_change: write a line only when the reported label changes.
    """

    jsonl: str = "-"
    max_bytes: int = 0
    backups: int = 5
    details: bool = False
    on_change: bool = False

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes {self.max_bytes}, expected >= 0")
        if self.backups < 1:
            raise ValueError(f"backups {self.backups}, expected >= 1")


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP server: live page, MJPEG stream, /latest, /healthz, /metrics.

    Attributes:
        enabled: serve HTTP.
        host: address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface).
        port: TCP port (0: any free port, printed on stderr).
        token: when set, every request needs ``Authorization: Bearer TOKEN`` (or
            ``?token=TOKEN``, for the browser page); /healthz stays open.
        stream_fps: MJPEG frames per second at most.
        stream_width: MJPEG frame width (height keeps the aspect ratio).
        jpeg_quality: MJPEG JPEG quality, 1..100.
        max_clients: concurrent MJPEG clients at most.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    stream_fps: float = 10.0
    stream_width: int = 640
    jpeg_quality: int = 80
    max_clients: int = 4

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port}, expected 0..65535")
        if self.stream_fps <= 0:
            raise ValueError(f"stream_fps {self.stream_fps}, expected > 0")
        if self.stream_width < 16:
            raise ValueError(f"stream_width {self.stream_width}, expected >= 16")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality {self.jpeg_quality}, expected 1..100")
        if self.max_clients < 1:
            raise ValueError(f"max_clients {self.max_clients}, expected >= 1")


@dataclass(frozen=True)
class WatchdogSettings:
    """Liveness: camera stalls, reconnects, health and the systemd watchdog.

    Attributes:
        stall_s: a live source with no new frame for this long is reopened.
        backoff_initial_s: first reopen delay; doubles per failed attempt.
        backoff_max_s: the longest reopen delay.
        jitter: random +- fraction applied to each delay (spreads reconnect storms).
        health_max_age_s: /healthz fails when no frame was classified for this long.
        systemd: send READY/WATCHDOG/STATUS to systemd when NOTIFY_SOCKET is set.
    """

    stall_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter: float = 0.2
    health_max_age_s: float = 10.0
    systemd: bool = True

    def __post_init__(self) -> None:
        for name in ("stall_s", "backoff_initial_s", "backoff_max_s", "health_max_age_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} {getattr(self, name)}, expected > 0")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"backoff_max_s {self.backoff_max_s} is below "
                             f"backoff_initial_s {self.backoff_initial_s}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter {self.jitter}, expected 0 <= jitter < 1")


@dataclass(frozen=True)
class MqttSettings:
    """Publishing label changes over MQTT (needs ``pip install paho-mqtt``).

    Attributes:
        enabled: publish.
        host: broker host.
        port: broker port.
        topic: topic for label changes (a JSON result per message).
        client_id: MQTT client id (None: generated).
        username: broker user name (None: anonymous).
        password: broker password (prefer ``EDGEKIT_MQTT_PASSWORD``).
        qos: 0, 1 or 2.
        retain: broker keeps the last label for new subscribers.
    """

    enabled: bool = False
    host: str = "localhost"
    port: int = 1883
    topic: str = "edgekit/label"
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    qos: int = 0
    retain: bool = True

    def __post_init__(self) -> None:
        if self.qos not in (0, 1, 2):
            raise ValueError(f"qos {self.qos}, expected 0, 1 or 2")
        if not 0 < self.port <= 65535:
            raise ValueError(f"port {self.port}, expected 1..65535")
        if not self.topic or any(c in self.topic for c in "+#"):
            raise ValueError(f"topic {self.topic!r}: expected a topic without wildcards")


@dataclass(frozen=True)
class DeviceConfig:
    """A whole device profile."""

    name: str = "custom"
    description: str = ""
    model: ModelSettings = field(default_factory=ModelSettings)
    camera: CameraSettings = field(default_factory=CameraSettings)
    classify: ClassifySettings = field(default_factory=ClassifySettings)
    smoothing: SmoothingSettings = field(default_factory=SmoothingSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    watchdog: WatchdogSettings = field(default_factory=WatchdogSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)


_SECTION_CLASSES: dict[str, type] = {
    "model": ModelSettings, "camera": CameraSettings, "classify": ClassifySettings,
    "smoothing": SmoothingSettings, "output": OutputSettings, "http": HttpSettings,
    "watchdog": WatchdogSettings, "mqtt": MqttSettings}
_SECTIONS = {f.name: f.type for f in dataclasses.fields(DeviceConfig)}
_EVAL_NAMES = {"int": int, "float": float, "str": str, "bool": bool, "tuple": tuple}


def _section_cls(name: str) -> type:
    return _SECTION_CLASSES[name]


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Converts a YAML/env/CLI value to the field's type, or raises naming ``where``."""
    hint = annotation
    if isinstance(hint, str):
        hint = eval(hint, dict(_EVAL_NAMES))  # noqa: S307 - our own annotations only
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            items = [s.strip() for s in value.split(",") if s.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        elif value is None:
            items = []
        else:
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, str, f"{where}[{i}]") for i, v in enumerate(items))
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if optional and isinstance(value, str) and value.lower() in ("null", "none", ""):
        return None
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: a value is required")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "1", "on"):
            return True
        if str(value).lower() in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(value, (dict, list)):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    return str(value)


def _parse_set(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise EdgekitError(f"--set {item!r}: expected section.key=value, e.g. "
                               "model.threads=2")
        out.setdefault(section, {})[name] = value
    return out


def _from_env(environ: dict[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for section, cls in _SECTION_CLASSES.items():
        for f in dataclasses.fields(cls):
            key = f"EDGEKIT_{section.upper()}_{f.name.upper()}"
            if key in environ:
                out.setdefault(section, {})[f.name] = environ[key]
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                environ: dict[str, str] | None = None) -> DeviceConfig:
    """Loads a profile, then applies environment variables and ``--set`` overrides.

    Raises:
        EdgekitError: unreadable file, unknown key or bad value (naming file and field).
    """
    import yaml

    source = str(path) if path else "defaults"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise EdgekitError(f"config file not found: {path}") from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
            raise EdgekitError(f"cannot read config file: {e.__class__.__name__} "
                               f"[{path}]") from None
        except yaml.YAMLError as e:
            raise EdgekitError(f"invalid config file: not YAML ({e.__class__.__name__}) "
                               f"[{path}]") from None
        if not isinstance(data, dict):
            raise EdgekitError(f"invalid config file: expected a mapping at the top [{path}]")
    layers = [(source, data), ("environment", _from_env(dict(os.environ if environ is None
                                                             else environ))),
              ("--set", _parse_set(overrides or []))]
    merged: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    try:
        for origin, layer in layers:
            for key, value in layer.items():
                if key not in _SECTIONS:
                    raise ValueError(f"unknown key '{key}' (from {origin}); expected one of "
                                     f"{sorted(_SECTIONS)}")
                if key in ("name", "description"):
                    merged[key] = _coerce(value, str, key)
                    continue
                if value is None:
                    continue  # an empty section in YAML: defaults
                if not isinstance(value, dict):
                    raise ValueError(f"'{key}' must be a mapping")
                fields = {f.name: f.type for f in dataclasses.fields(_section_cls(key))}
                for name, v in value.items():
                    if name not in fields:
                        raise ValueError(f"unknown key '{key}.{name}' (from {origin}); "
                                         f"expected one of {sorted(fields)}")
                    what = f"{key}.{name}" + ("" if origin == source else f" (from {origin})")
                    sections.setdefault(key, {})[name] = _coerce(v, fields[name], what)
        built = {}
        for k, v in sections.items():
            try:
                built[k] = _section_cls(k)(**v)
            except ValueError as e:
                raise ValueError(f"{k}: {e}") from None
        return DeviceConfig(**merged, **built)
    except (ValueError, TypeError) as e:
        raise EdgekitError(f"invalid config: {e} [{source}]") from None
