"""Scores a camera-loop log (JSON lines) against the true label of each video frame.

Usage:
    python -m benchmarks video-check CAMERA.jsonl FRAME_LABELS.txt
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edge_runtime.errors import EXIT_ERROR, EXIT_OK, EdgekitError


def video_accuracy(log: str | Path, truth: str | Path) -> dict:
    """Share of frames whose logged label equals the frame's true label.

    Raises:
        EdgekitError: unreadable files or a log line that is not JSON.
    """
    try:
        labels = Path(truth).read_text(encoding="utf-8").split()
        lines = Path(log).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise EdgekitError(f"cannot read {e.filename}: {e.strerror}") from None
    hits = n = 0
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise EdgekitError(f"{log}:{i}: not a JSON line") from None
        frame = rec.get("frame")
        if isinstance(frame, int) and 0 <= frame < len(labels):
            hits += int(rec.get("label") == labels[frame])
            n += 1
    if n == 0:
        raise EdgekitError(f"no frames of {log} match the labels in {truth}")
    return {"frames": n, "correct": hits, "accuracy": hits / n}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m benchmarks video-check CAMERA.jsonl FRAME_LABELS.txt",
              file=sys.stderr)
        return EXIT_ERROR
    try:
        r = video_accuracy(*argv)
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(f"camera loop: {r['correct']}/{r['frames']} frames labelled correctly "
          f"({100 * r['accuracy']:.1f}%)")
    return EXIT_OK
