"""The report's and the run folder's plots: one throughput definition, readable sizes."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.imageio import probe_file


def _row(variant: str, threads: int, p50: float, mean: float, device: str = "pi5") -> dict:
    return {"device": device, "variant": variant, "threads": threads,
            "latency_ms": {"p50": p50, "mean": mean, "p90": p50, "p99": p50},
            "throughput_fps": 1000.0 / mean,
            "top1": 0.9, "size_bytes": 1000}


def test_thread_scaling_plots_the_tables_fps_not_1000_over_p50():
    from benchmarks.plots import scaling_series

    rows = [_row("int8", 1, 10.0, 12.5), _row("int8", 4, 4.0, 5.0), _row("f32", 1, 9, 9)]
    assert scaling_series(rows) == {"int8": ([1, 4], [80.0, 200.0])}  # f32: one count only
    no_fps = [{k: v for k, v in r.items() if k != "throughput_fps"} for r in rows[:2]]
    assert scaling_series(no_fps) == {"int8": ([1, 4], [80.0, 200.0])}


def test_report_labels_its_fps_column():
    from benchmarks.report import _table

    head = _table([_row("int8", 1, 10.0, 12.5)], merged=False)
    assert "| fps (1000/mean) |" in head[0]
    assert "| 80 |" in head[2]  # the same number the plot draws


def test_thread_scaling_png_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks.plots import thread_scaling_plot

    rows = [_row("int8", 1, 10.0, 12.5), _row("int8", 4, 4.0, 5.0)]
    assert thread_scaling_plot(rows, tmp_path / "t.png")
    info = probe_file(tmp_path / "t.png")
    assert (info.width, info.height) == (1100, 460)


def test_confusion_matrix_is_large_with_a_colour_bar(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    from train.report import plot_confusion

    bars = []
    real = matplotlib.figure.Figure.colorbar
    monkeypatch.setattr(matplotlib.figure.Figure, "colorbar",
                        lambda self, *a, **k: bars.append(1) or real(self, *a, **k))
    plot_confusion(np.array([[5, 1], [0, 6]]), ["a", "b"], tmp_path / "cm.png")
    small = probe_file(tmp_path / "cm.png")
    assert small.width >= 700 and small.height >= 600 and bars == [1]  # readable when tiny
    k = 24
    plot_confusion(np.eye(k, dtype=int) * 3, [f"class{i}" for i in range(k)],
                   tmp_path / "cm24.png")
    big = probe_file(tmp_path / "cm24.png")
    # Grows with the classes: each keeps a readable cell (>= 50 px) for its count.
    assert big.width >= 50 * k and big.height >= 50 * k, (big.width, big.height)
    assert bars == [1, 1]
