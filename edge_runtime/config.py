"""Device profiles: YAML files loaded into typed, validated settings.

Precedence, highest first: ``--set section.key=value`` > environment variables
``EDGEKIT_<SECTION>_<KEY>`` (e.g. ``EDGEKIT_MODEL_THREADS=2``) > the profile file >
the defaults below. An unknown key or a bad value is an error naming the file and field.
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
    """

    path: str = "runs/demo/export/model_int8.tflite"
    fallback: str | None = None
    threads: int | None = None
    delegate: str = "cpu"
    edgetpu_device: str | None = None

    def __post_init__(self) -> None:
        if self.delegate not in ("cpu", "edgetpu"):
            raise ValueError(f"delegate {self.delegate!r}, expected 'cpu' or 'edgetpu'")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads {self.threads}, expected >= 1")


@dataclass(frozen=True)
class CameraSettings:
    """Where frames come from.

    Attributes:
        source: camera index, /dev/video*, file, URL or GStreamer pipeline; "csi" builds a
            Jetson ``nvarguscamerasrc`` pipeline from the fields below.
        width: requested capture width (None: the camera's default).
        height: requested capture height.
        fps: requested frame rate.
        flip: "none", "horizontal", "vertical" or "rotate180".
        sensor_id: Jetson CSI sensor id.
        sensor_mode: Jetson CSI sensor mode (None: automatic).
        loop: replay a video file endlessly.
    """

    source: str = "0"
    width: int | None = None
    height: int | None = None
    fps: int | None = None
    flip: str = "none"
    sensor_id: int = 0
    sensor_mode: int | None = None
    loop: bool = False

    def __post_init__(self) -> None:
        if self.flip not in ("none", "horizontal", "vertical", "rotate180"):
            raise ValueError(f"flip {self.flip!r}, expected none, horizontal, vertical or "
                             "rotate180")
        for name in ("width", "height", "fps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} {v}, expected >= 1")

    def source_string(self) -> str:
        """The source string for :func:`edge_runtime.camera.parse_source`."""
        if self.source != "csi":
            return self.source
        w, h, fps = self.width or 1280, self.height or 720, self.fps or 30
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
        top_k: classes reported per frame.
        threshold: below this score a frame's label is null.
    """

    top_k: int = 1
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k {self.top_k}, expected >= 1")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold}, expected 0..1")


@dataclass(frozen=True)
class OutputSettings:
    """Where results go.

    Attributes:
        jsonl: JSON-lines file to append to; "-" for stdout.
    """

    jsonl: str = "-"


@dataclass(frozen=True)
class DeviceConfig:
    """A whole device profile."""

    name: str = "custom"
    description: str = ""
    model: ModelSettings = field(default_factory=ModelSettings)
    camera: CameraSettings = field(default_factory=CameraSettings)
    classify: ClassifySettings = field(default_factory=ClassifySettings)
    output: OutputSettings = field(default_factory=OutputSettings)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(DeviceConfig)}


def _section_cls(name: str) -> type:
    return {"model": ModelSettings, "camera": CameraSettings, "classify": ClassifySettings,
            "output": OutputSettings}[name]


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Converts a YAML/env/CLI value to the field's type, or raises naming ``where``."""
    hint = annotation
    if isinstance(hint, str):
        hint = eval(hint, {"int": int, "float": float, "str": str, "bool": bool})  # noqa: S307
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
    for section in ("model", "camera", "classify", "output"):
        for f in dataclasses.fields(_section_cls(section)):
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
                if not isinstance(value, dict):
                    raise ValueError(f"'{key}' must be a mapping")
                fields = {f.name: f.type for f in dataclasses.fields(_section_cls(key))}
                for name, v in value.items():
                    if name not in fields:
                        raise ValueError(f"unknown key '{key}.{name}' (from {origin}); "
                                         f"expected one of {sorted(fields)}")
                    sections.setdefault(key, {})[name] = _coerce(v, fields[name],
                                                                 f"{key}.{name}")
        built = {k: _section_cls(k)(**v) for k, v in sections.items()}
        return DeviceConfig(**merged, **built)
    except (ValueError, TypeError) as e:
        raise EdgekitError(f"invalid config: {e} [{source}]") from None
