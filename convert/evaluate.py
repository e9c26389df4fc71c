"""Runs exported TFLite models on the held-out split and writes the conversion report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.classify import Classifier
from edge_runtime.runs import load_arrays


def run_model(path: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities of a ``.tflite`` model on preprocessed images, via the runtime."""
    clf = Classifier(path)
    return np.stack([clf.scores(img) for img in images])


def score(probs: np.ndarray, labels: np.ndarray, reference: np.ndarray,
          classes: list[str]) -> dict:
    """Accuracy of ``probs`` and how far they are from the ``reference`` (Keras) outputs.

    Returns:
        top1, top5 (>= 5 classes), agreement (share of images whose top-1 equals the
        reference's), per_class accuracy, mean/max absolute probability error.
    """
    top1 = probs.argmax(1)
    out = {"top1": float((top1 == labels).mean()),
           "agreement": float((top1 == reference.argmax(1)).mean())}
    if len(classes) >= 5:
        top5 = np.argsort(-probs, axis=1)[:, :5]
        out["top5"] = float(np.mean([t in row for t, row in zip(labels, top5)]))
    out["per_class"] = {c: float((top1[labels == i] == i).mean()) if (labels == i).any() else None
                        for i, c in enumerate(classes)}
    err = np.abs(probs - reference)
    out["mean_prob_error"] = float(err.mean())
    out["max_prob_error"] = float(err.max())
    return out


def field_test(models: dict[str, Path], predict, manifest, root: Path | None,
               classes: list[str]) -> dict | None:
    """Top-1 of the source model and of each model on the run's field test split (the
    held-out frames from deployed cameras that ``train`` records when the dataset has
    field images); None without one.

    Args:
        models: variant name -> ``.tflite`` path.
        predict: the source model, ``images -> probabilities``.
        manifest: the run's manifest (``data.field_test``: ``[[path, class], ...]``).
        root: the folder those paths start from.
        classes: the labels, in index order.
    """
    data = manifest.extra.get("data") or {}
    items = [(str(rel), int(ci)) for rel, ci in data.get("field_test") or []]
    if not items or root is None:
        return None
    x, y, skipped = load_arrays(root, items, tuple(manifest.input_size), manifest.resize,
                                manifest.interpolation)
    if not len(y):
        return None
    ref = predict(x)
    rows = {name: score(run_model(path, x), y, ref, classes) for name, path in models.items()}
    return {"images": int(len(y)), "groups": len(data.get("field_test_groups") or []),
            "skipped": skipped, "keras": {"top1": score(ref, y, ref, classes)["top1"]},
            "variants": {name: {k: r[k] for k in ("top1", "agreement", "per_class")}
                         for name, r in rows.items()}}


def _field_line(report: dict) -> str | None:
    """One line: top-1 of each model on the field test split, with its size."""
    f = report.get("field_test")
    if not f:
        return None
    tops = ", ".join(f"{name} {r['top1']:.4f}" for name, r in
                     {"keras": f["keras"], **f["variants"]}.items())
    return (f"field test split ({f['images']} held-out field images, {f['groups']} "
            f"device/time groups): top-1 {tops}")


def add_deltas(variants: dict[str, dict], base: str = "float32") -> None:
    """Adds per-class and top-1 changes (in points) against the ``base`` variant."""
    if base not in variants or "top1" not in variants[base]:
        return
    ref = variants[base]
    for name, row in variants.items():
        if name == base or "top1" not in row:
            continue
        row["top1_drop_points"] = round(100 * (ref["top1"] - row["top1"]), 3)
        row["per_class_delta_points"] = {
            c: round(100 * (acc - ref["per_class"][c]), 3)
            for c, acc in row["per_class"].items()
            if acc is not None and ref["per_class"].get(c) is not None}


