"""The report's and the run folder's plots: one statistic per story, readable labels."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.imageio import probe_file


def _row(variant: str, threads: int, p50: float, mean: float, device: str = "pi5") -> dict:
    return {"device": device, "variant": variant, "threads": threads,
            "latency_ms": {"p50": p50, "mean": mean, "p90": p50, "p99": p50},
            "throughput_fps": 1000.0 / mean,
            "top1": 0.9, "size_bytes": 1000}


def _figures(monkeypatch, module) -> list:
    """Figures ``module`` would save, kept open for the test to read instead."""
    figs: list = []
    monkeypatch.setattr(module, "_save", lambda fig, *a, **k: figs.append(fig))
    return figs


def test_thread_scaling_and_pareto_agree_on_the_fastest_variant_by_p50(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks import plots

    # Under load: int8 has the lower median but outliers pull its mean above f16's.
    rows = [_row("int8", 1, 4.0, 9.0), _row("int8", 4, 2.0, 8.0),
            _row("f16", 1, 6.0, 7.0), _row("f16", 4, 3.0, 5.0), _row("f32", 1, 9, 9)]
    series = plots.scaling_series(rows)
    assert series == {"int8": ([1, 4], [4.0, 2.0]), "f16": ([1, 4], [6.0, 3.0])}  # f32: 1 count
    figs = _figures(monkeypatch, plots)
    assert plots.thread_scaling_plot(rows, tmp_path / "t.png")
    assert plots.pareto_plot(rows, tmp_path / "p.png")
    scaling, pareto = figs
    lines = {ln.get_label(): ln for ln in scaling.axes[0].get_lines()}
    at4 = {k: ln.get_ydata()[list(ln.get_xdata()).index(4)] for k, ln in lines.items()}
    assert min(at4, key=at4.get) == "int8"  # lowest p50 at 4 threads
    assert "p50" in scaling.axes[0].get_ylabel() and "p50" in pareto.axes[0].get_xlabel()
    xs = [tuple(c.get_offsets()[0]) for c in pareto.axes[0].collections if len(c.get_offsets())]
    assert min(xs)[0] == 2.0  # the Pareto plot's fastest point is int8/4t's p50 too
    assert list(scaling.axes[1].get_lines()[0].get_ydata()) == [1.0, 2.0]  # int8 speed-up


@pytest.mark.parametrize("best,other", [(1.0, 0.99), (1.0, 0.94), (0.99, 0.93)])
def test_pareto_has_no_tick_above_100_percent(monkeypatch, tmp_path, best, other):
    pytest.importorskip("matplotlib")
    from benchmarks import plots

    rows = [_row("int8", 1, 2.0, 2.0) | {"top1": best},
            _row("f32", 1, 5.0, 5.0) | {"top1": other}]
    figs = _figures(monkeypatch, plots)
    assert plots.pareto_plot(rows, tmp_path / "p.png")
    ax = figs[0].axes[0]
    low, high = ax.get_ylim()
    shown = [t for t in ax.get_yticks() if low <= t <= high]
    assert len(shown) >= 3 and max(shown) <= 100, shown
    assert high >= best * 100  # the best point stays inside the axes


def test_training_curves_count_epochs_from_1_and_mark_the_best(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    from train import report

    history = {"accuracy": [0.3, 0.6, 0.8, 0.9], "loss": [1.5, 0.9, 0.5, 0.3],
               "val_accuracy": [0.25, 0.7, 0.7, 0.6], "val_loss": [1.6, 0.8, 0.7, 0.9],
               "val_score": [0.26, 0.71, 0.72, 0.61]}  # epoch 3 wins the tie on loss
    assert report.best_epoch(history) == 3
    assert report.best_epoch({k: v for k, v in history.items() if k != "val_score"}) == 2
    assert report.best_epoch({"loss": [1.0]}) is None
    figs = _figures(monkeypatch, report)
    report.plot_history(history, tmp_path / "curves.png")
    for ax in figs[0].axes:
        curves = {ln.get_label(): ln for ln in ax.get_lines()}
        data = [c for name, c in curves.items() if not name.startswith("best")]
        assert len(data) == 2 and all(list(c.get_xdata()) == [1, 2, 3, 4] for c in data)
        marker = curves["best epoch (3, kept)"]
        assert list(marker.get_xdata()) == [3, 3]
        assert all(float(t).is_integer() for t in ax.get_xticks())


def test_augment_preview_titles_each_tile_with_its_class(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    from train import report

    images = np.zeros((8, 16, 16, 3), np.float32)
    classes = ["cat", "dog"] * 3 + ["a_very_long_class_name_indeed", "cat"]
    figs = _figures(monkeypatch, report)
    title = "Training images as the model sees them (8 of 40): " + ", ".join(
        f"setting {i} 0.{i}" for i in range(12))
    report.plot_preview(images, classes, title, tmp_path / "preview.png")
    fig = figs[0]
    shown = [ax.get_title() for ax in fig.axes if ax.images]
    assert shown == classes[:6] + ["a_very_long_class…", "cat"]
    sup = fig._suptitle
    assert sup.get_text().replace("\n", " ") == title and sup.get_fontsize() >= 12
    assert max(len(line) for line in sup.get_text().splitlines()) <= 80  # wrapped, fits
    assert all(ax.title.get_fontsize() >= 10 for ax in fig.axes if ax.images)


def test_report_labels_its_fps_column_and_the_plots_statistic():
    from benchmarks.report import _table, to_markdown

    head = _table([_row("int8", 1, 10.0, 12.5)], merged=False)
    assert "| fps (1000/mean) |" in head[0]
    assert "| 80 |" in head[2]
    text = to_markdown({"rows": [_row("int8", 1, 10.0, 12.5)], "run": "runs/x",
                        "created": "2026-12-03T07:00:00Z"}, {})
    assert "both plots compare variants by p50 latency" in text


def test_thread_scaling_png_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks.plots import thread_scaling_plot

    rows = [_row("int8", 1, 10.0, 12.5), _row("int8", 4, 4.0, 5.0)]
    assert thread_scaling_plot(rows, tmp_path / "t.png")
    info = probe_file(tmp_path / "t.png")
    assert info.width >= 800 and info.height >= 400  # two readable panels side by side


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
