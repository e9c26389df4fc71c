"""Result outputs: JSON lines (stdout or a size-rotated file) and MQTT on label change."""

from __future__ import annotations

import json
import logging
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO, Any

from .errors import EdgekitError
from .redact import redact

log = logging.getLogger(__name__)


class _RotatingJsonl(RotatingFileHandler):
    """A rotating file of lines that raises its write errors instead of printing them."""

    def handleError(self, record: logging.LogRecord) -> None:  # logging's name
        raise  # re-raises the error being handled (a full disk, ...)


class JsonlWriter:
    """Appends one JSON object per line to stdout or a file, rotating the file by size.

    Rotation (``logging.handlers.RotatingFileHandler``) renames ``FILE`` to ``FILE.1``
    (``FILE.1`` to ``FILE.2`` ...) keeping ``backups`` old files, so months of results
    never fill the disk. Every line is flushed as it is written, with credentials in any
    URL or token parameter redacted (:func:`edge_runtime.redact.redact`).

    Args:
        target: "-" for stdout, else a file path (its folder is created).
        max_bytes: rotate before the file would reach this size (0: never).
        backups: rotated files kept.
        stream: the stream used for "-" (default ``sys.stdout``).

    Raises:
        EdgekitError: the file cannot be opened.
    """

    def __init__(self, target: str, max_bytes: int = 0, backups: int = 5,
                 stream: IO[str] | None = None) -> None:
        self.path = None if target == "-" else Path(target)
        self._stream = stream or sys.stdout
        self._file: _RotatingJsonl | None = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = _RotatingJsonl(self.path, maxBytes=max_bytes,
                                            backupCount=backups, encoding="utf-8")
            except OSError as e:
                raise EdgekitError(f"cannot write results to {self.path}: "
                                   f"{e.strerror or e}") from None
            self._file.terminator = "\n"

    def write(self, obj: dict[str, Any]) -> None:
        """Writes one line and flushes it.

        Raises:
            EdgekitError: the file cannot be written (a full disk, a removed folder).
        """
        line = redact(json.dumps(obj))
        if self._file is None:
            self._stream.write(line + "\n")
            self._stream.flush()
            return
        try:
            self._file.handle(logging.makeLogRecord({"msg": line}))
        except OSError as e:
            raise EdgekitError(f"cannot write results to {self.path}: "
                               f"{e.strerror or e}") from None

    def close(self) -> None:
        """Closes a file (stdout stays open)."""
        if self._file is not None:
            self._file.close()


class MqttPublisher:
    """Publishes a JSON result when the reported label changes (needs ``paho-mqtt``).

    The client runs its own network thread (``loop_start``) and reconnects by itself;
    ``publish`` only queues, so a slow or absent broker never slows inference.

    Args:
        settings: :class:`edge_runtime.settings.MqttSettings`.

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

    def publish(self, obj: dict[str, Any]) -> None:
        """Queues one message on the configured topic."""
        try:
            self.client.publish(self.settings.topic, redact(json.dumps(obj)),
                                qos=self.settings.qos, retain=self.settings.retain)
        except Exception as e:  # a broker problem must not stop inference
            log.warning("mqtt publish failed: %s", e)

    def close(self) -> None:
        """Stops the network thread and disconnects."""
        try:
            self.client.disconnect()
            self.client.loop_stop()
        except Exception:  # already gone
            pass
