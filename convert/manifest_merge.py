"""manifest.json after a convert of some variants: the others' entries are kept, not lost.

``convert RUN --variants float32,onnx`` on a run that already has ``model_int8.tflite``
must not drop the int8 entry (its sha256 is how ``selftest`` and ``deploy`` check the file).
An old entry is kept when its file is still there and it was made from the same source
model; an entry whose file is gone, or that was made from another version of the source,
is left out, and said.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_previous(path: Path) -> dict[str, Any] | None:
    """The manifest.json a previous convert wrote, or None (absent or unreadable: then
    there is nothing to keep)."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def merge_variants(previous: dict[str, Any] | None, variants: dict[str, dict],
                   drift: dict[str, Any] | None, export_dir: Path,
                   source_sha256: str | None = None
                   ) -> tuple[dict[str, dict], dict[str, Any] | None, list[str]]:
    """Adds the previous manifest's other variants to this convert's.

    Args:
        previous: the manifest.json found before this convert (see :func:`read_previous`).
        variants: this convert's ``variants`` entries (name -> {"file", "sha256"}).
        drift: this convert's ``drift_baseline`` (its ``models`` keyed by file name).
        export_dir: where the model files are.
        source_sha256: the sha256 of this convert's source model (its provenance).

    Returns:
        (variants, drift baseline, notes): the merged entries and one line per entry left
        out.
    """
    old = (previous or {}).get("variants")
    if not isinstance(old, dict):
        return variants, drift, []
    old_source = ((previous or {}).get("provenance") or {}).get("source_sha256")
    merged, kept_files, notes = dict(variants), [], []
    for name, entry in old.items():
        if name in variants or not isinstance(entry, dict) or not entry.get("file"):
            continue
        file = str(entry["file"])
        if Path(file).name != file or not (export_dir / file).is_file():
            notes.append(f"removed {name} from manifest.json: {file} is gone")
            continue
        if old_source and source_sha256 and old_source != source_sha256:
            notes.append(f"left {name} ({file}) out of manifest.json: it was made from "
                         f"another version of the source model (convert it again with "
                         f"--variants {name})")
            continue
        merged[name] = entry
        kept_files.append(file)
    return merged, _merge_drift(previous, drift, kept_files), notes


def _merge_drift(previous: dict[str, Any] | None, drift: dict[str, Any] | None,
                 kept_files: list[str]) -> dict[str, Any] | None:
    """This convert's drift baseline plus the kept files' entries (their Edge TPU builds'
    too) from the previous one."""
    old = (previous or {}).get("drift_baseline")
    if not isinstance(old, dict) or not isinstance(old.get("models"), dict) or not kept_files:
        return drift
    names = set(kept_files) | {f"{Path(f).stem}_edgetpu.tflite" for f in kept_files}
    carried = {k: v for k, v in old["models"].items() if k in names}
    if not carried:
        return drift
    if drift is None:
        return {**old, "models": carried}
    return {**drift, "models": {**carried, **drift.get("models", {})}}


__all__ = ["merge_variants", "read_previous"]
