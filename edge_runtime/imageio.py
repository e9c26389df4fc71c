"""Safe image reading: the size is read from the file's header before anything is decoded.

A small file can declare a huge image (a 1 MB PNG of 20000x20000 zeros decodes to 1.2 GB
of RGB), and OpenCV would decode it, or fail with a ``cv2.error`` for a header beyond its
own limit. :func:`read_image` reads the width and height from the header of the formats
this project accepts (JPEG, PNG, BMP, GIF, WebP, TIFF, PNM), refuses an image above
:func:`max_pixels` with one line naming the size and the limit, refuses any other format,
and only then decodes. OpenCV's own ``OPENCV_IO_MAX_IMAGE_PIXELS`` is read once per process
and is 1 Gpx by default, so it is not relied on here.

The limit is 50 Mpx (a 50 Mpx RGB image is 150 MB decoded); the environment variable
``EDGEKIT_MAX_IMAGE_PIXELS`` changes it for every command, or callers pass ``max_pixels``.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import EdgekitError

DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "EDGEKIT_MAX_IMAGE_PIXELS"
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WebP", "TIFF", "PNM")


class ImageError(EdgekitError):
    """An image file that cannot or must not be decoded.

    Attributes:
        reason: the problem without the file name (for lists of skipped files).
        kind: "missing", "unreadable", "empty", "unsupported", "corrupt", "too_large"
            or "config" (a bad limit setting).
    """

    def __init__(self, reason: str, name: str = "", kind: str = "corrupt") -> None:
        super().__init__(f"{reason}: {name}" if name else reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says.

    Attributes:
        format: one of :data:`FORMATS`.
        width: pixels.
        height: pixels.
    """

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        """width x height."""
        return self.width * self.height


class _BadHeader(Exception):
    """A header that is cut short or inconsistent (turned into an ImageError with a path)."""


