"""Result outputs: JSON lines (stdout or a size-rotated file) and MQTT on label change."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

from .errors import EdgekitError

log = logging.getLogger(__name__)


class JsonlWriter:
    """Appends one JSON object per line to stdout or a file, rotating the file by size.

    Rotation renames ``FILE`` to ``FILE.1`` (``FILE.1`` to ``FILE.2`` ...) keeping
    ``backups`` old files, so months of results never fill the disk.

    Args:
        target: "-" for stdout, else a file path (its folder is created).
        max_bytes: rotate when the file would exceed this size (0: never).
        backups: rotated files kept.
        stream: the stream used for "-" (default ``sys.stdout``).

    Raises:
        EdgekitError: the file cannot be opened.
    """

    def __init__(self, target: str, max_bytes: int = 0, backups: int = 5,
                 stream: IO[str] | None = None) -> None:
        self.path = None if target == "-" else Path(target)
        self.max_bytes = max_bytes
        self.backups = backups
        self._own = False
        if self.path is None:
            self._out = stream or sys.stdout
            self._size = 0
        else:
            self._out = self._open()
        self.lines = 0

    def _open(self) -> IO[str]:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            out = self.path.open("a", encoding="utf-8")
        except OSError as e:
            raise EdgekitError(f"cannot write results to {self.path}: "
                               f"{e.strerror or e}") from None
        self._own = True
        self._size = out.tell()
        return out

    def _rotate(self) -> None:
        assert self.path is not None
        self._out.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._out = self._open()

    def write(self, obj: dict[str, Any]) -> None:
        """Writes one line and flushes it."""
        line = json.dumps(obj) + "\n"
        if self.path is not None and self.max_bytes and self._size and \
                self._size + len(line) > self.max_bytes:
            self._rotate()
        self._out.write(line)
        self._out.flush()
        self._size += len(line)
        self.lines += 1

    def close(self) -> None:
        """Closes a file (stdout stays open)."""
        if self._own:
            self._out.close()


class MqttPublisher:
    """Publishes a JSON result when the reported label changes (needs ``paho-mqtt``).

    The client runs its own network thread (``loop_start``) and reconnects by itself;
    ``publish`` only queues, so a slow or absent broker never slows inference.

    Args:
        settings: :class:`edge_runtime.config.MqttSettings`.

    Raises:
        EdgekitError: paho-mqtt is not installed.
    """

    def __init__(self, settings: Any) -> None:
        try:
            import paho.mqtt.client as mqtt  # type: ignore[import-not-found]
        except ImportError:
            raise EdgekitError("mqtt.enabled needs the paho-mqtt package: pip install "
                               "'paho-mqtt>=2' (or set mqtt.enabled=false)") from None
        self.settings = settings
        kwargs: dict[str, Any] = {"client_id": settings.client_id or ""}
        if hasattr(mqtt, "CallbackAPIVersion"):
            kwargs["callback_api_version"] = mqtt.CallbackAPIVersion.VERSION2
        self.client = mqtt.Client(**kwargs)
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password)
        self.client.reconnect_delay_set(1, 60)
        self.client.connect_async(settings.host, settings.port, keepalive=60)
        self.client.loop_start()
        self.published = 0

    def publish(self, obj: dict[str, Any]) -> None:
        """Queues one message on the configured topic."""
        try:
            self.client.publish(self.settings.topic, json.dumps(obj), qos=self.settings.qos,
                                retain=self.settings.retain)
            self.published += 1
        except Exception as e:  # noqa: BLE001 - a broker problem must not stop inference
            log.warning("mqtt publish failed: %s", e)

    def close(self) -> None:
        """Stops the network thread and disconnects."""
        try:
            self.client.disconnect()
            self.client.loop_stop()
        except Exception:  # noqa: BLE001, S110 - already gone
            pass
