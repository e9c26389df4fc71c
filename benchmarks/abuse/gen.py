"""Generates hostile input for the abuse suite: malformed models, image bombs, YAML bombs.

Every generator is a pure, seeded function of its arguments (a real model's bytes, a
seed): nothing is downloaded, the same seed gives the same bytes. ``tests/test_abuse.py``
runs a small fixed sample through the real CLIs; ``python -m benchmarks.abuse`` runs all.
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .flatbuf import layout

# ---------------------------------------------------------------------------------------
# Malformed models


@dataclass(frozen=True)
class Case:
    """One generated input: ``name`` (unique, file-name safe), ``kind`` (the family it
    belongs to, e.g. "flip_header"), ``data`` and the file ``suffix`` it is written with."""

    name: str
    kind: str
    data: bytes
    suffix: str = ".tflite"


def _put(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, pos, value)
    return bytes(b)


def _flip(data: bytes, rng: random.Random, lo: int, hi: int, n: int) -> bytes:
    b = bytearray(data)
    for _ in range(n):
        p = rng.randrange(lo, max(lo + 1, hi))
        b[p] ^= rng.randrange(1, 256)
    return bytes(b)


def structural_mutants(model: bytes, seed: int = 0, per_kind: int = 1) -> list[Case]:
    """Out-of-range indices, dimensions, types, vector lengths and offsets written into
    the flatbuffer's own fields (the file stays a well-formed-looking TFLite model).

    Args:
        model: a real ``.tflite`` file's bytes.
        seed: picks which tensor, operator or field each mutant hits.
        per_kind: mutants per kind (different targets, same kind of damage).

    Returns:
        ``Case`` s, kind = "struct_<what>".
    """
    lay = layout(model)
    rng = random.Random(f"struct-{seed}")
    size = len(model)
    # (kind, candidate positions, struct format, values)
    spec: list[tuple[str, list[int], str, list[int]]] = [
        ("root_offset_past_end", [0], "<I", [size + 64, 0xFFFFFFF0]),
        ("root_vtable_garbage", [lay.root_field], "<i", [0x7FFFFFF0, -0x7FFFFFF0]),
        ("subgraph_input_index", lay.subgraph_inputs, "<i", [99999, -2, lay.n_tensors]),
        ("subgraph_output_index", lay.subgraph_outputs, "<i", [99999, -2, lay.n_tensors]),
        ("op_input_index", lay.op_inputs, "<i", [99999, -7, lay.n_tensors]),
        ("op_output_index", lay.op_outputs, "<i", [99999, -7, lay.n_tensors]),
        ("op_opcode_index", lay.op_opcode_index, "<I", [9999, 0x7FFFFFFF]),
        ("tensor_buffer_index", lay.tensor_buffer, "<I", [0x7FFFFFFF, lay.n_buffers]),
        ("tensor_type", lay.tensor_type, "<b", [99, -1]),
        ("input_dim_negative", lay.input_shape_dims, "<i", [-5, -1]),
        ("input_dim_huge", lay.input_shape_dims, "<i", [1 << 30, 0x7FFFFFFF]),
        ("input_dim_zero", lay.input_shape_dims, "<i", [0]),
        ("tensor_dim_huge", lay.tensor_shape_dims, "<i", [1 << 30, -3]),
        ("opcode_builtin", lay.opcode_builtin, "<i", [9999, -4]),
        ("opcode_deprecated", lay.opcode_deprecated, "<b", [127, -1]),
    ]
    for what, positions in lay.vector_lengths.items():
        spec.append((f"len_{what}", positions, "<I", [0x7FFFFFFF, size, 0]))
    for what, positions in lay.offsets.items():
        spec.append((f"offset_{what}", positions, "<I", [size * 2, 0xFFFFFFF8, 1]))
    out = []
    for kind, positions, fmt, values in spec:
        if not positions:
            continue
        for i in range(per_kind):
            pos = rng.choice(positions)
            value = values[i % len(values)] if i < len(values) else rng.choice(values)
            out.append(Case(f"struct_{kind}_{i}", f"struct_{kind}", _put(model, pos, fmt, value)))
    return out


def flip_mutants(model: bytes, seed: int = 0, per_region: int = 10) -> list[Case]:
    """Random byte flips (1-8 bytes XORed) in the header (first 64 bytes), the middle
    half, the tail (last 4 KiB) and the flatbuffer's own tables (positions of parsed
    fields), ``per_region`` each."""
    rng = random.Random(f"flip-{seed}")
    size = len(model)
    lay = layout(model)
    fields = sorted(set(lay.subgraph_inputs + lay.op_inputs + lay.op_opcode_index
                        + lay.tensor_buffer + lay.tensor_type + lay.tensor_shape_dims
                        + [p for v in lay.vector_lengths.values() for p in v]
                        + [p for v in lay.offsets.values() for p in v]))
    regions = {"header": (0, min(64, size)), "middle": (size // 4, 3 * size // 4),
               "tail": (max(0, size - 4096), size)}
    out = []
    for region, (lo, hi) in regions.items():
        for i in range(per_region):
            out.append(Case(f"flip_{region}_{i}", f"flip_{region}",
                            _flip(model, rng, lo, hi, rng.randint(1, 8))))
    for i in range(per_region if fields else 0):
        b = bytearray(model)
        for _ in range(rng.randint(1, 4)):
            p = rng.choice(fields) + rng.randrange(4)
            b[min(p, size - 1)] ^= rng.randrange(1, 256)
        out.append(Case(f"flip_fields_{i}", "flip_fields", bytes(b)))
    return out


def truncation_mutants(model: bytes, seed: int = 0, random_cuts: int = 10) -> list[Case]:
    """The model cut short: at fixed sizes (4, 8, 16, 64, 1 KiB; 10/50/90 %; one byte
    short) and at ``random_cuts`` seeded sizes."""
    rng = random.Random(f"trunc-{seed}")
    size = len(model)
    cuts = [4, 8, 16, 64, 1024, size // 10, size // 2, size * 9 // 10, size - 1]
    cuts += [rng.randrange(1, size) for _ in range(random_cuts)]
    return [Case(f"truncated_{i}", "truncated", model[:n]) for i, n in enumerate(cuts)
            if 0 < n < size]


def wrong_type_files(model: bytes, seed: int = 0) -> list[Case]:
    """Files that are not TFLite models, named ``.tflite``: empty, text, JSON, HTML,
    PNG, JPEG, ZIP (a ``.keras``), gzip of the model, an ELF header, random bytes, and
    the TFLite identifier followed by garbage."""
    rng = random.Random(f"wrong-{seed}")
    noise = bytes(rng.randrange(256) for _ in range(4096))
    import gzip

    elf = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHI", 3, 62, 1) + bytes(40)
    zipped = (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(16) + b"\x0c\x00\x00\x00"
              + b"config.json" + noise[:64])
    files = {
        "empty": b"",
        "text": b"this is not a model\n" * 20,
        "json": b'{"model": "mobilenet", "layers": [1, 2, 3]}\n',
        "html": b"<!doctype html><html><body>404 Not Found</body></html>\n",
        "png": png_bytes(np.zeros((8, 8, 3), np.uint8)),
        "jpeg": jpeg_bytes(np.zeros((16, 16, 3), np.uint8)),
        "zip": zipped,
        "gzip_model": gzip.compress(model[:65536], mtime=0),
        "elf": elf,
        "random": noise,
        "tfl3_garbage": struct.pack("<I", 16) + b"TFL3" + noise[:512],
        "zeros": bytes(4096),
    }
    return [Case(f"wrongtype_{k}", "wrong_type", v) for k, v in files.items()]


def model_mutants(model: bytes, seed: int = 0, scale: int = 1) -> list[Case]:
    """The full mutant set (a few hundred at ``scale`` 1): structural, flips, truncations
    and wrong file types. ``scale`` multiplies the random families."""
    return (structural_mutants(model, seed, per_kind=4 * scale)
            + flip_mutants(model, seed, per_region=40 * scale)
            + truncation_mutants(model, seed, random_cuts=20 * scale)
            + wrong_type_files(model, seed))


def sample_mutants(model: bytes, seed: int = 0) -> list[Case]:
    """A small fixed subset for the test suite (about 30): one mutant of every index,
    dimension, type and opcode kind and of the main vector lengths and offsets, a
    subgraph without operators, one flip per region, three truncations and five wrong
    file types."""
    keep = {f"struct_{k}" for k in (
        "len_tensors", "len_buffer_data", "len_shape", "offset_subgraphs", "offset_tensor",
        "offset_buffer_data")}
    structural = [c for c in structural_mutants(model, seed, per_kind=1)
                  if not c.kind.startswith(("struct_len_", "struct_offset_")) or c.kind in keep]
    # A subgraph with no operators at all (its operator vector's length set to 0).
    structural += [c for c in structural_mutants(model, seed, per_kind=3)
                   if c.name == "struct_len_operators_2"]
    cuts = {"truncated_2", "truncated_6", "truncated_7"}  # 16 bytes, 50 %, 90 %
    wrong = {"wrongtype_empty", "wrongtype_text", "wrongtype_png", "wrongtype_gzip_model",
             "wrongtype_tfl3_garbage"}
    return (structural + flip_mutants(model, seed, per_region=1)
            + [c for c in truncation_mutants(model, seed, 0) if c.name in cuts]
            + [c for c in wrong_type_files(model, seed) if c.name in wrong])


SAMPLE_KINDS = (
    "struct_root_offset_past_end", "struct_root_vtable_garbage", "struct_subgraph_input_index",
    "struct_subgraph_output_index", "struct_op_input_index", "struct_op_output_index",
    "struct_op_opcode_index", "struct_tensor_buffer_index", "struct_tensor_type",
    "struct_input_dim_negative", "struct_input_dim_huge", "struct_input_dim_zero",
    "struct_tensor_dim_huge", "struct_opcode_builtin", "struct_opcode_deprecated",
    "struct_len_tensors", "struct_len_buffer_data", "struct_len_shape", "struct_len_operators",
    "struct_offset_subgraphs", "struct_offset_tensor", "struct_offset_buffer_data",
    "flip_header", "flip_middle", "flip_tail", "flip_fields", "truncated", "wrong_type")
"""Every kind :func:`sample_mutants` can give (a model may lack some, e.g. no uint8 type)."""


# ---------------------------------------------------------------------------------------
# Images


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bytes(rgb: np.ndarray) -> bytes:
    """A PNG of an (H, W, 3) uint8 array, written by hand (no encoder needed)."""
    h, w = rgb.shape[:2]
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(raw, 9)) + _png_chunk(b"IEND", b""))


def png_header_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` RGB (a few rows of data)."""
    rows = zlib.compress((b"\x00" + bytes(3 * width)) * 2, 9)
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b""))