def max_pixels() -> int:
    """The pixel limit: ``EDGEKIT_MAX_IMAGE_PIXELS`` when set, else 50 million.

    Raises:
        ImageError: the variable is not a positive whole number.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        try:
            value = int(float(raw)) if float(raw).is_integer() else -1
        except ValueError:
            value = -1
    if value <= 0:
        raise ImageError(f"{MAX_PIXELS_ENV}={raw!r}, expected a positive whole number "
                         f"of pixels (default {DEFAULT_MAX_PIXELS})", "", "config")
    return value


def _read(f: BinaryIO, n: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise _BadHeader("header cut short")
    return b


def _png(f: BinaryIO) -> ImageInfo:
    f.seek(8)
    length, kind = struct.unpack(">I4s", _read(f, 8))
    if kind != b"IHDR" or length != 13:
        raise _BadHeader("PNG without an IHDR chunk first")
    w, h = struct.unpack(">II", _read(f, 8))
    # OpenCV allocates what a chunk's length field says before reading it: a 6 KB file
    # whose IDAT claims 2 GB took 16 s and 2 GB of RSS. Every chunk must fit in the file.
    size = f.seek(0, io.SEEK_END)
    pos = 8 + 12 + 13
    while pos + 12 <= size:
        f.seek(pos)
        length, kind = struct.unpack(">I4s", _read(f, 8))
        if pos + 12 + length > size:
            raise _BadHeader(f"{kind.decode('latin-1')!r} chunk of {length} bytes runs past "
                             f"the end of the file")
        if kind == b"IEND":
            break
        pos += 12 + length
    return ImageInfo("PNG", w, h)


# Start-of-frame markers (all but DHT C4, JPG C8 and DAC CC in C0..CF).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}


def _jpeg(f: BinaryIO) -> ImageInfo:
    f.seek(2)
    while True:
        b = _read(f, 1)
        if b != b"\xff":
            raise _BadHeader("JPEG marker expected")
        marker = b"\xff"
        while marker == b"\xff":  # fill bytes
            marker = _read(f, 1)
        m = marker[0]
        if m in _NO_LENGTH:
            continue
        if m in (0xD9, 0xDA):
            raise _BadHeader("JPEG without a frame header")
        (length,) = struct.unpack(">H", _read(f, 2))
        if length < 2:
            raise _BadHeader("JPEG segment length < 2")
        if m in _SOF:
            _, h, w = struct.unpack(">BHH", _read(f, 5))
            if h == 0:
                raise _BadHeader("JPEG height given after the scan (DNL), not supported")
            return ImageInfo("JPEG", w, h)
        f.seek(length - 2, io.SEEK_CUR)


def _bmp(f: BinaryIO) -> ImageInfo:
    f.seek(14)
    (size,) = struct.unpack("<I", _read(f, 4))
    if size == 12:  # BITMAPCOREHEADER
        w, h = struct.unpack("<HH", _read(f, 4))
    elif size >= 40:
        w, h = struct.unpack("<ii", _read(f, 8))
    else:
        raise _BadHeader(f"BMP header size {size}")
    return ImageInfo("BMP", w, abs(h))  # negative height: rows stored top-down


def _gif(f: BinaryIO) -> ImageInfo:
    f.seek(6)
    w, h, flags = struct.unpack("<HHB", _read(f, 5))
    table = 3 << ((flags & 7) + 1) if flags & 0x80 else 0  # global colour table
    f.seek(13 + table)
    # The first frame may reach beyond the logical screen; the decoder allocates for it.
    while True:
        kind = _read(f, 1)
        if kind == b"!":  # extension: label, then sub-blocks until a zero length
            _read(f, 1)
            while (n := _read(f, 1)[0]):
                f.seek(n, io.SEEK_CUR)
        elif kind == b",":
            left, top, fw, fh = struct.unpack("<HHHH", _read(f, 8))
            return ImageInfo("GIF", max(w, left + fw), max(h, top + fh))
        else:
            raise _BadHeader("GIF without an image")


def _webp(f: BinaryIO) -> ImageInfo:
    f.seek(12)
    chunk = _read(f, 4)
    f.seek(20)
    if chunk == b"VP8 ":
        head = _read(f, 10)
        if head[3:6] != b"\x9d\x01\x2a":
            raise _BadHeader("WebP VP8 start code missing")
        w, h = struct.unpack("<HH", head[6:10])
        return ImageInfo("WebP", w & 0x3FFF, h & 0x3FFF)
    if chunk == b"VP8L":
        head = _read(f, 5)
        if head[0] != 0x2F:
            raise _BadHeader("WebP VP8L signature missing")
        bits = int.from_bytes(head[1:5], "little")
        return ImageInfo("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        head = _read(f, 10)
        w = int.from_bytes(head[4:7], "little") + 1
        h = int.from_bytes(head[7:10], "little") + 1
        return ImageInfo("WebP", w, h)
    raise _BadHeader(f"WebP chunk {chunk!r}")


def _tiff(f: BinaryIO) -> ImageInfo:
    f.seek(0)
    head = _read(f, 4)
    e = "<" if head[:2] == b"II" else ">"
    big = struct.unpack(e + "H", head[2:4])[0] == 43
    if big:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        _read(f, 4)
        (offset,) = struct.unpack(e + "Q", _read(f, 8))
        count_fmt, entry_fmt, entry_size = "Q", "HHQ8s", 20
    else:
        (offset,) = struct.unpack(e + "I", _read(f, 4))
        count_fmt, entry_fmt, entry_size = "H", "HHI4s", 12
    f.seek(offset)
    (count,) = struct.unpack(e + count_fmt, _read(f, struct.calcsize(count_fmt)))
    size: dict[int, int] = {}
    for _ in range(min(count, 4096)):
        tag, typ, _n, value = struct.unpack(e + entry_fmt, _read(f, entry_size))
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT, LONG or LONG8
            fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
            if fmt is None:
                raise _BadHeader(f"TIFF size tag of type {typ}")
            size[tag] = struct.unpack(e + fmt, value[:struct.calcsize(fmt)])[0]
            if len(size) == 2:
                return ImageInfo("TIFF", size[256], size[257])
    raise _BadHeader("TIFF without width and length")


def _pnm(f: BinaryIO) -> ImageInfo:
    f.seek(2)
    numbers: list[int] = []
    token = b""
    for _ in range(4096):  # the header is text; bounded so junk cannot loop
        c = f.read(1)
        if c == b"#" and not token:
            while c not in (b"\n", b"\r", b""):
                c = f.read(1)
        if c.isdigit():
            token += c
            continue
        if not c.isspace() and c != b"":
            raise _BadHeader("PNM header is not numbers")
        if token:
            numbers.append(int(token))
            token = b""
            if len(numbers) == 2:
                return ImageInfo("PNM", numbers[0], numbers[1])
        if c == b"":
            break
    raise _BadHeader("PNM header cut short")


def _reader(head: bytes):
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png
    if head.startswith(b"\xff\xd8\xff"):
        return _jpeg
    if head.startswith(b"BM"):
        return _bmp
    if head.startswith((b"GIF87a", b"GIF89a")):
        return _gif
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return _tiff
    if len(head) > 2 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return _pnm
    return None


def probe(f: BinaryIO, name: str = "image") -> ImageInfo:
    """Reads an image's format and size from the header of an open binary file.

    Args:
        f: a seekable binary file (or ``io.BytesIO``).
        name: what to call it in errors (usually the path).

    Raises:
        ImageError: not one of :data:`FORMATS`, or a header that is cut short or invalid.
    """
    f.seek(0)
    head = f.read(16)
    if not head:
        raise ImageError("image file is empty", name, "empty")
    reader = _reader(head)
    if reader is None:
        raise ImageError(f"not an image in a supported format ({', '.join(FORMATS)})", name,
                         "unsupported")
    try:
        info = reader(f)
    except (_BadHeader, struct.error, ValueError, OSError) as e:
        raise ImageError(f"not a decodable image (corrupt {reader.__name__[1:].upper()}: "
                         f"{e})", name,
                         "corrupt") from None
    if info.width <= 0 or info.height <= 0:
        raise ImageError(f"not a decodable image (corrupt {info.format}: size "
                         f"{info.width}x{info.height})", name, "corrupt")
    return info


def check_size(info: ImageInfo, name: str, limit: int | None = None) -> None:
    """Refuses an image larger than ``limit`` pixels (default :func:`max_pixels`).

    Raises:
        ImageError: naming the size and the limit.
    """
    limit = max_pixels() if limit is None else limit
    if info.pixels > limit:
        raise ImageError(
            f"image too large to decode: {info.width}x{info.height} = "
            f"{info.pixels / 1e6:.1f} Mpx, limit {limit / 1e6:g} Mpx "
            f"(set {MAX_PIXELS_ENV} to change it)", name, "too_large")


def probe_file(path: str | Path, limit: int | None = None) -> ImageInfo:
    """Reads the header of an image file and checks its size against the limit.

    Raises:
        ImageError: missing or unreadable file, unsupported format, corrupt header, or
            an image above the limit.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            info = probe(f, str(path))
    except FileNotFoundError:
        raise ImageError("image not found", str(path), "missing") from None
    except OSError as e:  # a folder, no permission, an I/O error
        raise ImageError(f"cannot read image ({e.strerror or e})", str(path),
                         "unreadable") from None
    check_size(info, str(path), limit)
    return info


