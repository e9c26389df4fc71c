"""Golden cases for every exported model: held-out images picked round-robin by class, each
model run on them by the runtime, the cases stored inside the model (see
:mod:`edge_runtime.selftest`) so that a device can prove the model before serving it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import write_bytes

from .source import Source


def selftest_images(src: Source, limit: int = 24) -> list[tuple[str, np.ndarray]]:
    """Held-out images (BGR, as stored) to choose golden cases from, round-robin by class."""
    from edge_runtime.preprocess import load_image

    if src.split is None or src.data_root is None:
        return []
    by_class: dict[int, list[str]] = {}
    for rel, ci in src.split.test:
        by_class.setdefault(ci, []).append(rel)
    picked: list[str] = []
    while len(picked) < limit and any(by_class.values()):
        for ci in sorted(by_class):
            if by_class[ci] and len(picked) < limit:
                picked.append(by_class[ci].pop(0))
    out = []
    for rel in picked:
        try:
            out.append((rel, np.ascontiguousarray(load_image(src.data_root / rel)[..., ::-1])))
        except EdgekitError:
            continue  # the pre-scan already reported it; a golden case needs a good image
    return out


def add_selftests(models: dict[str, Path], images: list[tuple[str, np.ndarray]], work: Path
                  ) -> dict[str, int]:
    """Stores golden cases (see edge_runtime.selftest) in every model, made by running each
    model with the runtime on a copy in ``work`` (no stale manifest.json beside it).

    Returns:
        variant -> number of golden cases stored.
    """
    import shutil

    from edge_runtime.classify import Classifier
    from edge_runtime.selftest import embed_cases, make_cases

    counts: dict[str, int] = {}
    if not images:
        return counts
    (work / "selftest").mkdir(exist_ok=True)
    for name, path in models.items():
        copy = work / "selftest" / path.name
        shutil.copyfile(path, copy)
        try:
            cases = make_cases(Classifier(copy), images)
        except EdgekitError as e:  # e.g. an ONNX model without onnxruntime here
            print(f"{name}: no self-test cases ({e})", file=sys.stderr)
            continue
        if not cases["cases"]:
            print(f"{name}: no self-test cases (no held-out image with a decisive top-1)",
                  file=sys.stderr)
            continue
        if path.suffix == ".onnx":
            from edge_runtime.onnx_backend import read_embedded_manifest

            from .onnx_export import embed

            embed(path, read_embedded_manifest(path) or {}, cases)
        else:
            write_bytes(path, embed_cases(path.read_bytes(), cases))
        counts[name] = len(cases["cases"])
    return counts
