"""Ansible callback: each ``edgekit:`` task's result per host, as JSON lines for the desktop.

Enabled by ``python -m deploy collect`` (ANSIBLE_CALLBACK_PLUGINS, ANSIBLE_CALLBACKS_ENABLED)
with EDGEKIT_RESULTS_DIR naming the folder. A callback rather than a task that writes a
file on the controller: that task costs seconds per host (a module run), this costs nothing,
and it sees unreachable hosts too (with ssh's message, for the summary's cause).
"""

from __future__ import annotations

import json
import os
import re

from ansible.plugins.callback import CallbackBase


def _part(result, name: str):
    """``result.host`` / ``result.result`` (ansible-core >= 2.19), else the older
    ``_host`` / ``_result``."""
    try:
        return getattr(result, name)
    except AttributeError:
        return getattr(result, "_" + name)


class CallbackModule(CallbackBase):
    """Appends ``{"host", "task", "status", "rc", "stdout", "stderr", "msg", "addr",
    "port"}`` to EDGEKIT_RESULTS_DIR/<host>.jsonl for every task named ``edgekit: ...``."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "edgekit_results"
    CALLBACK_NEEDS_ENABLED = True

    def _save(self, result, status: str) -> None:
        folder = os.environ.get("EDGEKIT_RESULTS_DIR")
        task = _part(result, "task").get_name()
        if not folder or not task.startswith("edgekit: "):
            return
        host = _part(result, "host")
        name = host.get_name()
        hvars = host.get_vars()
        doc = _part(result, "result")
        line = {"host": name, "task": task[len("edgekit: "):], "status": status,
                "rc": doc.get("rc"), "stdout": doc.get("stdout", ""),
                "stderr": doc.get("stderr", ""), "msg": str(doc.get("msg", "")),
                "addr": str(hvars.get("ansible_host") or name),
                "port": hvars.get("ansible_port") or 22}
        safe = re.sub(r"[^A-Za-z0-9._@:-]", "_", name)
        with open(os.path.join(folder, safe + ".jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=str) + "\n")

    def v2_runner_on_ok(self, result) -> None:
        self._save(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors: bool = False) -> None:
        self._save(result, "failed")

    def v2_runner_on_unreachable(self, result) -> None:
        self._save(result, "unreachable")
