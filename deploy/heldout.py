"""The small held-out image set a release carries, so ``bench-fleet`` measures accuracy on
the device too.

Taken from the training run the model was exported from (``RUN/export/M.tflite``: a few
dozen images of the run's test split, round-robin over the classes), or from a folder with
one subfolder per class named as the model's labels (``deploy --heldout FOLDER``). Written
as ``release/heldout/<class index>/<name>`` plus ``heldout/index.json``: ``{"images":
[[relpath, class index], ...], "classes": [...], "source": ...}``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edge_runtime.errors import EdgekitError

HELDOUT_MAX = 48  # images: accuracy to about +-7 points, a few MB in the bundle


def _labels(model: Path) -> list[str]:
    """The model's labels from the manifest or labels.txt beside it ([] when neither)."""
    from edge_runtime.manifest import manifest_beside

    m = manifest_beside(model)
    if m is not None:
        return list(m.labels)
    txt = model.parent / "labels.txt"
    if txt.is_file():
        return [ln.strip() for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return []


def _round_robin(items: list[tuple[Path, int]], limit: int) -> list[tuple[Path, int]]:
    """Up to ``limit`` items taking one of each class in turn (every class present)."""
    by_class: dict[int, list[Path]] = {}
    for path, ci in items:
        by_class.setdefault(ci, []).append(path)
    out: list[tuple[Path, int]] = []
    depth = 0
    while len(out) < limit and any(depth < len(v) for v in by_class.values()):
        for ci in sorted(by_class):
            if depth < len(by_class[ci]) and len(out) < limit:
                out.append((by_class[ci][depth], ci))
        depth += 1
    return out


def from_run(model: Path, limit: int = HELDOUT_MAX) -> tuple[list[tuple[Path, int]], str] | None:
    """The test split of the run ``model`` was exported from (``RUN/export/``), or None
    when the model does not sit in a run's export folder."""
    from edge_runtime.runs import load_run

    run = model.resolve().parent.parent
    if model.resolve().parent.name != "export" or not (run / "manifest.json").is_file():
        return None
    try:
        _manifest, split, root = load_run(run)
    except EdgekitError:
        return None  # a run whose data moved: the release goes without a held-out set
    return _round_robin([(root / rel, ci) for rel, ci in split.test], limit), str(run)


def from_folder(folder: Path, model: Path,
                limit: int = HELDOUT_MAX) -> tuple[list[tuple[Path, int]], str]:
    """Images of ``folder/<label>/`` with the index of ``<label>`` among the model's labels.

    Raises:
        EdgekitError: not a folder, a subfolder that is not one of the model's labels, no
            labels beside the model, no image.
    """
    from edge_runtime.preprocess import list_images

    if not folder.is_dir():
        raise EdgekitError(f"--heldout {folder}: not a folder (one subfolder per class)")
    labels = _labels(model)
    if not labels:
        raise EdgekitError(f"--heldout needs the model's labels (manifest.json or labels.txt "
                           f"beside {model})")
    items = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in labels:
            raise EdgekitError(f"--heldout {folder}: subfolder {sub.name!r} is not one of the "
                               f"model's labels [{model}]")
        items += [(p, labels.index(sub.name)) for p in list_images(sub)]
    if not items:
        raise EdgekitError(f"--heldout {folder}: no images in its class subfolders")
    return _round_robin(items, limit), str(folder.resolve())


def write(release: Path, model: Path, folder: Path | None,
          limit: int = HELDOUT_MAX) -> list[tuple[Path, str]]:
    """Copies the held-out set into ``release/heldout/``; returns (file, name in the
    release) of what was written, for the bundle's hash ([] when there is no set)."""
    picked = from_folder(folder, model, limit) if folder is not None else from_run(model, limit)
    if not picked or not picked[0]:
        return []
    items, source = picked
    dest = release / "heldout"
    index, written = [], []
    for n, (src, ci) in enumerate(items):
        if not src.is_file():
            continue  # a test image deleted since training: the set is a sample anyway
        rel = f"{ci}/{n:03d}-{src.name}"
        (dest / str(ci)).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
        index.append([rel, ci])
        written.append((dest / rel, f"heldout/{rel}"))
    if not index:
        return []
    (dest / "index.json").write_text(json.dumps(
        {"images": index, "classes": _labels(model), "source": source}, indent=1) + "\n")
    return written + [(dest / "index.json", "heldout/index.json")]