def png_real_bomb(width: int, height: int) -> bytes:
    """A valid, complete grayscale PNG of ``width`` x ``height`` black pixels; it
    compresses about 1000:1 (80 Mpx is ~80 KB on disk)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    chunks = []
    block = row * max(1, (1 << 22) // len(row))  # ~4 MB of rows per call
    per_block = len(block) // len(row)
    left = height
    while left > 0:
        n = min(per_block, left)
        chunks.append(comp.compress(block if n == per_block else row * n))
        left -= n
    chunks.append(comp.flush())
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", b"".join(chunks)) + _png_chunk(b"IEND", b""))


def bmp_header_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A 24-bit BMP whose header claims ``width`` x ``height`` with 64 bytes of pixels."""
    pixels = bytes(64)
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return header + info + pixels


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    """A JPEG of an (H, W, 3) uint8 RGB array (OpenCV's encoder)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def photo(seed: int = 0, h: int = 240, w: int = 320) -> np.ndarray:
    """A seeded (H, W, 3) uint8 RGB picture with gradients and blocks (compresses like a
    photo, not like noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(1, w - 1)), (y * 255 // max(1, h - 1)),
                    ((x + y) * 127 // max(1, h + w))], -1).astype(np.uint8)
    for _ in range(6):
        y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        img[y0:y0 + h // 5, x0:x0 + w // 5] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


@dataclass(frozen=True)
class ImageCase:
    """An image file to classify: ``expect`` is "error" (one clear line, exit 1) or "ok"
    (classified, exit 0); ``fragment``: text the error line must contain (lower case)."""

    name: str
    data: bytes
    suffix: str
    expect: str
    fragment: str = ""


def image_cases(seed: int = 0, bomb_px: tuple[int, int] = (9000, 9000)) -> list[ImageCase]:
    """Image bombs and odd formats.

    Args:
        seed: picks the picture and the cut points.
        bomb_px: (width, height) of the real, complete, highly compressible PNG; the
            default 81 Mpx is over a 50 Mpx limit yet decodes in under a second when
            unguarded (the benchmark passes 20000 x 20000).
    """
    import cv2

    img = photo(seed)
    jpg = jpeg_bytes(img)
    png = png_bytes(img)
    rng = random.Random(f"img-{seed}")
    gray16 = cv2.imencode(".png", (img[..., 0].astype(np.uint16) * 257))[1].tobytes()
    rgba = cv2.imencode(".png", np.dstack([img, np.full(img.shape[:2], 128, np.uint8)]))[1]
    bw, bh = bomb_px
    return [
        ImageCase("png_header_60000x60000", png_header_bomb(), ".png", "error", "60000"),
        ImageCase(f"png_real_{bw}x{bh}", png_real_bomb(bw, bh), ".png", "error", str(bw)),
        ImageCase("bmp_header_60000x60000", bmp_header_bomb(), ".bmp", "error", "60000"),
        ImageCase("jpeg_truncated_half", jpg[:len(jpg) // 2], ".jpg", "error", ""),
        ImageCase("jpeg_truncated_random", jpg[:rng.randrange(200, len(jpg) // 2)], ".jpg",
                  "error", ""),
        ImageCase("png_truncated_half", png[:len(png) // 2], ".png", "error", ""),
        ImageCase("zero_bytes", b"", ".jpg", "error", "empty"),
        ImageCase("text_named_jpg", b"hello, I am a text file\n" * 4, ".jpg", "error",
                  "image"),
        ImageCase("jpeg_header_only", jpg[:20], ".jpg", "error", ""),
        ImageCase("png_named_jpg", png, ".jpg", "ok"),
        ImageCase("gray16_png", gray16, ".png", "ok"),
        ImageCase("rgba_png", rgba.tobytes(), ".png", "ok"),
        ImageCase("one_pixel_png", png_bytes(img[:1, :1]), ".png", "ok"),
        ImageCase("tall_1x4000_png", png_bytes(np.repeat(img[:1, :1], 4000, 0)), ".png", "ok"),
    ]


# ---------------------------------------------------------------------------------------
# Device profiles (YAML)


def yaml_alias_bomb(section: str = "model", key: str = "threads", levels: int = 9,
                    width: int = 9) -> str:
    """A ~600-byte profile whose ``section.key`` value holds a list that expands to
    width**levels items (the anchors are defined inside the value itself)."""
    items = ['&a0 ["lol"]'] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]"
                               for i in range(1, levels + 1)]
    return f"{section}:\n  {key}: [{', '.join(items)}]\n"


@dataclass(frozen=True)
class YamlCase:
    """A device profile body (the model and source lines are appended by the runner as
    ``model.path``/``camera.source`` overrides): one clear error line is expected that
    contains every ``fragments`` item (lower case)."""

    name: str
    text: str
    fragments: tuple[str, ...]


def yaml_cases() -> list[YamlCase]:
    """YAML bombs, duplicate keys, huge numbers, absurd threads, deep nesting, garbage."""
    deep = "model:\n  threads: " + "[" * 5000 + "]" * 5000 + "\n"
    return [
        YamlCase("alias_bomb_threads", yaml_alias_bomb("model", "threads"), ("threads",)),
        YamlCase("alias_bomb_path", yaml_alias_bomb("model", "path"), ("path",)),
        YamlCase("alias_bomb_source", yaml_alias_bomb("camera", "source"), ("source",)),
        YamlCase("alias_bomb_allow", yaml_alias_bomb("classify", "allow"), ("allow",)),
        YamlCase("duplicate_section", "camera:\n  width: 640\nmodel:\n  threads: 1\n"
                 "camera:\n  height: 480\n", ("duplicate", "camera", "line 5")),
        YamlCase("duplicate_key", "model:\n  threads: 1\n  threads: 2\n",
                 ("duplicate", "threads", "line 3")),
        YamlCase("threads_100000", "model:\n  threads: 100000\n", ("threads", "100000")),
        YamlCase("threads_huge_int", "model:\n  threads: " + "9" * 400 + "\n", ("threads",)),
        YamlCase("width_huge", "camera:\n  width: 1e308\n", ("width",)),
        YamlCase("port_huge", "http:\n  port: " + "9" * 30 + "\n", ("port",)),
        YamlCase("threshold_nan", "classify:\n  threshold: .nan\n", ("threshold",)),
        YamlCase("deep_nesting", deep, ("deep",)),
        YamlCase("not_a_mapping", "- just\n- a list\n", ()),
        YamlCase("binary_garbage", "\x00\x01\x02 model: [\n", ()),
    ]


# ---------------------------------------------------------------------------------------
# Video


def corrupted_video(path: str, frames: int = 300, size: tuple[int, int] = (320, 240),
                    seed: int = 0) -> tuple[int, int]:
    """Writes an MJPG AVI of ``frames`` frames, then overwrites the second half of its
    frame data with seeded random bytes (the index at the end is kept).

    Returns:
        (frames written, first frame byte offset that was overwritten).
    """
    import cv2

    w, h = size
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}")
    for i in range(frames):
        f = np.full((h, w, 3), (i * 7) % 255, np.uint8)
        cv2.putText(f, str(i), (w // 6, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
        writer.write(f)
    writer.release()
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    end = data.rfind(b"idx1")
    end = end if end > 0 else len(data)
    start = len(data) // 2
    rng = np.random.default_rng(seed)
    data[start:end] = rng.integers(0, 256, end - start, dtype=np.uint8).tobytes()
    with open(path, "wb") as fh:
        fh.write(bytes(data))
    return frames, start


def signal_times(n: int, lo: float, hi: float, seed: int = 0) -> list[float]:
    """``n`` seeded moments in [lo, hi) seconds (sorted, so short ones come first)."""
    rng = random.Random(f"signals-{seed}")
    return sorted(round(rng.uniform(lo, hi), 3) for _ in range(n))
