"""Field images in a training dataset, and their own held-out split.

A field image is one a device kept and a person labelled: ``DATASET/<class>/<name>.jpg``
with its sidecar ``<name>.json`` beside it (a JSON object with ``device`` and
``model_sha256``). Neighbouring frames of a camera are near copies, so a random split
would put a frame in the test split and its twin in training. Field images are therefore
grouped by device and time block (``source_time_s``, the source's own clock, or else
``time``), and whole groups are held out: about ``test_fraction`` of the field images,
at least one group, every class that can be covered, fixed by the seed. The rest join
training and validation (validation also by whole groups when there are enough).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from edge_runtime.preprocess import IMAGE_SUFFIXES

SIDECAR_KEYS = ("device", "model_sha256")  # what makes a JSON beside an image a sidecar


def is_sidecar(path: Path) -> bool:
    """True for ``NAME.json`` with an image ``NAME.<image suffix>`` beside it."""
    return path.suffix.lower() == ".json" and any(
        path.with_suffix(s).exists() or path.with_suffix(s.upper()).exists()
        for s in IMAGE_SUFFIXES)


def read_sidecar(image: Path) -> dict | None:
    """The field sidecar of ``image`` (``NAME.json`` beside it), or None when it has none.

    A JSON file there that is not a sidecar (no ``device`` and ``model_sha256``) makes no
    field image; an unreadable one is named in one warning line and ignored.
    """
    path = image.with_suffix(".json")
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"warning: {path}: unreadable sidecar ({type(e).__name__}); its image is "
              "treated as an ordinary one", file=sys.stderr)
        return None
    if not isinstance(d, dict) or not all(k in d for k in SIDECAR_KEYS):
        return None
    return d


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def group_of(sidecar: dict, block_seconds: float) -> str:
    """The device/time group of a field image, e.g. ``cam1/source:12``.

    The source's own clock comes first: a replayed file runs faster than the wall clock,
    and a live camera's clock follows it anyway. Frames with no usable time share one
    group per device (held out or kept together, never split).
    """
    device = str(sidecar.get("device"))
    t = _number(sidecar.get("source_time_s"))
    if t is not None:
        return f"{device}/source:{math.floor(t / block_seconds)}"
    stamp = sidecar.get("time")
    if isinstance(stamp, str):
        try:
            epoch = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            return f"{device}/time:{math.floor(epoch / block_seconds)}"
        except ValueError:
            pass
    return f"{device}/undated"


@dataclass(frozen=True)
class FieldSplit:
    """Field images (relative path, class index) by split, and the held-out groups."""

    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]
    groups: int
    test_groups: list[str]

    def report(self, block_seconds: float) -> dict:
        """The JSON record (data_report.json, checkpoints/data.json)."""
        return {"images": len(self.train) + len(self.val) + len(self.test),
                "groups": self.groups, "block_seconds": block_seconds,
                "test_groups": self.test_groups,
                "split_sizes": {"train": len(self.train), "val": len(self.val),
                                "test": len(self.test)},
                "test": [[p, c] for p, c in self.test]}


def _hold_out(groups: dict[str, list[tuple[str, int]]], fraction: float,
              rng: np.random.Generator, min_groups: int, cover: bool) -> set[str]:
    """Whole groups holding about ``fraction`` of the images, never all of them: with
    ``cover``, first a group for each class not yet covered (classes in a seeded order;
    one that fits in the target if any, else the smallest, up to half of the images),
    then more groups in a seeded order, skipping one that would overshoot the target by
    more than it fills."""
    names = sorted(groups)
    if len(names) < 2:
        return set(names) if min_groups else set()
    total = sum(len(v) for v in groups.values())
    target = max(fraction * total, 1)
    order = [names[i] for i in rng.permutation(len(names))]
    has = {g: {c for _, c in groups[g]} for g in names}
    held: set[str] = set()
    size = 0
    classes = sorted(set().union(*has.values()))
    for c in (classes[i] for i in rng.permutation(len(classes))) if cover else ():
        cands = [g for g in order if g not in held and c in has[g]]
        if any(c in has[g] for g in held) or not cands or len(held) >= len(names) - 1:
            continue
        fit = [g for g in cands if size + len(groups[g]) <= target]
        g = fit[0] if fit else min(cands, key=lambda g: len(groups[g]))
        if fit or size + len(groups[g]) <= total / 2:
            held.add(g)
            size += len(groups[g])
    for g in order:
        enough = len(held) >= min_groups
        if (size >= target and enough) or len(held) >= len(names) - 1:
            break
        if g in held or (enough and size + len(groups[g]) - target > target - size):
            continue
        held.add(g)
        size += len(groups[g])
    return held


def field_split(items: list[tuple[str, int, dict]], test_fraction: float,
                val_fraction: float, block_seconds: float, seed: int) -> FieldSplit:
    """Splits field images by device/time group (see the module docstring).

    Args:
        items: (path relative to the data root, class index, sidecar) per field image.
        test_fraction: about this share of the field images is held out (whole groups,
            at least one).
        val_fraction: about this share goes to validation (whole groups, when at least
            three groups remain; else all remaining images train).
        block_seconds: length of a time block.
        seed: the same seed and files give the same split.
    """
    groups: dict[str, list[tuple[str, int]]] = {}
    for rel, ci, sidecar in sorted(items, key=lambda t: t[0]):
        groups.setdefault(group_of(sidecar, block_seconds), []).append((rel, ci))
    rng = np.random.default_rng([seed, 0xF1E1D])
    test = _hold_out(groups, test_fraction, rng, min_groups=1, cover=True)
    rest = {g: v for g, v in groups.items() if g not in test}
    val = _hold_out(rest, val_fraction / (1 - test_fraction), rng, 0, cover=False) \
        if len(rest) >= 3 else set()

    def pick(chosen) -> list[tuple[str, int]]:
        return [x for g in sorted(chosen) for x in groups[g]]

    return FieldSplit(pick(set(rest) - val), pick(val), pick(test), len(groups), sorted(test))


def field_test_items(report: dict) -> list[tuple[str, int]]:
    """The field test split recorded in a data report (empty when it has none)."""
    field = report.get("field") or {}
    return [(str(p), int(c)) for p, c in field.get("test", [])]


def evaluate_field(model, root: Path, report: dict, classes: list[str], cfg,
                   ) -> dict | None:
    """Top-1 etc. of ``model`` on the recorded field test split (None without one)."""
    from .data import load_arrays
    from .report import evaluate_predictions

    items = field_test_items(report)
    if not items:
        return None
    x, y, skipped = load_arrays(root, items, (cfg.img_size, cfg.img_size), cfg.resize,
                                cfg.interpolation)
    for line in skipped:
        print(f"warning: skipped {line}", file=sys.stderr)
    if not len(x):
        return None
    probs = model.predict(x.astype(np.float32), batch_size=cfg.batch_size, verbose=0)
    out = evaluate_predictions(probs, y, classes)
    out["groups"] = report["field"].get("test_groups", [])
    return out


def field_record(report: dict) -> dict:
    """What the manifest records of the field split: ``{"field_test": [[path, class],
    ...], "field_test_groups": [...]}``, or {} without field images."""
    field = report.get("field")
    if not field:
        return {}
    return {"field_test": field["test"], "field_test_groups": field["test_groups"]}


def summary(test: dict, field: dict | None) -> str:
    """``metrics_summary.txt``: top-1 on the original test split, then on the field one."""
    text = f"test top1 {test['top1']:.4f} on {test['count']} held-out images\n"
    if field:
        text += (f"field test top1 {field['top1']:.4f} on {field['count']} held-out field "
                 f"images ({len(field['groups'])} device/time groups)\n")
    return text
