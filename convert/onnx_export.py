"""The ``onnx`` variant: the float model as ONNX, for ONNX Runtime (TensorRT/CUDA on a Jetson).

The same fixed-shape SavedModel the TFLite variants come from (one [1, H, W, 3] float32
image, normalisation inside the model) goes through tf2onnx's converter in this process;
the manifest and the self-test's golden cases are stored in the ONNX ``metadata_props``.
Only float32: a TFLite int8 graph converted to QDQ ONNX flipped 1 of 60 held-out images in
the team's check, so the GPU path is the float model with TensorRT FP16.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import atomic_path

OPSET = 17


def export_onnx(saved_model: Path, size: tuple[int, int], out_path: Path,
                opset: int = OPSET) -> Path:
    """Converts a SavedModel (signature ``serve`` or ``serving_default``) to ONNX.

    Args:
        saved_model: the folder written by :func:`convert.export.saved_model_for`.
        size: (height, width) of the image input.
        out_path: the ``.onnx`` file to write (atomically).
        opset: ONNX opset.

    Raises:
        EdgekitError: tf2onnx missing, or the conversion failed (first line of the error).
    """
    try:
        import tf2onnx
    except ImportError:
        raise EdgekitError("the onnx variant needs tf2onnx: pip install -e '.[train]' in the "
                           "edgekit checkout (or pip install tf2onnx onnx)") from None
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model))
    sigs = loaded.signatures
    fn = sigs["serve"] if "serve" in sigs else sigs["serving_default"]
    spec = tf.TensorSpec([1, size[0], size[1], 3], tf.float32, name="image")
    # tf2onnx logs every rewrite pass at INFO and prints to stdout: keep the terminal quiet.
    tf2onnx_log = logging.getLogger("tf2onnx")
    level = tf2onnx_log.level
    tf2onnx_log.setLevel(logging.ERROR)
    try:
        with atomic_path(out_path) as tmp, contextlib.redirect_stdout(io.StringIO()):
            tf2onnx.convert.from_function(tf.function(fn), input_signature=[spec],
                                          opset=opset, output_path=str(tmp))
    except Exception as e:  # tf2onnx raises many types; one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgekitError(f"ONNX conversion failed: {first[:300]}") from None
    finally:
        tf2onnx_log.setLevel(level)
    return out_path


def embed(out_path: Path, manifest: dict[str, Any], selftest: dict[str, Any] | None = None
          ) -> None:
    """Stores the manifest (and golden cases) in the ONNX model's metadata."""
    from edge_runtime.onnx_backend import METADATA_KEY, SELFTEST_KEY, embed_metadata

    entries = {METADATA_KEY: json.dumps(manifest, sort_keys=True)}
    if selftest is not None:
        entries[SELFTEST_KEY] = json.dumps(selftest, sort_keys=True)
    embed_metadata(out_path, entries)
