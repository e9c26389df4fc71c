"""systemd integration: sd_notify over NOTIFY_SOCKET (READY, WATCHDOG, STATUS) and the unit."""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from .redact import redact

# Package data (see pyproject.toml), so that a pip-installed runtime can render its unit.
UNIT_TEMPLATE = resources.files(__package__) / "data" / "edgekit.service"


class Notifier:
    """Sends sd_notify messages to systemd; does nothing when not started by systemd.

    Implements the protocol with the standard library: one datagram per message to the
    unix socket named by ``NOTIFY_SOCKET`` (``@`` prefix: abstract namespace).

    Args:
        environ: the environment to read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
            ``WATCHDOG_PID`` from (default ``os.environ``).
        enabled: False turns every call into a no-op.
    """

    def __init__(self, environ: dict[str, str] | None = None, enabled: bool = True) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "") if enabled else ""
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if enabled and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._sock: socket.socket | None = None
        self._last_ping = 0.0

    @property
    def active(self) -> bool:
        """True when there is a socket to notify."""
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Sends one message (``KEY=VALUE`` lines); False when not sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # STATUS= is shown to anyone who may run `systemctl status`: no credentials.
            self._sock.sendto(redact(message).encode(), self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        """READY=1 (with STATUS= when given)."""
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        """STATUS=text, shown by ``systemctl status``."""
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        """STOPPING=1."""
        return self.notify("STOPPING=1")

    def watchdog(self, now: float | None = None) -> bool:
        """WATCHDOG=1, at most every half watchdog interval; False when not due or off."""
        if self.watchdog_s is None or self.address is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.watchdog_s / 2:
            return False
        self._last_ping = now
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        """Closes the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def render_unit(config: str | Path, workdir: str | Path | None = None,
                python: str | None = None, user: str = "edgekit",
                template: Any = UNIT_TEMPLATE) -> str:
    """The systemd unit for running ``config`` as a service, from the package's
    ``edge_runtime/data/edgekit.service``.

    Args:
        config: the device profile (made absolute).
        workdir: the working directory (default: the current one, where relative model
            paths in profiles resolve; ``make install-service`` runs from the project root).
        python: the interpreter (default: this one, e.g. the project's .venv).
        user: the account the service runs as.
        template: the unit template (a path or a package resource) with ``@PYTHON@``,
            ``@CONFIG@``, ``@WORKDIR@``, ``@DOCS@``, ``@USER@`` placeholders.
    """
    text = template.read_text(encoding="utf-8")
    work = Path(workdir or Path.cwd()).resolve()
    # The daemon's guide when the unit is installed from a checkout; a deployed release
    # carries no docs, and a Documentation= line naming a missing file misleads.
    docs = work / "deploy" / "README.md"
    if not docs.is_file():
        text = "".join(line for line in text.splitlines(keepends=True)
                       if "@DOCS@" not in line)
    values = {
        "@PYTHON@": shlex.quote(python or sys.executable),
        "@CONFIG@": shlex.quote(str(Path(config).resolve())),
        "@WORKDIR@": str(work),
        "@DOCS@": str(docs),
        "@USER@": user,
    }
    for key, value in values.items():
        text = text.replace(key, value)
    return text
