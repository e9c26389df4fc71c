"""The manifest embedded in the ``.tflite`` file itself, so one copied file describes itself.

Stored as a named entry in the model FlatBuffer's ``metadata`` list (the mechanism
TFLite uses for ``min_runtime_version`` and TFLite Support metadata), read and written
with the schema module :func:`edge_runtime.tflite.find_schema` finds (LiteRT's, else
TensorFlow's on a conversion desktop), never a hand-written parser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .tflite import IDENTIFIER, find_schema, schema

METADATA_NAME = "edgekit_manifest"


def _schema() -> Any:
    """The schema module or None; kept for callers of the old name (use
    :func:`edge_runtime.tflite.schema`)."""
    return find_schema()


def read_entry(model: str | Path | bytes, name: str) -> bytes | None:
    """The bytes of the metadata entry ``name`` of a ``.tflite`` model; None when it has
    none, the file is damaged, or no schema module is installed."""
    found = find_schema()
    if found is None:
        return None
    buf = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    try:
        m = found.Model.GetRootAs(buf, 0)
        for i in range(m.MetadataLength()):
            md = m.Metadata(i)
            if md.Name() == name.encode():
                return bytes(m.Buffers(md.Buffer()).DataAsNumpy())
    except Exception:  # noqa: BLE001 - a damaged FlatBuffer: no readable entry
        return None
    return None


def embed_entry(model: bytes, name: str, data: bytes) -> bytes:
    """Returns ``model`` with ``data`` stored as its metadata entry ``name`` (an existing
    entry of that name is replaced).

    Raises:
        EdgekitError: no TFLite schema module is installed.
    """
    import flatbuffers
    import numpy as np

    s = schema()
    m = s.ModelT.InitFromPackedBuf(model, 0)
    old = [md for md in (m.metadata or []) if md.name in (name, name.encode())]
    m.metadata = [md for md in (m.metadata or []) if md not in old]
    used = {t.buffer for g in m.subgraphs or [] for t in g.tensors or []} | {
        md.buffer for md in m.metadata}
    for md in old:  # the replaced entry's bytes would otherwise stay in the file, unnamed
        if md.buffer not in used and 0 <= md.buffer < len(m.buffers):
            m.buffers[md.buffer].data = None
    buffer = s.BufferT()
    buffer.data = np.frombuffer(data, np.uint8)
    m.buffers.append(buffer)
    entry = s.MetadataT()
    entry.name = name
    entry.buffer = len(m.buffers) - 1
    m.metadata.append(entry)
    builder = flatbuffers.Builder(len(model) + len(data) + 1024)
    builder.Finish(m.Pack(builder), file_identifier=IDENTIFIER)
    return bytes(builder.Output())


def read_embedded_manifest(model: str | Path | bytes) -> dict[str, Any] | None:
    """Returns the manifest embedded in a model, or None when it has none (or unreadable)."""
    data = read_entry(model, METADATA_NAME)
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):  # a damaged entry means "no embedded manifest"
        return None


def embed_manifest(model: bytes, manifest: dict[str, Any]) -> bytes:
    """Returns ``model`` with ``manifest`` stored as its ``edgekit_manifest`` metadata.

    An existing entry is replaced.

    Raises:
        EdgekitError: no TFLite schema module is installed.
    """
    return embed_entry(model, METADATA_NAME, json.dumps(manifest, sort_keys=True).encode())
