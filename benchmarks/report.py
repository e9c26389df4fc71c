"""Writes benchmark results: JSON, CSV, the Markdown report and its plots (single device or
merged across devices)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from edge_runtime.fileio import write_json, write_text

from .analysis import accelerator, describe, mark_pareto
from .published import published_markdown

CSV_FIELDS = ("device", "variant", "threads", "accelerator", "backend", "top1", "top5",
              "size_bytes", "load_ms", "first_ms", "mean", "std", "min", "p50", "p90", "p99",
              "pipeline_p50", "throughput_fps", "rss_peak_bytes", "rss_model_bytes",
              "e2e_fps", "e2e_latency_p50", "e2e_frame_age_p50", "e2e_frames_dropped", "pareto")
PLOT_PARETO = "latency_vs_accuracy.png"
PLOT_THREADS = "thread_scaling.png"


def _f(value: Any, fmt: str, missing: str = "") -> str:
    """Formats a number, or ``missing`` when it is absent."""
    return format(value, fmt) if isinstance(value, (int, float)) else missing


def to_csv(rows: list[dict[str, Any]]) -> str:
    """One CSV line per result row (latencies in ms, memory in bytes)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r, front in zip(rows, mark_pareto(rows)):
        lat, e2e = r["latency_ms"], r.get("end_to_end") or {}
        w.writerow({
            "device": r.get("device", ""), "variant": r["variant"], "threads": r["threads"],
            "accelerator": accelerator(r), "backend": r.get("backend", ""),
            "top1": _f(r.get("top1"), ".4f"), "top5": _f(r.get("top5"), ".4f"),
            "size_bytes": r.get("size_bytes", ""), "load_ms": _f(r.get("load_ms"), ".2f"),
            "first_ms": _f(r.get("first_ms"), ".2f"),
            **{k: _f(lat.get(k), ".3f") for k in ("mean", "std", "min", "p50", "p90", "p99")},
            "pipeline_p50": _f((r.get("pipeline_ms") or {}).get("p50"), ".3f"),
            "throughput_fps": _f(r.get("throughput_fps"), ".1f"),
            "rss_peak_bytes": r.get("rss_peak_bytes") or "",
            "rss_model_bytes": r.get("rss_model_bytes") or "",
            "e2e_fps": _f(e2e.get("fps"), ".2f"),
            "e2e_latency_p50": _f((e2e.get("latency_ms") or {}).get("p50"), ".3f"),
            "e2e_frame_age_p50": _f((e2e.get("frame_age_ms") or {}).get("p50"), ".3f"),
            "e2e_frames_dropped": e2e.get("frames_dropped", ""),
            "pareto": int(front)})
    return buf.getvalue()


def _environment_lines(env: dict[str, Any], end: dict[str, Any] | None) -> list[str]:
    """The environment as a bullet list."""
    parts = [f"{env.get('cores')} cores"]
    if env.get("cores_usable"):
        parts.append(f"{env['cores_usable']} usable")
    if env.get("cpu_max_mhz"):
        parts.append(f"max {env['cpu_max_mhz']} MHz")
    gov = "/".join(env.get("governors") or []) or env.get("governor") or "unknown"
    cpu = (f"- CPU: {env.get('cpu')} ({', '.join(parts)}), governor {gov}, "
           f"board {env.get('board') or 'unknown'}")
    lines = [cpu] + ([f"- **Emulated**: {env['emulated']}: latencies say nothing about the "
                      "real hardware"] if env.get("emulated") else []) + [
             f"- OS: {env.get('os')}; Python {env.get('python')}",
             f"- Interpreter: {env.get('interpreter')}"
             f"{'; CPU delegate: ' + env['cpu_delegate'] if env.get('cpu_delegate') else ''}"]
    pk = env.get("packages") or {}
    if pk:
        lines.append("- Packages: " + ", ".join(f"{k} {v}" for k, v in pk.items()))
    t0, t1 = env.get("temperature_c"), (end or {}).get("temperature_c")
    thr = env.get("throttling")
    thr_text = (f"{thr.get('source')} {thr.get('value', thr.get('events'))}" if thr
                else "not readable")
    lines.append(f"- Temperature: {_f(t0, '.1f', 'not readable')} at start, "
                 f"{_f(t1, '.1f', 'not readable')} at end (°C, hottest zone); throttling: "
                 f"{thr_text}")
    tpu = env.get("edgetpu") or {}
    if tpu:
        usb = ", ".join(f"{d['id']} USB {d.get('usb') or '?'} ({d.get('speed_mbps')} Mbit/s)"
                        for d in tpu.get("usb") or []) or "none"
        lines.append(f"- Edge TPU: library {tpu.get('library')} "
                     f"{'found' if tpu.get('library_found') else 'not found'}"
                     f"{', ' + tpu['package'] if tpu.get('package') else ''}; USB devices: "
                     f"{usb}; PCIe: {', '.join(tpu.get('pcie') or []) or 'none'}")
    if env.get("load_average"):
        lines.append(f"- Load average at start: {env['load_average']}")
    return lines


