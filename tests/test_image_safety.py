"""Image decoding safety: sizes read from headers, bombs refused before decoding."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from edge_runtime.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    decode,
    max_pixels,
    probe,
)
from edge_runtime.preprocess import load_image
from tests.conftest import ROOT, error_lines, run_cli


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(w: int, h: int, real: bool = True) -> bytes:
    """A valid 1-bit grey PNG of zeros (``real``) or a header with a token IDAT."""
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    if real:
        rows = (b"\x00" * (1 + (w + 7) // 8)) * 500
        c = zlib.compressobj(9)
        idat = b"".join([c.compress(rows) for _ in range(h // 500)] + [c.flush()])
    else:
        idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def _encoded(ext: str, shape=(37, 53, 3)) -> bytes:
    img = np.random.default_rng(0).integers(0, 255, shape, np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".tiff", ".ppm", ".gif"])
def test_header_size_matches_decoded_size(ext):
    data = _encoded(ext)
    info = probe(io.BytesIO(data))
    assert (info.width, info.height) == (53, 37)
    assert decode(data).shape == (37, 53, 3)


def test_load_image_is_opencvs_decode_in_rgb(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(_encoded(".jpg"))
    want = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(load_image(p), want)


def _jpeg_header(w, h):
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x01\x01\x00" + b"\x00" * 6
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def _bmp_header(w, h):
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHH", 40, w, -h, 1, 24) \
        + b"\x00" * 24


def _gif(screen, frame):
    head = b"GIF89a" + struct.pack("<HHBBB", *screen, 0, 0, 0)
    ext = b"!\xf9\x04\x00\x00\x00\x00\x00"  # graphic control extension
    return head + ext + b"," + struct.pack("<HHHHB", 0, 0, *frame, 0) + b"\x02\x02D\x01\x00;"


def _webp_vp8x(w, h):
    body = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (w - 1).to_bytes(3, "little") \
        + (h - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def _tiff(w, h, big_endian=False):
    e = ">" if big_endian else "<"
    entries = struct.pack(e + "HHI", 256, 4, 1) + struct.pack(e + "I", w) \
        + struct.pack(e + "HHI", 257, 3, 1) + struct.pack(e + "HH", h, 0)
    return (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(e + "I", 8) \
        + struct.pack(e + "H", 2) + entries + b"\x00" * 4


@pytest.mark.parametrize("data, size", [
    (png_bomb(60000, 60000, real=False), "60000x60000 = 3600.0 Mpx"),
    (_jpeg_header(65535, 65535), "65535x65535 = 4294.8 Mpx"),
    (_bmp_header(100000, 1000), "100000x1000 = 100.0 Mpx"),
    (_gif((65535, 65535), (1, 1)), "65535x65535 = 4294.8 Mpx"),
    (_gif((1, 1), (9000, 9000)), "9000x9000 = 81.0 Mpx"),  # frame beyond the screen
    (_webp_vp8x(16000, 16000), "16000x16000 = 256.0 Mpx"),
    (_tiff(70000, 1000), "70000x1000 = 70.0 Mpx"),
    (_tiff(70000, 1000, big_endian=True), "70000x1000 = 70.0 Mpx"),
    (b"P6\n# a comment\n100000 100000\n255\n", "100000x100000 = 10000.0 Mpx"),
], ids=["png", "jpeg", "bmp", "gif-screen", "gif-frame", "webp", "tiff-le", "tiff-be", "pnm"])
def test_oversized_headers_are_refused_before_decoding(tmp_path, data, size):
    p = tmp_path / "bomb.img"
    p.write_bytes(data)
    with pytest.raises(ImageError, match=f"image too large to decode: {size}, limit 50 Mpx") \
            as e:
        load_image(p)
    assert e.value.kind == "too_large" and str(e.value).endswith(str(p))


@pytest.mark.parametrize("data, message", [
    (b"hello, not an image", "not an image in a supported format"),
    (b"\xff\xd8\xff\xe0 truncated", "not a decodable image (corrupt JPEG: header cut"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a decodable image (corrupt PNG: header cut short)"),
    (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 5, 8, 0, 0, 0, 0)),
     "not a decodable image (corrupt PNG: size 0x5)"),
    (b"\xff\xd8\xff\xda\x00\x02", "corrupt JPEG: JPEG without a frame header"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8Q", "corrupt WEBP"),
    (b"II*\x00\xff\xff\xff\x00", "corrupt TIFF"),
    (b"", "image file is empty"),
    (_encoded(".png")[:33] + b"\x7f\xff\xff\xff" + _encoded(".png")[37:],
     "not a decodable image (corrupt PNG: 'IDAT' chunk of 2147483647 bytes runs past the end "
     "of the file)"),
], ids=["text", "jpeg-cut", "png-cut", "png-zero", "jpeg-no-sof", "webp-chunk", "tiff-offset",
        "empty", "png-chunk-length"])
def test_unknown_and_corrupt_files_get_one_clear_error(tmp_path, data, message):
    p = tmp_path / "bad.png"
    p.write_bytes(data)
    with pytest.raises(ImageError, match=re.escape(message)):
        load_image(p)


def test_valid_header_with_corrupt_data_is_an_image_error(tmp_path):
    p = tmp_path / "cut.png"
    p.write_bytes(_encoded(".png")[:60])
    with pytest.raises(ImageError, match="not a decodable image"):
        load_image(p)


def test_limit_is_configurable_by_environment_and_argument(tmp_path, monkeypatch):
    p = tmp_path / "x.png"
    p.write_bytes(_encoded(".png"))  # 53x37 = 1961 pixels
    assert load_image(p, max_pixels=1961).shape == (37, 53, 3)
    with pytest.raises(ImageError, match=r"53x37 = 0\.0 Mpx, limit 0\.00196 Mpx"):
        load_image(p, max_pixels=1960)
    monkeypatch.setenv("EDGEKIT_MAX_IMAGE_PIXELS", "1000")
    assert max_pixels() == 1000
    with pytest.raises(ImageError, match="limit 0.001 Mpx"):
        load_image(p)
    monkeypatch.setenv("EDGEKIT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ImageError, match="EDGEKIT_MAX_IMAGE_PIXELS='lots', expected a "
                                         "positive whole number"):
        load_image(p)
    monkeypatch.delenv("EDGEKIT_MAX_IMAGE_PIXELS")
    assert max_pixels() == DEFAULT_MAX_PIXELS == 50_000_000


def test_real_400_mpx_png_is_refused_fast_and_small(tmp_path):
    """A valid 48 KB PNG of 20000x20000 used to decode (23 s, 2.4 GB peak RSS)."""
    p = tmp_path / "bomb.png"
    p.write_bytes(png_bomb(20000, 20000))
    assert p.stat().st_size < 100_000
    code = ("import resource, sys\n"
            "from edge_runtime.preprocess import load_image, ImageError\n"
            "try:\n    load_image(sys.argv[1])\nexcept ImageError as e:\n    print(e)\n"
            "u = resource.getrusage(resource.RUSAGE_SELF)\n"
            # VmHWM, not ru_maxrss: a child's ru_maxrss carries the parent's peak through
            # fork/exec on Linux (a pytest that trained a model reads > 1 GB).
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')]\n"
            "print(int(hwm[0].split()[1]) // 1024, u.ru_utime + u.ru_stime)\n")
    out = subprocess.run([sys.executable, "-c", code, str(p)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout.splitlines()
    assert out[0] == (f"image too large to decode: 20000x20000 = 400.0 Mpx, limit 50 Mpx "
                      f"(set EDGEKIT_MAX_IMAGE_PIXELS to change it): {p}")
    rss_mb, cpu_s = int(out[1].split()[0]), float(out[1].split()[1])
    assert rss_mb < 300, f"peak RSS {rss_mb} MB: the image was decoded"
    # CPU time, not wall time, so a loaded machine does not fail it: the decode alone
    # took 23 s of CPU; imports and the refusal take well under a second.
    assert cpu_s < 8, f"{cpu_s:.1f} s of CPU: the image was decoded"


def test_prescan_rejects_bombs_with_the_runtime_limit(tmp_path):
    from PIL import Image

    from train.prescan import check_file

    before = Image.MAX_IMAGE_PIXELS
    p = tmp_path / "bomb.png"
    p.write_bytes(png_bomb(60000, 60000, real=False))
    problem, note = check_file(p, tmp_path)
    assert problem == ("image too large to decode: 60000x60000 = 3600.0 Mpx, limit 50 Mpx "
                       "(set EDGEKIT_MAX_IMAGE_PIXELS to change it)") and note is None
    assert check_file(p, tmp_path, limit=4_000_000_000)[0] is None
    assert Image.MAX_IMAGE_PIXELS == before  # no process-wide setting left behind


def test_classify_cli_refuses_a_bomb_in_one_line_and_goes_on(tmp_path, coral):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(20000, 20000))
    r = run_cli("edge_runtime", "classify", "--model",
                str(coral / "mobilenet_v2_1.0_224_quant.tflite"), "--labels",
                str(coral / "imagenet_labels.txt"), "--top-k", "1", str(bomb),
                str(coral / "grace_hopper.bmp"), timeout=60)
    assert r.returncode == 1
    assert error_lines(r.stderr) == [
        f"error: image too large to decode: 20000x20000 = 400.0 Mpx, limit 50 Mpx "
        f"(set EDGEKIT_MAX_IMAGE_PIXELS to change it): {bomb}"]
    assert "military uniform" in r.stdout and str(bomb) not in r.stdout


def test_classify_cli_honours_the_environment_limit(tmp_path, coral):
    r = run_cli("edge_runtime", "classify", "--model",
                str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
                str(coral / "grace_hopper.bmp"), env={"EDGEKIT_MAX_IMAGE_PIXELS": "1000"},
                timeout=60)
    assert r.returncode == 1
    assert error_lines(r.stderr) == [
        f"error: image too large to decode: 512x600 = 0.3 Mpx, limit 0.001 Mpx "
        f"(set EDGEKIT_MAX_IMAGE_PIXELS to change it): {coral / 'grace_hopper.bmp'}"]
    assert os.environ.get("EDGEKIT_MAX_IMAGE_PIXELS") is None


def test_mutated_images_decode_or_raise_image_error_only():
    """Bounded fuzz: byte flips in the header and body, truncations, 0xFFFFFFFF sizes."""
    import random

    r = random.Random(0)
    bases = [_encoded(e) for e in (".png", ".jpg", ".bmp", ".webp", ".tiff", ".ppm", ".gif")]
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(100):
        b = bytearray(r.choice(bases))
        mode = r.randrange(3)
        if mode == 0:
            for _ in range(r.randint(1, 8)):
                b[r.randrange(min(len(b), 64)) if r.random() < 0.7 else r.randrange(len(b))] \
                    = r.randrange(256)
        elif mode == 1:
            b = b[:r.randrange(len(b))]
        else:
            pos = r.randrange(min(len(b), 40))
            b[pos:pos + 4] = b"\xff\xff\xff\xff"
        try:
            img = decode(bytes(b))
            assert img.ndim == 3 and img.shape[2] == 3
            outcomes["decoded"] += 1
        except ImageError:
            outcomes["refused"] += 1
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0