def decode(data: bytes | np.ndarray, name: str = "image", limit: int | None = None,
           bgr: bool = False) -> np.ndarray:
    """Decodes encoded image bytes to ``uint8`` (H, W, 3) after the header checks.

    Grayscale, 16-bit and alpha images are converted (to 3-channel 8-bit).

    Args:
        data: the encoded image (bytes or a uint8 array).
        name: what to call it in errors.
        limit: most pixels allowed (default :func:`max_pixels`).
        bgr: keep OpenCV's BGR order (default: RGB).

    Raises:
        ImageError: as :func:`probe` and :func:`check_size`, or data OpenCV cannot decode.
    """
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    check_size(probe(io.BytesIO(buf), name), name, limit)
    return _decode(buf, name, bgr)


def _decode(buf: np.ndarray, name: str, bgr: bool = False) -> np.ndarray:
    import cv2

    # A corrupt file is reported once, as an ImageError: OpenCV's own log lines about
    # it are silenced for the call (libpng/libjpeg may still print one of their own).
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as e:
        first = (str(e).strip().splitlines() or ["cv2.error"])[-1].strip()
        raise ImageError(f"not a decodable image ({first})", name, "corrupt") from None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if img is None:
        raise ImageError("not a decodable image (corrupt data)", name, "corrupt")
    return img if bgr else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path, limit: int | None = None) -> np.ndarray:
    """Reads an image file as RGB ``uint8`` (H, W, 3), refusing oversized images first.

    Args:
        path: the file (non-ASCII paths work).
        limit: most pixels allowed (default :func:`max_pixels`).

    Raises:
        ImageError: missing, empty, unsupported, corrupt or oversized image.
    """
    path = Path(path)
    probe_file(path, limit)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # fromfile+imdecode: non-ASCII paths work
    except OSError as e:
        raise ImageError(f"cannot read image ({e.strerror or e})", str(path),
                         "unreadable") from None
    return _decode(data, str(path))