def _throttled(t: dict[str, Any] | None) -> str:
    """Throttling in a table cell: yes/no with what the platform said, or not readable."""
    if not t:
        return "not readable"
    if t.get("throttled_now") is None:
        return f"{t.get('events')} event(s) since boot"
    return ("**yes** (" + ", ".join(t.get("now") or []) + ")") if t["throttled_now"] else "no"


def _table(rows: list[dict[str, Any]], merged: bool) -> list[str]:
    """The main results table (with a device column when merged)."""
    head = ("| device " if merged else "") + (
        "| variant | threads | accelerator | top-1 | top-5 | size (KB) | load (ms) | "
        "first (ms) | mean (ms) | std | min | p50 | p90 | p99 | pipeline p50 | "
        "fps (1000/mean) | "
        "peak RSS (MB) | Pareto |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r, front in zip(rows, mark_pareto(rows)):
        lat = r["latency_ms"]
        rss = r.get("rss_peak_bytes")
        lines.append(
            (f"| {r.get('device', '')} " if merged else "")
            + f"| {r['variant']} | {r['threads']} | {accelerator(r)} | "
            f"{_f(r.get('top1'), '.4f', '-')} | {_f(r.get('top5'), '.4f', '-')} | "
            f"{_f(r.get('size_bytes', 0) / 1024, '.0f')} | {_f(r.get('load_ms'), '.2f')} | "
            f"{_f(r.get('first_ms'), '.2f')} | {lat['mean']:.3f} | {_f(lat.get('std'), '.3f')} | "
            f"{_f(lat.get('min'), '.3f')} | {lat['p50']:.3f} | {lat['p90']:.3f} | "
            f"{lat['p99']:.3f} | {_f((r.get('pipeline_ms') or {}).get('p50'), '.3f')} | "
            f"{_f(r.get('throughput_fps'), '.0f')} | "
            f"{_f(rss / 2**20 if rss else None, '.1f', '-')} | {'★' if front else ''} |")
    return lines


def _e2e_table(rows: list[dict[str, Any]], merged: bool) -> list[str]:
    """The end-to-end section, when any row has one."""
    e2e = [r for r in rows if r.get("end_to_end")]
    if not e2e:
        return []
    src = e2e[0]["end_to_end"]
    lines = ["", "## End to end (camera pipeline over a video)", "",
             f"Source `{src['source']}`, "
             + (f"paced at {src['paced_fps']:g} fps like a camera" if src.get("paced_fps")
                else "not paced (live source, or as fast as frames decode)")
             + ". The classifier always takes the newest frame; frames replaced before they "
             "were classified are *dropped*. Latency: frame captured -> result; age: frame "
             "captured -> classification starts.", "",
             ("| device " if merged else "") + "| variant | threads | accelerator | fps | "
             "latency p50 (ms) | p90 | p99 | frame age p50 (ms) | dropped / captured |",
             ("|---" if merged else "") + "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in e2e:
        e = r["end_to_end"]
        lines.append((f"| {r.get('device', '')} " if merged else "")
                     + f"| {r['variant']} | {r['threads']} | {accelerator(r)} | {e['fps']:.1f} | "
                     f"{e['latency_ms']['p50']:.2f} | {e['latency_ms']['p90']:.2f} | "
                     f"{e['latency_ms']['p99']:.2f} | {e['frame_age_ms']['p50']:.2f} | "
                     f"{e['frames_dropped']} / {e['frames_captured']} |")
    return lines


def _comparison(cmp: dict[str, Any] | None) -> list[str]:
    """The comparison section, when results were compared."""
    if not cmp:
        return []
    lines = ["", f"## Comparison with `{cmp.get('reference')}`", "",
             f"Tolerance: latency and end-to-end fps ±{cmp['tolerance'] * 100:.0f}%, top-1 "
             f"±{cmp['accuracy_tolerance'] * 100:.1f} points. "
             f"**{cmp['regressions']} regression(s).**", ""]
    for c in cmp["checks"]:
        if c["status"] != "ok":
            lines.append(f"- {c['status'].upper()}: {describe(c)}")
    ok = sum(c["status"] == "ok" for c in cmp["checks"])
    lines.append(f"- {ok} check(s) within tolerance.")
    lines += [f"- Not measured now: {m}" for m in cmp.get("missing") or []]
    lines += [f"- Note: {n}" for n in cmp.get("notes") or []]
    return lines


def to_markdown(results: dict[str, Any], plots: dict[str, bool] | None = None) -> str:
    """The report: environment, table, end-to-end, warnings, comparison, plots, published."""
    plots = plots or {}
    merged = results.get("kind") == "merged"
    if merged:
        lines = ["# edgekit benchmark: cross-device", "",
                 f"{len(results['devices'])} device(s), merged {results.get('created')}.", "",
                 "| device | board | emulated | CPU | cores | governor | temperature (°C) | "
                 "throttled | OS | interpreter | run | measured |",
                 "|---|---|---|---|---:|---|---:|---|---|---|---|---|"]
        for d in results["devices"]:
            e = d.get("environment") or {}
            lines.append(f"| {d['device']} | {e.get('board') or '-'} | "
                         f"{'**yes**: ' + e['emulated'] if e.get('emulated') else 'no'} | "
                         f"{e.get('cpu')} | {e.get('cores')} | "
                         f"{e.get('governor') or 'unknown'} | "
                         f"{_f(e.get('temperature_c'), '.1f', '-')} | "
                         f"{_throttled(e.get('throttling'))} | {e.get('os')} | "
                         f"{e.get('interpreter')} | `{d.get('run')}` | {d.get('created')} |")
    else:
        s = results.get("settings") or {}
        lines = ["# edgekit benchmark", "",
                 f"Run `{results['run']}`, measured {results['created']} on "
                 f"**{results.get('device', 'this machine')}**.", "", "## Environment", ""]
        lines += _environment_lines(results.get("environment") or {}, results.get("end"))
        least = f" (and at least {s['min_seconds']:g} s)" if s.get("min_seconds") else ""
        rss = ("Each row is measured in a fresh process: its peak RSS is its own"
               if s.get("isolate", True) else
               "Rows were measured in one process: peak RSS accumulates from row to row")
        lines += ["", f"{s.get('runs')} timed runs per row{least} after the first inference "
                  f"and {s.get('warmup')} warm-up runs, which are excluded; accuracy on "
                  f"{results.get('test_images')} held-out images through the runtime's "
                  f"preprocessing. {rss} (see benchmarks/SCHEMA.md)."]
    lines += ["", "## Results", "",
              "Latency is `invoke()` alone; *pipeline p50* adds resize, quantization and "
              "dequantization of a full-size image; fps = 1000 / mean latency (back-to-back "
              "invokes); both plots compare variants by p50 latency. ★ = on the Pareto front "
              "(no other row of the same device is both faster, by p50, and more accurate).",
              ""]
    lines += _table(results["rows"], merged)
    lines += _e2e_table(results["rows"], merged)
    if results.get("warnings"):
        lines += ["", "**Warnings:**", ""] + [f"- {w}" for w in results["warnings"]]
    lines += _comparison(results.get("comparison"))
    lines += ["", "## Plots", ""]
    if plots.get(PLOT_PARETO):
        lines.append(f"![latency vs accuracy]({PLOT_PARETO})")
    if plots.get(PLOT_THREADS):
        lines += ["", f"![thread scaling]({PLOT_THREADS})"]
    if not any(plots.values()):
        lines.append("(No plot: matplotlib is not installed here; run "
                     "`python -m benchmarks report DIR` where it is.)")
    elif not plots.get(PLOT_THREADS):
        lines.append("")
        lines.append("(No thread-scaling plot: every variant was measured at one thread count.)")
    lines += [""] + published_markdown()
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """Writes results.csv, the plots (where matplotlib is installed) and report.md."""
    from .plots import pareto_plot, thread_scaling_plot

    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "results.csv", to_csv(results["rows"]))
    plots = {PLOT_PARETO: pareto_plot(results["rows"], out_dir / PLOT_PARETO),
             PLOT_THREADS: thread_scaling_plot(results["rows"], out_dir / PLOT_THREADS)}
    for name, drawn in plots.items():
        if not drawn:  # a plot left from an earlier run would not match these results
            (out_dir / name).unlink(missing_ok=True)
    write_text(out_dir / "report.md", to_markdown(results, plots))
    return out_dir / "report.md"


def summary(results: dict[str, Any]) -> str:
    """A few lines for the terminal: one per row (top-1, p50 latency, fps), then the
    warnings; the whole story is in report.md."""
    lines = []
    for r in results["rows"]:
        lat = (r.get("latency_ms") or {}).get("p50")
        lines.append(f"{r['variant']:>10}  {r['threads']} thread(s)  {accelerator(r)}: top-1 "
                     f"{_f(r.get('top1'), '.4f', '-')}, p50 {_f(lat, '.3f', '-')} ms, "
                     f"{_f(r.get('throughput_fps'), '.0f', '-')} fps")
    return "\n".join(lines + [f"warning: {w}" for w in results.get("warnings") or []])


def write_all(results: dict[str, Any], out_dir: Path) -> Path:
    """Writes results.json, results.csv, the plots and report.md; returns the report path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    return write_report(results, out_dir)
