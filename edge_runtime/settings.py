"""Device profile settings: one typed, validated, frozen dataclass per profile section.

Every field is documented here; :mod:`edge_runtime.config` loads YAML profiles,
environment variables and ``--set`` overrides into these types (the ``keep:`` and
``drift:`` sections live in :mod:`edge_runtime.keep_settings`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import brief
from .keep_settings import DriftSettings, KeepSettings

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


# a profile's sections by their YAML key
SECTIONS: dict[str, type] = {
    "model": ModelSettings, "camera": CameraSettings, "classify": ClassifySettings,
    "smoothing": SmoothingSettings, "output": OutputSettings, "http": HttpSettings,
    "watchdog": WatchdogSettings, "mqtt": MqttSettings, "keep": KeepSettings,
    "drift": DriftSettings}
