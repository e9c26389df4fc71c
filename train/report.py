"""Held-out evaluation (top-1/top-5, per-class precision/recall/F1, confusion matrix) and
the run folder's plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.fileio import atomic_path


def evaluate_predictions(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """Top-1 (top-5 where >= 5 classes), per-class accuracy and confusion matrix."""
    pred = probs.argmax(axis=1)
    k = len(classes)
    cm = np.zeros((k, k), np.int64)
    for t, p in zip(y, pred):
        cm[t, p] += 1
    out = {"top1": float((pred == y).mean()) if len(y) else 0.0, "count": int(len(y))}
    if k >= 5:
        top5 = np.argsort(-probs, axis=1)[:, :5]
        out["top5"] = float(np.mean([t in row for t, row in zip(y, top5)]))
    out["per_class"] = {c: float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None
                        for i, c in enumerate(classes)}
    prf = {}
    for i, c in enumerate(classes):
        tp, pred_n, true_n = cm[i, i], cm[:, i].sum(), cm[i].sum()
        p = float(tp / pred_n) if pred_n else 0.0
        r = float(tp / true_n) if true_n else 0.0
        prf[c] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                  "support": int(true_n)}
    out["per_class_metrics"] = prf
    out["confusion_matrix"] = cm.tolist()
    return out


def _pyplot():
    """matplotlib.pyplot with the Agg backend (imported here only: training on a headless
    box must not pick a GUI backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 100) -> None:
    """Saves ``fig`` atomically and closes it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        _pyplot().close(fig)


def best_epoch(history: dict) -> int | None:
    """The 1-based epoch whose weights are kept: the highest ``val_score`` (what the
    checkpoint and early stopping monitor), else the highest ``val_accuracy``."""
    val = history.get("val_score") or history.get("val_accuracy") or []
    return int(np.argmax(val)) + 1 if len(val) else None


def plot_history(history: dict, path: Path) -> None:
    """Training and validation accuracy and loss per epoch (counted from 1), side by
    side, with the best epoch marked."""
    plt = _pyplot()
    best = best_epoch(history)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("accuracy", "loss")):
        for name, label in ((key, f"train {key}"), (f"val_{key}", f"val {key}")):
            ys = history.get(name, [])
            ax.plot(range(1, len(ys) + 1), ys, marker="o", markersize=3, label=label)
        if best is not None:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1,
                       label=f"best epoch ({best}, kept)")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.xaxis.get_major_locator().set_params(integer=True)  # no epoch 2.5
        ax.grid(alpha=0.3)
        ax.legend(fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def plot_preview(images: np.ndarray, classes: list[str], title: str, path: Path,
                 cols: int = 6) -> None:
    """A grid of (augmented) training images, each tile titled with its class."""
    import textwrap

    plt = _pyplot()
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.8, rows * 1.9 + 0.8),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, name in zip(axes.ravel(), images, classes):
        ax.imshow(np.clip(img, 0, 255).astype(np.uint8))
        ax.set_title(name if len(name) <= 18 else name[:17] + "…", fontsize=10)
    fig.suptitle("\n".join(textwrap.wrap(title, 80)), fontsize=12)
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path) -> None:
    """The held-out confusion matrix with counts in the cells and a colour bar; at
    least 7x6 inches at 110 dpi (770x660 px), growing with the number of classes."""
    plt = _pyplot()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.55 * k + 3), max(6.0, 0.55 * k + 2)))
    im = ax.imshow(cm, cmap="Blues", vmin=0)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("images", fontsize=11)
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=11)
        ax.set_yticks(range(k), classes, fontsize=11)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                        fontsize=12 if k <= 10 else 9,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted", fontsize=12)
    ax.set_ylabel("true", fontsize=12)
    ax.set_title(f"Held-out confusion matrix ({int(cm.sum())} images)", fontsize=13)
    fig.tight_layout()
    _save(fig, path, dpi=110)
