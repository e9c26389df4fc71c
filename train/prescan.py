"""Checks every image before training: unusable files are listed and skipped, never fatal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_runtime.imageio import ImageError, max_pixels, probe_file

MIN_SIDE = 16


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


def check_file(path: Path, root: Path, limit: int | None = None
               ) -> tuple[str | None, str | None]:
    """Returns (problem, note): ``problem`` makes the file unusable; ``note`` records a
    conversion (CMYK, 16-bit, grayscale, palette) that loading will do.

    The size comes from the runtime's header reader (:mod:`edge_runtime.imageio`), the
    same check that refuses the file at decode time, with the same ``limit`` (default:
    ``EDGEKIT_MAX_IMAGE_PIXELS`` or 50 Mpx); Pillow only reads the header for the mode.
    """
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
        info = probe_file(real, limit)
    except ImageError as e:
        return ("not an image" if e.kind == "unsupported" else e.reason), None
    w, h = info.width, info.height
    if min(w, h) < MIN_SIDE:
        return f"tiny image {w}x{h} (< {MIN_SIDE} px)", None
    # The size is checked above, against our limit: Pillow's own bomb check (a warning,
    # an error at twice its limit) is off while it reads the header, then restored.
    pil_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(real) as im:
            fmt, mode = im.format, im.mode
    except (UnidentifiedImageError, OSError, ValueError):
        return "not an image", None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
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

    Raises:
        ImageError: ``EDGEKIT_MAX_IMAGE_PIXELS`` is set but not a positive number.
    """
    limit = max_pixels()  # a bad EDGEKIT_MAX_IMAGE_PIXELS is one error, not one per file
    good: dict[str, list[Path]] = {}
    bad: list[FileIssue] = []
    notes: list[FileIssue] = []
    for cls, paths in files.items():
        good[cls] = []
        for p in paths:
            problem, note = check_file(p, root, limit)
            rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)
            if problem:
                bad.append(FileIssue(rel, problem))
                continue
            if note:
                notes.append(FileIssue(rel, note))
            good[cls].append(p)
    return good, bad, notes
