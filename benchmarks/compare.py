"""Two models side by side on the same labelled images: top-1 overall, per class and on
field images, how often they agree, and who was right where they differ.

``python -m benchmarks compare OLD NEW --data FOLDER [--json OUT] [--out DIR]``. FOLDER
holds one subfolder per class (a training dataset, or a field dataset whose images carry
their kept-frame sidecars, ``NAME.json`` with ``device`` and ``model_sha256``). Each model
runs through edge_runtime's Classifier with the preprocessing of its own manifest, and its
answers are matched to the folder names by label, so the two may order (or even name a
different set of) classes differently. Only the numpy/OpenCV runtime is needed.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import file_sha256
from edge_runtime.preprocess import IMAGE_SUFFIXES

SIDECAR_KEYS = ("device", "model_sha256")  # what makes a JSON beside an image a sidecar


@dataclass(frozen=True)
class Image:
    """One labelled image: its path relative to the data folder, class name, field flag."""

    rel: str
    label: str
    field: bool


def _is_field(image: Path) -> bool:
    side = image.with_suffix(".json")
    if not side.is_file():
        return False
    try:
        d = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False  # a broken sidecar: the image still counts, as a lab image
    return isinstance(d, dict) and all(k in d for k in SIDECAR_KEYS)


def collect(folder: str | Path) -> list[Image]:
    """The labelled images of ``folder`` (``CLASS/NAME.jpg``), sorted.

    Files whose names start with ``.`` are temp files (a copy in progress) and skipped.

    Raises:
        EdgekitError: missing folder, no class subfolder, or no image at all.
    """
    root = Path(folder)
    if not root.is_dir():
        raise EdgekitError(f"data folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise EdgekitError(f"expected one subfolder per class in {root}, found none")
    images = [Image(f"{c}/{p.name}", c, _is_field(p))
              for c in classes for p in sorted((root / c).iterdir())
              if p.is_file() and not p.name.startswith(".")
              and p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise EdgekitError(f"no images in the class folders of {root}")
    return images


def _load_model(path: str | Path, role: str) -> tuple[Any, dict[str, Any]]:
    """A Classifier and its description; refuses a missing, broken or unlabelled model."""
    from edge_runtime.classify import Classifier

    p = Path(path)
    if not p.is_file():
        raise EdgekitError(f"{role} model not found: {p}")
    clf = Classifier(p)  # EdgekitError (one line, naming the file) for a broken model
    labels = [clf.labels.get(i) for i in range(clf.num_classes)]
    if not any(labels):
        raise EdgekitError(f"{role} model has no labels (no manifest beside or inside it): "
                           f"{p}")
    sha = file_sha256(p)
    return clf, {"model": str(p), "sha256": sha, "labels": labels}


def compare(old: str | Path, new: str | Path, data: str | Path) -> dict[str, Any]:
    """Runs both models on every image of ``data`` and tallies the answers.

    Returns:
        the comparison (see :func:`format_table` for what it holds).

    Raises:
        EdgekitError: a missing/broken model, a missing data folder, or a class of the
            data that the NEW model does not know (OLD lacking one is reported instead).
    """
    from edge_runtime.preprocess import load_image

    images = collect(data)
    old_clf, old_info = _load_model(old, "OLD")
    new_clf, new_info = _load_model(new, "NEW")
    classes = sorted({im.label for im in images})
    missing = [c for c in classes if c not in new_info["labels"]]
    if missing:
        raise EdgekitError(f"the NEW model has no class {missing[0]!r} (its classes: "
                           f"{', '.join(str(x) for x in new_info['labels'][:10])}) "
                           f"[{Path(data) / missing[0]}]")
    rows, skipped = [], []
    for im in images:
        try:
            rgb = load_image(Path(data) / im.rel)
        except EdgekitError as e:
            skipped.append(f"{im.rel}: {e}")
            continue
        row = {"image": im.rel, "label": im.label, "field": im.field}
        for role, clf, info in (("old", old_clf, old_info), ("new", new_clf, new_info)):
            scores = clf.scores(rgb)
            top = int(scores.argmax())
            row[role] = info["labels"][top]
            row[f"{role}_score"] = round(float(scores[top]), 4)
        rows.append(row)
    if not rows:
        raise EdgekitError(f"no readable image in {data} (first: {skipped[0]})")
    return summarize(rows, classes, old_info, new_info, str(data), skipped)


def _top1(rows: list[dict], role: str) -> float | None:
    return round(sum(r[role] == r["label"] for r in rows) / len(rows), 4) if rows else None


def summarize(rows: list[dict], classes: list[str], old: dict, new: dict, data: str,
              skipped: list[str]) -> dict[str, Any]:
    """The tallies of per-image answers (``rows``: image, label, field, old, new)."""
    differ = [r for r in rows if r["old"] != r["new"]]
    field = [r for r in rows if r["field"]]
    return {
        "data": data, "images": len(rows), "field_images": len(field), "skipped": skipped,
        "old": old, "new": new, "classes": classes,
        "unknown_to_old": [c for c in classes if c not in old["labels"]],
        "top1": {"old": _top1(rows, "old"), "new": _top1(rows, "new")},
        "field_top1": ({"old": _top1(field, "old"), "new": _top1(field, "new")}
                       if field else None),
        "per_class": {c: {"images": len(sub), "old": _top1(sub, "old"),
                          "new": _top1(sub, "new")}
                      for c in classes for sub in [[r for r in rows if r["label"] == c]]},
        "agreement": round(1 - len(differ) / len(rows), 4),
        "differ": {"images": len(differ),
                   "new_right": sum(r["new"] == r["label"] for r in differ),
                   "old_right": sum(r["old"] == r["label"] for r in differ),
                   "both_wrong": sum(r["label"] not in (r["old"], r["new"]) for r in differ)},
        "rows": rows,
    }


def _pct(v: float | None) -> str:
    return "   -  " if v is None else f"{100 * v:6.1f}"


def _change(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{100 * (b - a):+6.1f}"


def format_table(r: dict[str, Any]) -> str:
    """The comparison as a plain-text table (top-1 in %, change in points)."""
    width = max([len(c) for c in r["classes"]] + [12]) + 8
    out = [f"OLD {r['old']['model']} ({r['old']['sha256'][:12]})",
           f"NEW {r['new']['model']} ({r['new']['sha256'][:12]})",
           f"{r['images']} images in {r['data']} ({r['field_images']} field)", "",
           f"{'':{width}}  OLD %   NEW %  change"]

    def line(name: str, cell: dict) -> None:
        out.append(f"{name:{width}} {_pct(cell['old'])}  {_pct(cell['new'])}  "
                   f"{_change(cell['old'], cell['new'])}")

    line("top-1", r["top1"])
    if r["field_top1"]:
        line("field top-1", r["field_top1"])
    for c, cell in r["per_class"].items():
        line(f"  {c} ({cell['images']})", cell)
    d = r["differ"]
    out += ["", f"agreement {100 * r['agreement']:.1f}% ({r['images'] - d['images']} of "
                f"{r['images']})",
            f"they differ on {d['images']}: NEW right {d['new_right']}, OLD right "
            f"{d['old_right']}, both wrong {d['both_wrong']}"]
    if r["unknown_to_old"]:
        out.append(f"unknown to OLD (its answers there count as wrong): "
                   f"{', '.join(r['unknown_to_old'])}")
    if r["skipped"]:
        out.append(f"skipped {len(r['skipped'])} unreadable image(s); first: "
                   f"{r['skipped'][0]}")
    return "\n".join(out)


def differences_csv(r: dict[str, Any]) -> str:
    """One row per image where the two models differ."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "label", "field", "old", "old_score", "new", "new_score"])
    for row in r["rows"]:
        if row["old"] != row["new"]:
            w.writerow([row["image"], row["label"], int(row["field"]), row["old"],
                        row["old_score"], row["new"], row["new_score"]])
    return buf.getvalue()


def run(old: str, new: str, data: str, json_out: str | None = None,
        out_dir: str | None = None) -> dict[str, Any]:
    """``compare OLD NEW --data``: prints the table, writes the JSON (``--json``) and
    ``compare.json``, ``compare.md`` and ``differences.csv`` (``--out``), atomically."""
    from edge_runtime.fileio import write_json, write_text

    result = compare(old, new, data)
    table = format_table(result)
    print(table)
    if json_out:
        write_json(json_out, result)
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "compare.json", result)
        write_text(out / "compare.md", f"# Model comparison\n\n```\n{table}\n```\n")
        write_text(out / "differences.csv", differences_csv(result))
    if result["skipped"]:
        print(f"warning: {len(result['skipped'])} unreadable image(s) skipped; first: "
              f"{result['skipped'][0]}", file=sys.stderr)
    return result
