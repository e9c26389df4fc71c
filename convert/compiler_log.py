"""Parses ``edgetpu_compiler`` output and its operation logs into plain dicts."""

from __future__ import annotations

import re
from typing import Any

_FIELDS = {  # log line label -> key
    "Input model": "input_model", "Input": "input_model", "Output model": "output_model",
    "Output": "output_model", "Input size": "input_size", "Output size": "output_size",
    "On-chip memory used for caching model parameters": "on_chip_memory_used",
    "On-chip memory remaining for caching model parameters": "on_chip_memory_remaining",
    "Off-chip memory used for streaming uncached model parameters": "off_chip_memory_used",
    "Number of Edge TPU subgraphs": "edgetpu_subgraphs", "Operation log": "operation_log",
    "Total number of operations": "total_ops",
    "Number of operations that will run on Edge TPU": "tpu_ops",
    "Number of operations that will run on CPU": "cpu_ops"}
_SIZES = [k for k in dict.fromkeys(_FIELDS.values()) if k.endswith(("size", "used", "remaining"))]
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}


def parse_compiler_log(text: str) -> dict:
    """Parses ``edgetpu_compiler -s`` output (or its ``*_edgetpu.log``) into a dict: the keys
    of ``_FIELDS`` (None when absent; sizes also as ``<key>_bytes``), compiler_version,
    success, compile_ms, and ``operations``, the per-op table as {"op", "count", "status",
    "on_edgetpu"} rows. Only the first model of a multi-model log is read."""
    info: dict[str, Any] = dict.fromkeys(_FIELDS.values())
    info.update(compiler_version=None, success=False, compile_ms=None, operations=[])
    for line in (ln.strip() for ln in text.splitlines()):
        label, colon, value = (s.strip() for s in line.partition(":"))
        if m := re.match(r"Edge TPU Compiler version (\S+)", line):
            if info["compiler_version"] and (info["operations"] or info["total_ops"]):
                break  # the next model of a multi-model log
            info["compiler_version"] = m.group(1)
        elif m := re.match(r"Models? compiled successfully in (\d+) ms", line):
            info["success"], info["compile_ms"] = True, int(m.group(1))
        elif line.startswith("Compilation succeeded"):
            info["success"] = True
        elif colon and label in _FIELDS and info[_FIELDS[label]] is None:
            key = _FIELDS[label]
            info[key] = int(value) if key.endswith(("ops", "graphs")) and value.isdigit() \
                else value
        elif m := re.fullmatch(r"([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*)", line):
            info["operations"].append({"op": m.group(1), "count": int(m.group(2)),
                                       "status": m.group(3),
                                       "on_edgetpu": m.group(3) == "Mapped to Edge TPU"})
    for key in _SIZES:
        m = re.fullmatch(r"([\d.]+)\s*(B|KiB|MiB|GiB)", info[key] or "")
        info[f"{key}_bytes"] = round(float(m.group(1)) * _UNITS[m.group(2)]) if m else None
    rows = info["operations"]
    tpu = sum(r["count"] for r in rows if r["on_edgetpu"])
    if rows:
        info["total_ops"] = info["total_ops"] or sum(r["count"] for r in rows)
        info["tpu_ops"] = tpu if info["tpu_ops"] is None else info["tpu_ops"]
        info["cpu_ops"] = info["total_ops"] - tpu if info["cpu_ops"] is None else info["cpu_ops"]
    elif info["total_ops"] is not None and info["tpu_ops"] is None \
            and "not all operations are supported" not in text:
        info["tpu_ops"], info["cpu_ops"] = info["total_ops"], 0
    return info


__all__ = ["parse_compiler_log"]
