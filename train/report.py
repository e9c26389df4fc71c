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


def plot_history(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("accuracy", "loss")):
        ax.plot(history.get(key, []), label=f"train {key}")
        ax.plot(history.get(f"val_{key}", []), label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * k + 2), max(3.5, 0.5 * k + 1.5)))
    ax.imshow(cm, cmap="Blues")
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Held-out confusion matrix")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
