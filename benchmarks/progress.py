"""A progress bar on stderr: tqdm when it is installed (it comes with ai-edge-litert), else a
plain one-line bar. Imported lazily so the measuring part needs nothing extra."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


def _plain(items: Iterable[T], total: int, desc: str, stream: TextIO) -> Iterator[T]:
    """A ``desc [#####.....] 30/60`` bar redrawn at most ten times a second."""
    width, last, n = 30, 0.0, 0

    def draw(final: bool = False) -> None:
        """Redraws the bar (with a newline at the end)."""
        filled = int(width * n / total) if total else width
        end = "\n" if final else ""
        stream.write(f"\r{desc} [{'#' * filled}{'.' * (width - filled)}] {n}/{total}{end}")
        stream.flush()

    try:
        for item in items:
            yield item
            n += 1
            now = time.monotonic()
            if now - last >= 0.1:
                draw()
                last = now
    finally:
        draw(final=True)


def progress(items: Iterable[T], total: int, desc: str, stream: TextIO | None = None,
             use_tqdm: bool = True) -> Iterator[T]:
    """Iterates ``items`` while drawing a progress bar on ``stream`` (stderr by default).

    Args:
        items: what to iterate.
        total: how many items there are.
        desc: the label in front of the bar.
        stream: where to draw (stderr).
        use_tqdm: use tqdm when it can be imported.
    """
    stream = stream or sys.stderr
    if use_tqdm:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, total=total, desc=desc, file=stream, leave=True,
                            dynamic_ncols=True, mininterval=0.1)
            return
    yield from _plain(items, total, desc, stream)
