"""Pure logic over results: loading and validating results files, the Pareto front, merging
several devices' results, and comparison against a reference with regression flags."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgekitError

SCHEMA_VERSION = 2


def load_results(path: str | Path) -> dict[str, Any]:
    """Reads a ``results.json`` (a file, a ``bench/`` folder or a run folder).

    Raises:
        EdgekitError: missing, not JSON, or not a benchmark results file.
    """
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "results.json", p / "bench" / "results.json"):
            if candidate.is_file():
                p = candidate
                break
        else:
            raise EdgekitError(f"no results.json in {p} (nor in {p / 'bench'})")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgekitError(f"results file not found: {p}") from None
    except OSError as e:
        raise EdgekitError(f"cannot read {p}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgekitError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise EdgekitError(f"{p} is not a benchmark results file (no 'rows' list)")
    for i, r in enumerate(data["rows"]):
        ok = isinstance(r, dict) and isinstance(r.get("variant"), str) and \
            isinstance(r.get("threads"), int) and isinstance(r.get("latency_ms"), dict) and \
            isinstance(r["latency_ms"].get("p50"), (int, float))
        if not ok:
            raise EdgekitError(f"{p}: row {i} lacks variant, threads or latency_ms.p50")
    data.setdefault("source_path", str(p))
    return data


def accelerator(row: dict[str, Any]) -> str:
    """The row's accelerator ("cpu" for schema-1 rows, which had none)."""
    return str(row.get("accelerator") or "cpu")


def row_key(row: dict[str, Any]) -> tuple[str, int, str]:
    """What identifies a row across runs: (variant, threads, accelerator)."""
    return (row["variant"], int(row["threads"]), accelerator(row))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which ``(latency, accuracy)`` points are not dominated (lower latency is better,
    higher accuracy is better).

    A point is dominated when another is at least as good in both and strictly better in
    one. Identical points are all on the front.
    """
    flags = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            lat2 <= lat and acc2 >= acc and (lat2 < lat or acc2 > acc)
            for j, (lat2, acc2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def mark_pareto(rows: list[dict[str, Any]], group_by: str | None = "device") -> list[bool]:
    """Pareto flags for rows with a top-1, by (p50 latency, top-1), within each group."""
    flags = [False] * len(rows)
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(rows):
        if isinstance(r.get("top1"), (int, float)):
            groups.setdefault(r.get(group_by) if group_by else None, []).append(i)
    for idx in groups.values():
        front = pareto_front([(rows[i]["latency_ms"]["p50"], rows[i]["top1"]) for i in idx])
        for i, f in zip(idx, front):
            flags[i] = f
    return flags


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Merges several results files (one per device) into one cross-device results dict.

    Every row gains ``device``; a label already taken gets ``#2``, ``#3``... appended.
    An input that is itself merged contributes its devices under their labels.
    """
    from .environment import device_label

    used: set[str] = set()
    devices, rows, warnings = [], [], []
    flat: list[dict[str, Any]] = []
    for res in results:  # an already merged input contributes its devices one by one
        if res.get("kind") != "merged":
            flat.append(res)
            continue
        for d in res.get("devices") or []:
            flat.append({**d, "warnings": [w.removeprefix(f"{d['device']}: ")
                                           for w in res.get("warnings") or []
                                           if w.startswith(f"{d['device']}: ")],
                         "rows": [r for r in res["rows"] if r.get("device") == d["device"]]})
    for res in flat:
        env = res.get("environment") or {}
        base = label = res.get("device") or device_label(env)
        k = 1
        while label in used:
            k += 1
            label = f"{base} #{k}"
        used.add(label)
        devices.append({"device": label, "run": res.get("run"), "created": res.get("created"),
                        "source_path": res.get("source_path"), "environment": env,
                        "settings": res.get("settings"), "test_images": res.get("test_images")})
        warnings += [f"{label}: {w}" for w in res.get("warnings") or []]
        rows += [{**r, "device": label} for r in res["rows"]]
    return {"schema_version": SCHEMA_VERSION, "kind": "merged", "devices": devices,
            "warnings": warnings, "rows": rows}


