"""Reads label files in the two common formats: one per line, or ``index label``."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import EdgekitError

_INDEXED = re.compile(r"^\s*(\d+)[\s:,]+(\S.*?)\s*$")


def parse_labels(text: str) -> dict[int, str]:
    """Parses label text into ``{index: label}``.

    Two formats are accepted: one label per line (line number = class index, as in
    Coral's ``imagenet_labels.txt``), or ``<index> <label>`` on every non-empty line (as
    in pycoral's ``read_label_file``). The indexed format is chosen only when every
    non-empty line has it, so a plain label that happens to start with a digit is safe.

    Args:
        text: the file's contents.

    Returns:
        A mapping from class index to label.
    """
    lines = text.splitlines()
    non_empty = [ln for ln in lines if ln.strip()]
    matches = [_INDEXED.match(ln) for ln in non_empty]
    if non_empty and all(matches):
        return {int(m.group(1)): m.group(2) for m in matches}  # type: ignore[union-attr]
    # Plain format: keep blank lines out but keep line numbers as indices only when the
    # file has no blank lines in the middle (trailing ones are harmless).
    while lines and not lines[-1].strip():
        lines.pop()
    return {i: ln.strip() for i, ln in enumerate(lines)}


def read_labels(path: str | Path) -> dict[int, str]:
    """Reads a label file; see :func:`parse_labels`.

    Raises:
        EdgekitError: the file is missing or not text.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgekitError(f"label file not found: {path}") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as e:
        raise EdgekitError(f"cannot read label file {path}: {e}") from None
    labels = parse_labels(text)
    if not labels:
        raise EdgekitError(f"label file is empty: {path}")
    return labels


def write_labels(path: str | Path, names: list[str]) -> None:
    """Writes one label per line (line number = class index)."""
    Path(path).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
