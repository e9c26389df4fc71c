"""Plots for the report; matplotlib is imported only here, only when a plot is drawn, so the
measuring part works on a device without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_runtime.fileio import atomic_path

from .analysis import accelerator, mark_pareto


def _pyplot() -> Any | None:
    """matplotlib.pyplot with the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig: Any, plt: Any, path: Path) -> None:
    """Saves a figure atomically (temporary file beside ``path``, then rename)."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def _label(r: dict[str, Any], with_device: bool) -> str:
    """A point's label: variant/threads[/accelerator], with the device when merged."""
    acc = accelerator(r)
    text = f"{r['variant']}/{r['threads']}t" + ("" if acc == "cpu" else f"/{acc}")
    return f"{r['device']}: {text}" if with_device and r.get("device") else text


def pareto_plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Latency p50 vs top-1, marker area ~ model size, non-dominated rows highlighted.

    With several devices the front is computed per device and each device has a colour.

    Returns:
        False when matplotlib is missing or no row has a top-1 (nothing is written).
    """
    rows = [r for r in rows if isinstance(r.get("top1"), (int, float))]
    plt = _pyplot()
    if plt is None or not rows:
        return False
    front = mark_pareto(rows)
    devices = list(dict.fromkeys(r.get("device") for r in rows))
    several = len(devices) > 1
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    biggest = max(r["size_bytes"] for r in rows) or 1
    fig, ax = plt.subplots(figsize=(8, 5))
    n_labels = 0
    for d_i, dev in enumerate(devices):
        colour = colours[d_i % len(colours)]
        mine = [(r, f) for r, f in zip(rows, front) if r.get("device") == dev]
        for r, on_front in mine:
            x, y = r["latency_ms"]["p50"], r["top1"] * 100
            ax.scatter(x, y, s=40 + 400 * r["size_bytes"] / biggest, color=colour,
                       alpha=0.85 if on_front else 0.3,
                       edgecolors="red" if on_front else "none", linewidths=2)
            n_labels += 1  # stagger labels so that near-identical points stay readable
            ax.annotate(_label(r, several), (x, y), textcoords="offset points",
                        xytext=(6, (4, -10, 12, -18)[n_labels % 4]), fontsize=9,
                        fontweight="bold" if on_front else "normal")
        pts = sorted((r["latency_ms"]["p50"], r["top1"] * 100) for r, f in mine if f)
        if len(pts) > 1:
            ax.plot(*zip(*pts), color=colour, linestyle="--", linewidth=1,
                    label=f"Pareto front{': ' + str(dev) if several else ''}")
    ax.scatter([], [], s=60, facecolors="none", edgecolors="red", linewidths=2,
               label="non-dominated (red edge)")
    lat = [r["latency_ms"]["p50"] for r in rows]
    if max(lat) / max(min(lat), 1e-9) > 20:  # several orders of magnitude: log axis
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("invoke latency p50 (ms, log scale)")
    else:
        ax.set_xlabel("invoke latency p50 (ms)")
    top1 = [r["top1"] * 100 for r in rows]
    low, high = max(0.0, min(top1) - 5), min(101.0, max(top1) + 2)
    ax.set_ylim(low, high)  # the room above 100 % keeps a perfect point's marker whole
    ax.set_yticks([t for t in ax.get_yticks() if low <= t <= 100.0])  # no "101 %"
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title("Latency vs accuracy (marker area ~ model size)" + emulated_note(rows))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=10, loc="lower right")
    fig.tight_layout()
    _save(fig, plt, path)
    return True


def emulated_note(rows: list[dict[str, Any]]) -> str:
    """``"\nEMULATED: dev, ..."`` naming the emulated devices among ``rows`` ('' if none):
    their timings say nothing about the real hardware, so every plot says so."""
    devs = list(dict.fromkeys(str(r.get("device") or "this device") for r in rows
                              if r.get("emulated") or "(emulated)" in str(r.get("device"))))
    return f"\nEMULATED: {', '.join(devs)}" if devs else ""


def scaling_series(rows: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """(threads, invoke latency p50 in ms) per device/variant/accelerator measured at 2+
    thread counts, keyed by the legend label. p50, as in the Pareto plot: both plots then
    agree on which variant is fastest (the mean is pulled up by a loaded box's outliers)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("device"), r["variant"], accelerator(r)), []).append(r)
    groups = {k: sorted(v, key=lambda r: r["threads"]) for k, v in groups.items()
              if len({r["threads"] for r in v}) > 1}
    several = len({k[0] for k in groups}) > 1
    return {(f"{dev}: " if several else "") + variant + ("" if acc == "cpu" else f"/{acc}"):
            ([r["threads"] for r in rs], [float(r["latency_ms"]["p50"]) for r in rs])
            for (dev, variant, acc), rs in groups.items()}


def thread_scaling_plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Invoke latency p50 against thread count, and the speed-up it gives, one line per
    device/variant.

    Returns:
        False when matplotlib is missing or no variant was measured at two thread counts.
    """
    series = scaling_series(rows)
    plt = _pyplot()
    if plt is None or not series:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    for label, (t, p50) in series.items():
        ax1.plot(t, p50, marker="o", label=label)
        ax2.plot(t, [p50[0] / v if v > 0 else 0.0 for v in p50], marker="o", label=label)
    lo = min(t[0] for t, _ in series.values())
    top = max(t[-1] for t, _ in series.values())
    ax2.plot([lo, top], [1, top / lo], color="grey", linestyle=":", label="linear")
    ax1.set_xlabel("threads")
    ax1.set_ylabel("invoke latency p50 (ms; lower is faster)")
    ax1.set_title("Latency p50 vs threads")
    ax1.set_ylim(bottom=0)
    ax2.set_xlabel("threads")
    ax2.set_ylabel("speed-up vs fewest threads (p50)")
    ax2.set_title("Thread scaling")
    if emulated_note(rows):
        fig.suptitle(emulated_note(rows).strip(), color="darkred")
    counts = sorted({n for t, _ in series.values() for n in t})
    for ax in (ax1, ax2):
        ax.set_xticks(counts)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=10)
    fig.tight_layout()
    _save(fig, plt, path)
    return True
