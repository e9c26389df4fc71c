"""Device profiles: YAML files loaded into typed, validated settings.

Precedence, highest first: command-line flags > ``--set section.key=value`` >
environment variables ``EDGEKIT_<SECTION>_<KEY>`` (e.g. ``EDGEKIT_MODEL_THREADS=2``,
``EDGEKIT_HTTP_TOKEN=...``) > the profile file > the defaults below. An unknown key or a
bad value is an error naming the file (or layer) and the field. List fields (``classify.allow``,
``classify.deny``) take a YAML list, or a comma-separated string from ``--set``/environment.

A profile is data, never code or a puzzle: at most :data:`MAX_PROFILE_BYTES`, plain YAML
without anchors/aliases (``&a``/``*a``, which let 600 bytes expand to gigabytes), and no
key given twice (a second ``camera:`` would otherwise silently replace the first).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EdgekitError, brief
from .keep_settings import DriftSettings, KeepSettings

MAX_PROFILE_BYTES = 256 * 1024  # shipped profiles are ~2 KB
INTERPOLATIONS = ("linear", "area")  # as edge_runtime.preprocess.INTERPOLATIONS
DELEGATES = ("cpu", "edgetpu")
SELFTEST_MODES = ("fail", "warn", "off")
ONNX_PROVIDERS = ("tensorrt", "cuda", "cpu")
FLIPS = ("none", "horizontal", "vertical", "rotate180")


def max_threads() -> int:
    """The most interpreter threads accepted: 4 x the CPU cores (more only thrashes, and
    an absurd count makes the interpreter fail to start threads and crash)."""
    return 4 * (os.cpu_count() or 1)


def check_threads(threads: int | None) -> int | None:
    """``threads`` when None or within 1..:func:`max_threads`.

    Raises:
        ValueError: out of range, quoting the value and the bound.
    """
    if threads is not None and not 1 <= threads <= max_threads():
        raise ValueError(f"threads {brief(threads)}, expected 1..{max_threads()} "
                         f"(4 x {os.cpu_count() or 1} CPU cores)")
    return threads


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
        selftest: at start, replay the golden cases stored in the model
            (``python -m edge_runtime selftest``): "fail" refuses to serve when they
            fail, "warn" serves and reports it on /healthz and /metrics, "off" skips.
        providers: for an ``.onnx`` model, ONNX Runtime providers best first, comma
            separated among tensorrt, cuda, cpu (None: every one this build has). When
            the first one is missing and ``fallback`` is set, the fallback model runs.
        engine_cache: TensorRT engine cache folder (the first engine build is slow).
    """

    path: str = "runs/demo/export/model_int8.tflite"
    fallback: str | None = None
    threads: int | None = None
    delegate: str = "cpu"
    edgetpu_device: str | None = None
    interpolation: str | None = None
    selftest: str = "fail"
    providers: str | None = None
    engine_cache: str | None = None

    def provider_list(self) -> list[str] | None:
        """``providers`` as a list (None when unset)."""
        if self.providers is None:
            return None
        return [p.strip().lower() for p in self.providers.split(",") if p.strip()]

    def __post_init__(self) -> None:
        if self.selftest not in SELFTEST_MODES:
            raise ValueError(f"selftest {brief(self.selftest)}, expected one of "
                             f"{', '.join(SELFTEST_MODES)}")
        bad = [p for p in self.provider_list() or [] if p not in ONNX_PROVIDERS]
        if bad or self.provider_list() == []:
            raise ValueError(f"providers {brief(self.providers)}, expected a comma-separated "
                             f"list of {', '.join(ONNX_PROVIDERS)}")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {brief(self.interpolation)}, expected 'linear' "
                             "or 'area'")
        if self.delegate not in DELEGATES:
            raise ValueError(f"delegate {brief(self.delegate)}, expected 'cpu' or 'edgetpu'")
        check_threads(self.threads)


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
        if self.flip not in FLIPS:
            raise ValueError(f"flip {brief(self.flip)}, expected none, horizontal, vertical "
                             "or rotate180")
        for name in ("width", "height", "fps"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} {brief(v)}, expected >= 1")
        for name in ("open_timeout_s", "read_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} {brief(getattr(self, name))}, expected > 0")

    def source_string(self) -> str:
        """The source string for :func:`edge_runtime.camera.parse_source`."""
        if self.source != "csi":
            return self.source
        from .camera import jetson_csi_pipeline  # OpenCV: only when a source is opened

        return jetson_csi_pipeline(self.sensor_id, self.sensor_mode, self.width, self.height,
                                   self.fps, self.flip)


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
            raise ValueError(f"top_k {brief(self.top_k)}, expected >= 1")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {brief(self.threshold)}, expected 0..1")
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
            raise ValueError(f"window {brief(self.window)}, expected >= 1")
        if not 0.0 <= self.hysteresis < 1.0:
            raise ValueError(f"hysteresis {brief(self.hysteresis)}, expected 0 <= h < 1")


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
            raise ValueError(f"max_bytes {brief(self.max_bytes)}, expected >= 0")
        if self.backups < 1:
            raise ValueError(f"backups {brief(self.backups)}, expected >= 1")


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
            raise ValueError(f"port {brief(self.port)}, expected 0..65535")
        if self.stream_fps <= 0:
            raise ValueError(f"stream_fps {brief(self.stream_fps)}, expected > 0")
        if self.stream_width < 16:
            raise ValueError(f"stream_width {brief(self.stream_width)}, expected >= 16")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality {brief(self.jpeg_quality)}, expected 1..100")
        if self.max_clients < 1:
            raise ValueError(f"max_clients {brief(self.max_clients)}, expected >= 1")


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
                raise ValueError(f"{name} {brief(getattr(self, name))}, expected > 0")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"backoff_max_s {brief(self.backoff_max_s)} is below "
                             f"backoff_initial_s {brief(self.backoff_initial_s)}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter {brief(self.jitter)}, expected 0 <= jitter < 1")


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
            raise ValueError(f"qos {brief(self.qos)}, expected 0, 1 or 2")
        if not 0 < self.port <= 65535:
            raise ValueError(f"port {brief(self.port)}, expected 1..65535")
        if not self.topic or any(c in self.topic for c in "+#"):
            raise ValueError(f"topic {brief(self.topic)}: expected a topic without wildcards")


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
    keep: KeepSettings = field(default_factory=KeepSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)


