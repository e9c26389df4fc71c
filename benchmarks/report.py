"""Writes benchmark results: JSON, CSV, a Markdown report and the latency-vs-accuracy plot."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

from edge_runtime.fileio import write_json, write_text

CSV_FIELDS = ("variant", "threads", "backend", "top1", "size_bytes", "load_ms", "first_ms",
              "mean", "std", "min", "p50", "p90", "p99", "pipeline_p50", "throughput_fps")


def to_csv(rows: list[dict]) -> str:
    """One CSV line per result row (latencies in ms)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in rows:
        lat = r["latency_ms"]
        w.writerow({"variant": r["variant"], "threads": r["threads"], "backend": r["backend"],
                    "top1": f"{r['top1']:.4f}", "size_bytes": r["size_bytes"],
                    "load_ms": f"{r['load_ms']:.2f}", "first_ms": f"{r['first_ms']:.2f}",
                    **{k: f"{lat[k]:.3f}" for k in ("mean", "std", "min", "p50", "p90", "p99")},
                    "pipeline_p50": f"{r['pipeline_ms']['p50']:.3f}",
                    "throughput_fps": f"{r['throughput_fps']:.1f}"})
    return buf.getvalue()


def to_markdown(results: dict, plot_name: str | None) -> str:
    """The report: environment, the table, the plot."""
    env = results["environment"]
    lines = ["# edgekit benchmark", "",
             f"Run `{results['run']}`, measured {results['created']}.", "",
             f"- CPU: {env.get('cpu')} ({env.get('cores')} cores), governor "
             f"{env.get('governor') or 'unknown'}, {env.get('os')}",
             f"- Python {env.get('python')}, interpreter {env.get('interpreter')}",
             f"- {results['settings']['runs']} timed runs per row after "
             f"{results['settings']['warmup']} warm-up runs; accuracy on "
             f"{results['test_images']} held-out images through the runtime's preprocessing.",
             "", "Latency is `invoke()` alone; *pipeline p50* adds resize, quantization and "
             "dequantization of a full-size image.", "",
             "| variant | threads | top-1 | size (KB) | mean (ms) | p50 | p90 | p99 | "
             "pipeline p50 | fps |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lat = r["latency_ms"]
        lines.append(f"| {r['variant']} | {r['threads']} | {r['top1']:.4f} | "
                     f"{r['size_bytes'] / 1024:.0f} | {lat['mean']:.3f} | {lat['p50']:.3f} | "
                     f"{lat['p90']:.3f} | {lat['p99']:.3f} | {r['pipeline_ms']['p50']:.3f} | "
                     f"{r['throughput_fps']:.0f} |")
    warn = [w for w in results.get("warnings", [])]
    if warn:
        lines += ["", "**Warnings:**", ""] + [f"- {w}" for w in warn]
    if plot_name:
        lines += ["", f"![latency vs accuracy]({plot_name})"]
    else:
        lines += ["", "(No plot: matplotlib is not installed here; run "
                  "`python -m benchmarks report DIR` where it is.)"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> bool:
    """Latency (p50) vs top-1, marker size = model size; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        size_kb = r["size_bytes"] / 1024
        ax.scatter(r["latency_ms"]["p50"], r["top1"] * 100, s=max(20.0, size_kb / 10),
                   alpha=0.6, label=f"{r['variant']} ({r['threads']} thr)")
        ax.annotate(f"{r['variant']}/{r['threads']}t",
                    (r["latency_ms"]["p50"], r["top1"] * 100),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("invoke latency p50 (ms)")
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title("Latency vs accuracy (marker area ~ model size)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def write_all(results: dict, out_dir: Path) -> Path:
    """Writes results.json, results.csv, latency_vs_accuracy.png and report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    write_text(out_dir / "results.csv", to_csv(results["rows"]))
    has_plot = plot(results["rows"], out_dir / "latency_vs_accuracy.png")
    write_text(out_dir / "report.md",
               to_markdown(results, "latency_vs_accuracy.png" if has_plot else None))
    return out_dir / "report.md"