def compare(new: dict[str, Any], old: dict[str, Any], tolerance: float = 0.10,
            accuracy_tolerance: float = 0.01) -> dict[str, Any]:
    """Compares ``new`` results against ``old`` (a reference) row by row.

    Regressions: p50 latency more than ``tolerance`` (relative) above the reference;
    end-to-end fps more than ``tolerance`` below; top-1 more than ``accuracy_tolerance``
    (absolute) below. Improvements beyond the same margins are listed too.

    Returns:
        ``{"reference", "tolerance", "accuracy_tolerance", "checks": [...],
        "regressions": n, "missing": [...], "notes": [...]}``; each check has key,
        metric, old, new, change (relative or absolute) and status
        ("regression", "improvement" or "ok").
    """
    old_rows = {row_key(r): r for r in old["rows"]}
    checks, missing, notes = [], [], []
    for r in new["rows"]:
        o = old_rows.pop(row_key(r), None)
        if o is None:
            continue
        key = "/".join(str(k) for k in row_key(r))
        lat_old, lat_new = o["latency_ms"]["p50"], r["latency_ms"]["p50"]
        if lat_old > 0:
            change = lat_new / lat_old - 1.0
            checks.append(_check(key, "latency_ms.p50", lat_old, lat_new, change,
                                 change > tolerance, change < -tolerance))
        if isinstance(o.get("top1"), (int, float)) and isinstance(r.get("top1"), (int, float)):
            d = r["top1"] - o["top1"]
            checks.append(_check(key, "top1", o["top1"], r["top1"], d,
                                 d < -accuracy_tolerance, d > accuracy_tolerance))
        e_old, e_new = o.get("end_to_end") or {}, r.get("end_to_end") or {}
        if e_old.get("fps") and e_new.get("fps") is not None:
            change = e_new["fps"] / e_old["fps"] - 1.0
            checks.append(_check(key, "end_to_end.fps", e_old["fps"], e_new["fps"], change,
                                 change < -tolerance, change > tolerance))
        if o.get("model_sha256") and r.get("model_sha256") and \
                o["model_sha256"] != r["model_sha256"]:
            notes.append(f"{key}: the model file differs from the reference's (sha256)")
    missing = ["/".join(str(k) for k in key) for key in old_rows]
    env_o, env_n = old.get("environment") or {}, new.get("environment") or {}
    for k in ("cpu", "machine", "cores", "board"):
        if env_o.get(k) != env_n.get(k):
            notes.append(f"environment differs: {k} {env_o.get(k)!r} (reference) vs "
                         f"{env_n.get(k)!r} (now)")
    if not checks:
        notes.append("no row matches the reference (variant/threads/accelerator)")
    return {"reference": old.get("source_path"), "tolerance": tolerance,
            "accuracy_tolerance": accuracy_tolerance, "checks": checks,
            "regressions": sum(c["status"] == "regression" for c in checks),
            "missing": missing, "notes": notes}


def _check(key: str, metric: str, old: float, new: float, change: float, worse: bool,
           better: bool) -> dict[str, Any]:
    """One comparison result."""
    status = "regression" if worse else ("improvement" if better else "ok")
    return {"key": key, "metric": metric, "old": old, "new": new, "change": change,
            "status": status}


def describe(check: dict[str, Any]) -> str:
    """One line for a check, e.g. ``int8/1/cpu latency_ms.p50 0.240 -> 0.300 (+25.0%)``."""
    if check["metric"] == "top1":
        delta = f"{check['change'] * 100:+.1f} points"
        return f"{check['key']} top1 {check['old']:.4f} -> {check['new']:.4f} ({delta})"
    return (f"{check['key']} {check['metric']} {check['old']:.3f} -> {check['new']:.3f} "
            f"({check['change'] * 100:+.1f}%)")
