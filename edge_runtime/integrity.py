"""Is this file the model it claims to be? What a file is, and a digest of a model's tensors.

``convert`` stores a SHA-256 of the model's *tensor content* in the model's own metadata
(entry ``edgekit_digest``), so a copy deployed without its ``manifest.json`` still checks
itself. The digest covers what inference depends on: every tensor's type, shape,
quantization and the bytes of its buffer, and the operator graph (operator names, inputs,
outputs). It leaves out the metadata entries (the digest's own, the manifest, the golden
cases, the drift baseline, each written at a different step of convert) and the byte
layout, which changes every time an entry is added. Operator options are not covered: their
fields grow with each schema release, and the desktop and the device may have different ones.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgekitError

DIGEST_NAME = "edgekit_digest"
DIGEST_VERSION = 1
_MAGIC = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG\r\n\x1a\n", "a PNG image"),
          (b"GIF8", "a GIF image"), (b"BM", "a BMP image"), (b"RIFF", "a RIFF file (WebP/AVI)"),
          (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"),
          (b"\x7fELF", "an ELF executable"))


def describe_non_model(data: bytes) -> str | None:
    """What ``data`` is when it is plainly not a model file ("empty (0 bytes)", "a JPEG
    image", "a text file"), else None (a TFLite or ONNX model, or unknown binary)."""
    if not data:
        return "empty (0 bytes)"
    if len(data) >= 8 and data[4:8] == b"TFL3":
        return None
    if data[:4] == b"PK\x03\x04":
        return "a zip archive (a .keras model?), not a TFLite one"
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        return "an HDF5 file (a Keras .h5 model?), not a TFLite one"
    for magic, what in _MAGIC:
        if data.startswith(magic) and (magic != b"BM" or len(data) > 26):
            return what
    head = data[:4096]
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as e:  # a multi-byte character cut at 4096 is still text
            text = head[:e.start].decode("utf-8") if e.start > len(head) - 4 else ""
        if text and sum(c.isprintable() or c in "\r\n\t" for c in text) >= 0.95 * len(text):
            first = text.strip().splitlines()[0][:60] if text.strip() else ""
            return f"a text file ({len(data)} bytes, starting {first!r})"
    return None


def refuse_non_model(data: bytes, path: Path) -> None:
    """Raises EdgekitError, in one line naming what the file is, when ``data`` is plainly
    not a model ("X is not a model: it is a JPEG image")."""
    what = describe_non_model(data)
    if what is not None:
        raise EdgekitError(f"{path} is not a model: it is {what}")


def identify_model(path: Path, data: bytes | None = None) -> Any | None:
    """Refuses a file that is not a readable model, naming what it is.

    Args:
        path: the model file.
        data: its bytes, when already read.

    Returns:
        The parsed, validated ``ModelT`` of a TFLite model; None for an ONNX file (checked
        by onnxruntime when loaded).

    Raises:
        EdgekitError: one line: "X is not a model: it is a JPEG image", "... damaged or
            truncated FlatBuffer", ...
    """
    from .tflite import read_model

    if data is None:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise EdgekitError(f"cannot read {path}: {e.strerror or e}") from None
    refuse_non_model(data, path)
    if path.suffix.lower() in (".onnx", ".rpk") and data[4:8] != b"TFL3":
        return None  # ONNX: onnxruntime checks it; .rpk: the IMX500 loads it on the sensor
    return read_model(data, path)


def _buffer_bytes(buf: Any, data: bytes) -> bytes:
    if buf.offset > 1:  # stored outside the FlatBuffer (models over 2 GiB)
        return data[buf.offset:buf.offset + buf.size]
    return b"" if buf.data is None else np.asarray(buf.data, np.uint8).tobytes()


def _ints_bytes(values: Any) -> bytes:
    return np.asarray([] if values is None else values, "<i8").tobytes()


def _quant_bytes(q: Any) -> bytes:
    if q is None:
        return b"-"
    return b"".join((np.asarray([] if q.scale is None else q.scale, "<f4").tobytes(), b"|",
                     _ints_bytes(q.zeroPoint), b"|",
                     struct.pack("<q", int(q.quantizedDimension or 0))))


def tensor_digest(model: Any, data: bytes) -> str:
    """SHA-256 (hex) of a parsed model's tensors and graph; see the module docstring.

    Args:
        model: the schema's ``ModelT``.
        data: the file's bytes (for buffers stored past the FlatBuffer).
    """
    from .tflite import op_name

    h = hashlib.sha256(f"edgekit-tensor-digest-v{DIGEST_VERSION}".encode())
    buffers = model.buffers or []
    hashed: dict[int, str] = {}
    for g in model.subgraphs or []:
        h.update(b"G" + _ints_bytes(g.inputs) + b"|" + _ints_bytes(g.outputs))
        for t in g.tensors or []:
            if t.buffer not in hashed:  # a buffer shared by tensors is read once
                hashed[t.buffer] = hashlib.sha256(_buffer_bytes(buffers[t.buffer], data)
                                                  ).hexdigest()
            h.update(b"T" + struct.pack("<ii", int(t.type), int(t.buffer)) +
                     _ints_bytes(t.shape) + _quant_bytes(t.quantization) +
                     hashed[t.buffer].encode())
        for op in g.operators or []:
            name = op_name(model.operatorCodes[op.opcodeIndex])
            h.update(b"O" + name.encode() + _ints_bytes(op.inputs) + b"|" +
                     _ints_bytes(op.outputs))
    return h.hexdigest()


def embed_digest(model: bytes) -> bytes:
    """Returns ``model`` with its tensor digest stored as the ``edgekit_digest`` entry."""
    from .metadata import embed_entry
    from .tflite import read_model

    parsed = read_model(model)
    entry = {"version": DIGEST_VERSION, "sha256": tensor_digest(parsed, model),
             "edgetpu": _has_edgetpu_op(parsed)}
    return embed_entry(model, DIGEST_NAME, json.dumps(entry, sort_keys=True).encode())


def _has_edgetpu_op(model: Any) -> bool:
    from .tflite import EDGETPU_CUSTOM_OP, op_name

    return any(op_name(c) == EDGETPU_CUSTOM_OP for c in model.operatorCodes or [])


@dataclass(frozen=True)
class DigestCheck:
    """The outcome of :func:`check_digest`.

    Attributes:
        status: "ok", "mismatch", "absent" (made before digests, or not by convert),
            "compiled" (Edge TPU-compiled after the digest was made: not comparable) or
            "unreadable" (the entry is damaged).
        message: one line for a person.
    """

    status: str
    message: str

    @property
    def failed(self) -> bool:
        """True when the model's data is damaged (or its entry is)."""
        return self.status in ("mismatch", "unreadable")


def check_digest(model: Any, data: bytes) -> DigestCheck:
    """Compares a parsed model's tensors with the digest stored in it.

    Args:
        model: the schema's ``ModelT`` (from :func:`identify_model`).
        data: the file's bytes.
    """
    entry = next((md for md in model.metadata or []
                  if md.name in (DIGEST_NAME, DIGEST_NAME.encode())), None)
    if entry is None:
        return DigestCheck("absent", "no digest in the model (made before digests, or not "
                                     "by edgekit convert): its data is not checked")
    try:
        stored = json.loads(_buffer_bytes(model.buffers[entry.buffer], data).decode("utf-8"))
        want, version = str(stored["sha256"]), int(stored["version"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return DigestCheck("unreadable", "the model's digest entry is damaged (the file was "
                                         "changed after conversion)")
    if version != DIGEST_VERSION:
        return DigestCheck("absent", f"digest version {version} is not known here "
                                     f"(this runtime reads {DIGEST_VERSION}): not checked")
    got = tensor_digest(model, data)
    if got == want:
        return DigestCheck("ok", f"the model's data matches its digest ({got[:12]}…)")
    if _has_edgetpu_op(model) and not stored.get("edgetpu", False):
        return DigestCheck("compiled", "the digest was made before Edge TPU compilation: "
                                       "not checked")
    return DigestCheck("mismatch", f"the model's data does not match its digest ({got[:12]}… "
                                   f"vs {want[:12]}… recorded at conversion): the file was "
                                   "damaged or changed after conversion")


__all__ = ["DIGEST_NAME", "DigestCheck", "check_digest", "describe_non_model", "embed_digest",
           "identify_model", "refuse_non_model", "tensor_digest"]
