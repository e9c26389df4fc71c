"""The manifest embedded in the ``.tflite`` file itself, so one copied file describes itself.

Stored as a named entry in the model FlatBuffer's ``metadata`` list (the mechanism
TFLite uses for ``min_runtime_version`` and TFLite Support metadata), read and written
with the schema module that ships with LiteRT, never a hand-written parser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METADATA_NAME = "edgekit_manifest"


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema  # type: ignore
    except ImportError:
        try:
            from tflite_runtime import schema_py_generated as schema  # type: ignore
        except ImportError:
            return None
    return schema


def read_embedded_manifest(model: str | Path | bytes) -> dict[str, Any] | None:
    """Returns the manifest embedded in a model, or None when it has none (or unreadable)."""
    schema = _schema()
    if schema is None:
        return None
    buf = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    try:
        m = schema.Model.GetRootAs(buf, 0)
        for i in range(m.MetadataLength()):
            md = m.Metadata(i)
            if md.Name() == METADATA_NAME.encode():
                data = m.Buffers(md.Buffer()).DataAsNumpy()
                return json.loads(bytes(data).decode("utf-8"))
    except Exception:  # noqa: BLE001 - a damaged entry means "no embedded manifest"
        return None
    return None


def embed_manifest(model: bytes, manifest: dict[str, Any]) -> bytes:
    """Returns ``model`` with ``manifest`` stored as its ``edgekit_manifest`` metadata.

    An existing entry is replaced. Raises RuntimeError when no schema module is available.
    """
    import flatbuffers
    import numpy as np

    schema = _schema()
    if schema is None:
        raise RuntimeError("no TFLite schema module (install ai-edge-litert)")
    m = schema.ModelT.InitFromPackedBuf(model, 0)
    m.metadata = [md for md in (m.metadata or []) if md.name not in
                  (METADATA_NAME, METADATA_NAME.encode())]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(manifest, sort_keys=True).encode(), np.uint8)
    m.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(m.buffers) - 1
    m.metadata.append(entry)
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