def worst_classes(row: dict, n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` classes that lost the most accuracy (points, most negative first)."""
    deltas = row.get("per_class_delta_points", {})
    return sorted(((c, d) for c, d in deltas.items() if d < 0), key=lambda cd: cd[1])[:n]


def format_table(report: dict) -> str:
    """A plain-text table of the conversion report."""
    lines = [f"{'variant':<10} {'top1':>7} {'agree':>7} {'drop pt':>8} {'max|dp|':>8} "
             f"{'size KB':>9}"]
    k = report.get("keras")
    if k:
        lines.append(f"{'keras':<10} {k['top1']:>7.4f} {'-':>7} {'-':>8} {'-':>8} "
                     f"{k['size_bytes'] / 1024:>9.1f}")
    for name, r in report["variants"].items():
        if "top1" not in r:
            lines.append(f"{name:<10} {'(' + r.get('status', 'not evaluated') + ')'}")
            continue
        drop = f"{r['top1_drop_points']:.2f}" if "top1_drop_points" in r else "-"
        lines.append(f"{name:<10} {r['top1']:>7.4f} {r['agreement']:>7.4f} {drop:>8} "
                     f"{r['max_prob_error']:>8.4f} {r['size_bytes'] / 1024:>9.1f}")
    field = _field_line(report)
    if field:  # the table above is the original test split; say so beside the field one
        lines += [f"(top1 above: original test split, {report['test_images']} images)", field]
    return "\n".join(lines)


def to_markdown(report: dict) -> str:
    """``convert_report.md``: the table, per-class deltas and quantization findings."""
    lines = ["# Conversion report", "",
             f"Source: `{report['source']}`; evaluated on {report['test_images']} held-out "
             "images with the TFLite interpreter through edgekit's runtime preprocessing.",
             "", "| variant | top-1 | top-5 | agreement with Keras | drop vs float32 (pts) | "
             "mean / max prob. error | size (KB) |", "|---|---:|---:|---:|---:|---:|---:|"]
    k = report.get("keras")
    if k:
        lines.append(f"| keras | {k['top1']:.4f} | {k.get('top5', '-')} | - | - | - | "
                     f"{k['size_bytes'] / 1024:.0f} |")
    for name, r in report["variants"].items():
        if "top1" not in r:
            lines.append(f"| {name} | {r.get('status', 'not evaluated')} | | | | | |")
            continue
        top5 = f"{r['top5']:.4f}" if "top5" in r else "-"
        drop = f"{r['top1_drop_points']:.2f}" if "top1_drop_points" in r else "-"
        lines.append(f"| {name} | {r['top1']:.4f} | {top5} | {r['agreement']:.4f} | {drop} | "
                     f"{r['mean_prob_error']:.4f} / {r['max_prob_error']:.4f} | "
                     f"{r['size_bytes'] / 1024:.0f} |")
    field = report.get("field_test")
    if field:
        lines += ["", f"Field test split: {field['images']} held-out field images "
                  f"({field['groups']} device/time groups; the table above is the original "
                  f"test split, {report['test_images']} images).", "",
                  "| model | top-1 on the field test split | agreement with Keras |",
                  "|---|---:|---:|", f"| keras | {field['keras']['top1']:.4f} | - |"]
        lines += [f"| {n} | {r['top1']:.4f} | {r['agreement']:.4f} |"
                  for n, r in field["variants"].items()]
    deltas = {n: r["per_class_delta_points"] for n, r in report["variants"].items()
              if r.get("per_class_delta_points")}
    if deltas:
        classes = list(next(iter(deltas.values())))
        lines += ["", "## Per-class accuracy change vs float32 (points)", "",
                  "| class | " + " | ".join(deltas) + " |",
                  "|---|" + "---:|" * len(deltas)]
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(f"{d.get(c, 0.0):+.1f}" for d in
                                                  deltas.values()) + " |")
    layers = report.get("quantization_debugger")
    if layers:
        lines += ["", "## Layers with the largest quantization error", "",
                  "RMSE / scale from TensorFlow's quantization debugger; keep a layer in float "
                  "with `--float-layers NAME` (selective quantization).", "",
                  "| op | tensor | RMSE/scale |", "|---|---|---:|"]
        for layer in layers:
            lines.append(f"| {layer['op']} | `{layer['short_name']}` | "
                         f"{layer['rmse_per_scale']:.3f} |")
    edgetpu = report["variants"].get("edgetpu")
    if edgetpu and edgetpu.get("compiler"):
        lines += ["", "## Edge TPU compilation", "", "```",
                  edgetpu["compiler"].get("summary", ""), "```"]
    return "\n".join(lines) + "\n"