_SECTION_CLASSES: dict[str, type] = {
    "model": ModelSettings, "camera": CameraSettings, "classify": ClassifySettings,
    "smoothing": SmoothingSettings, "output": OutputSettings, "http": HttpSettings,
    "watchdog": WatchdogSettings, "mqtt": MqttSettings, "keep": KeepSettings,
    "drift": DriftSettings}
_TOP_LEVEL = ("name", "description", *_SECTION_CLASSES)

Layer = Mapping[str, Any]  # {"section": {"key": value}} (and "name"/"description")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """A settings class's fields and their resolved types (annotations are strings here)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Converts a YAML/env/CLI value to the field's type, or raises naming ``where``."""
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            items = [s.strip() for s in value.split(",") if s.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        elif value is None:
            items = []
        else:
            raise ValueError(f"{where}: expected a list, got {brief(value)}")
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
        raise ValueError(f"{where}: expected true or false, got {brief(value)}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{where}: expected an integer, got {brief(value)}")
        try:
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{where}: expected an integer, got {brief(value)}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {brief(value)}")
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{where}: expected a number, got {brief(value)}") from None
    if isinstance(value, (dict, list)):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    return str(value)


def _parse_set(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise EdgekitError(f"--set {brief(item)}: expected section.key=value, e.g. "
                               "model.threads=2")
        out.setdefault(section, {})[name] = value
    return out


def _from_env(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for section, cls in _SECTION_CLASSES.items():
        for f in dataclasses.fields(cls):
            key = f"EDGEKIT_{section.upper()}_{f.name.upper()}"
            if key in environ:
                out.setdefault(section, {})[f.name] = environ[key]
    return out


def _loader():
    """A safe YAML loader that refuses aliases and keys given twice, naming the line."""
    import yaml

    class ProfileLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                anchor = brief(event.anchor, 40).strip("'")
                raise ValueError(f"line {event.start_mark.line + 1}: YAML aliases (*{anchor}) "
                                 "are not allowed in a profile")
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if not isinstance(key_node, yaml.ScalarNode):
                        raise ValueError(f"line {key_node.start_mark.line + 1}: a key must "
                                         "be a plain name")
                    key = self.construct_object(key_node)
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        raise ValueError(f"line {line}: duplicate key {brief(key)} (first "
                                         f"at line {seen[key]})")
                    seen[key] = line
            return super().construct_mapping(node, deep)

    return ProfileLoader


def _read_profile(path: str | Path) -> dict[str, Any]:
    """The profile file as a mapping.

    Raises:
        EdgekitError: missing, unreadable, too large, not YAML, an alias, a duplicate key
            or not a mapping (naming the file, and the line where YAML has one).
    """
    import yaml

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise EdgekitError(f"config file not found: {path}") from None
    except OSError as e:
        raise EdgekitError(f"cannot read config file: {e.strerror or e.__class__.__name__} "
                           f"[{path}]") from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise EdgekitError(f"invalid config file: larger than {MAX_PROFILE_BYTES // 1024} KiB, "
                           f"expected a small YAML profile [{path}]")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EdgekitError(f"invalid config file: not UTF-8 text [{path}]") from None
    try:
        data = yaml.load(text, Loader=_loader()) or {}  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise EdgekitError(f"invalid config file: not YAML{where} ({brief(e.problem, 60)}) "
                           f"[{path}]") from None
    except yaml.YAMLError as e:
        raise EdgekitError(f"invalid config file: not YAML ({e.__class__.__name__}) "
                           f"[{path}]") from None
    except RecursionError:
        raise EdgekitError(f"invalid config file: nested too deeply [{path}]") from None
    except ValueError as e:  # ours (alias, duplicate: "line N: ...") or an absurd number
        what = str(e) if str(e).startswith("line ") else f"a value YAML cannot build ({e})"
        raise EdgekitError(f"invalid config file: {what[:120]} [{path}]") from None
    if not isinstance(data, dict):
        raise EdgekitError(f"invalid config file: expected a mapping at the top [{path}]")
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                environ: Mapping[str, str] | None = None,
                flags: Layer | None = None) -> DeviceConfig:
    """Loads a profile, then applies environment variables, ``--set`` and flag overrides.

    Args:
        path: the YAML profile, or None for the defaults.
        overrides: ``section.key=value`` strings (``--set``).
        environ: the environment to read ``EDGEKIT_*`` from (default: ``os.environ``).
        flags: typed values from command-line flags, ``{"model": {"threads": 2}}``; the
            highest precedence.

    Raises:
        EdgekitError: unreadable file, unknown key or bad value (naming file and field).
    """
    source = str(path) if path else "defaults"
    data = _read_profile(path) if path is not None else {}
    layers = [(source, data), ("environment", _from_env(os.environ if environ is None
                                                        else environ)),
              ("--set", _parse_set(overrides or [])), ("command line", flags or {})]
    merged: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    try:
        for origin, layer in layers:
            for key, value in layer.items():
                if key not in _TOP_LEVEL:
                    raise ValueError(f"unknown key {brief(key)} (from {origin}); expected "
                                     f"one of {sorted(_TOP_LEVEL)}")
                if key in ("name", "description"):
                    merged[key] = _coerce(value, str, key)
                    continue
                if value is None:
                    continue  # an empty section in YAML: defaults
                if not isinstance(value, Mapping):
                    raise ValueError(f"'{key}' must be a mapping")
                fields = _field_types(_SECTION_CLASSES[key])
                for name, v in value.items():
                    if name not in fields:
                        raise ValueError(f"unknown key '{key}.{brief(name)[1:-1]}' (from "
                                         f"{origin}); expected one of {sorted(fields)}")
                    what = f"{key}.{name}" + ("" if origin == source else f" (from {origin})")
                    sections.setdefault(key, {})[name] = _coerce(v, fields[name], what)
        built = {}
        for k, v in sections.items():
            try:
                built[k] = _SECTION_CLASSES[k](**v)
            except ValueError as e:
                raise ValueError(f"{k}: {e}") from None
        return DeviceConfig(**merged, **built)
    except (ValueError, TypeError) as e:
        raise EdgekitError(f"invalid config: {e} [{source}]") from None
