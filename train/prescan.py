"""Checks every image before training: unusable files are listed and skipped, never fatal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIN_SIDE = 16
MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb threshold (about 0.25 GB as RGBA)


@dataclass(frozen=True)
class FileIssue:
    """One file and what is wrong with it (or what was converted)."""

    path: str
    reason: str


def _truncated(path: Path, fmt: str | None) -> bool:
    """JPEG must end with the EOI marker, PNG with the IEND chunk; cut-off files do not."""
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - 16))
        tail = f.read()
    if fmt == "JPEG":
        return b"\xff\xd9" not in tail
    if fmt == "PNG":
        return b"IEND" not in tail
    return False


def check_file(path: Path, root: Path) -> tuple[str | None, str | None]:
    """Returns (problem, note): ``problem`` makes the file unusable; ``note`` records a
    conversion (CMYK, 16-bit, grayscale, palette) that loading will do."""
    from PIL import Image, UnidentifiedImageError

    try:
        real = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        return "broken link", None
    if path.is_symlink() and not real.is_relative_to(root.resolve()):
        return f"link leads outside the data folder ({real})", None
    if real.stat().st_size == 0:
        return "zero-byte file", None
    try:
        with Image.open(real) as im:
            w, h = im.size
            fmt, mode = im.format, im.mode
    except Image.DecompressionBombError:
        return f"decompression-bomb sized image (> {MAX_PIXELS} pixels)", None
    except (UnidentifiedImageError, OSError, ValueError):
        return "not an image", None
    if w * h > MAX_PIXELS:
        return f"huge image {w}x{h} (> {MAX_PIXELS} pixels)", None
    if min(w, h) < MIN_SIDE:
        return f"tiny image {w}x{h} (< {MIN_SIDE} px)", None
    if _truncated(real, fmt):
        return f"truncated {fmt} file", None
    note = {"CMYK": "CMYK converted to RGB", "L": "grayscale converted to RGB",
            "I;16": "16-bit converted to 8-bit", "I": "32-bit integer converted to 8-bit",
            "P": "palette converted to RGB", "LA": "grayscale+alpha converted to RGB",
            "RGBA": "alpha dropped"}.get(mode)
    if mode.startswith("I;16"):
        note = "16-bit converted to 8-bit"
    return None, note


def prescan(root: Path, files: dict[str, list[Path]]) -> tuple[dict[str, list[Path]],
                                                              list[FileIssue], list[FileIssue]]:
    """Splits each class's files into usable ones, rejected ones and converted ones.

    Returns:
        (usable files by class, rejected [path, reason], converted [path, note]).
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    good: dict[str, list[Path]] = {}
    bad: list[FileIssue] = []
    notes: list[FileIssue] = []
    for cls, paths in files.items():
        good[cls] = []
        for p in paths:
            problem, note = check_file(p, root)
            rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)
            if problem:
                bad.append(FileIssue(rel, problem))
                continue
            if note:
                notes.append(FileIssue(rel, note))
            good[cls].append(p)
    return good, bad, notes
