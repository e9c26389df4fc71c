"""Writes edgekit's built-in sample data: a labelled image folder and a short video.

Usage:
    python -m train.sample_data --out DIR [--per-class N] [--frames N] [--seed S]

Nothing is downloaded. Four classes of coloured shapes (circle, square, star, triangle)
are drawn with camera-like variation: textured backgrounds, uneven lighting, rotation,
scale, position, blur, sensor noise and JPEG compression. The same seed always writes the
same files. Output::

    DIR/images/<class>/<class>_0000.jpg ...
    DIR/video.avi            (MJPG, 320x240, 15 fps, the classes in turn)
    DIR/video_labels.txt     (the class shown in each frame)
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import EXIT_ERROR, EXIT_OK, Parser
from edge_runtime.fileio import atomic_path

# class -> (OpenCV hue 0..179 of its usual colour). The hue is jittered per image, so
# colour is a strong cue but shape still matters where neighbours overlap.
CLASSES = {"circle": 0, "square": 110, "star": 25, "triangle": 60}
IMAGE_SIZE = 160
VIDEO_SIZE = (320, 240)
VIDEO_FPS = 15


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Low-saturation textured background with a lighting gradient (BGR uint8)."""
    cells = rng.integers(3, 9)
    hue = rng.integers(0, 180)
    tex = rng.random((cells, cells)).astype(np.float32)
    tex = cv2.resize(tex, (w, h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.0)
    val = np.clip(90 + 90 * tex + 40 * (fine - 0.5), 0, 255)
    hsv = np.stack([np.full((h, w), hue, np.float32),
                    np.full((h, w), rng.integers(0, 90), np.float32), val], axis=-1)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)


def _shape_points(name: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if name == "square":
        t = np.deg2rad(angle) + np.pi / 4 + np.arange(4) * np.pi / 2
        rad = np.full(4, r)
    elif name == "triangle":
        t = np.deg2rad(angle) - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        rad = np.full(3, r * 1.1)
    elif name == "star":
        t = np.deg2rad(angle) - np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r * 1.15, r * 0.45)
    else:  # circle
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        rad = np.full(48, r * 0.9)
    pts = np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=-1)
    return np.round(pts * 16).astype(np.int32)  # 4 fractional bits for smooth edges


def draw_object(img: np.ndarray, name: str, rng: np.random.Generator, cx: float, cy: float,
                r: float, angle: float) -> None:
    """Draws one class object into a BGR image in place."""
    hue = (CLASSES[name] + rng.integers(-8, 9)) % 180
    hsv = np.uint8([[[hue, rng.integers(150, 256), rng.integers(150, 256)]]])
    color = tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
    pts = _shape_points(name, cx, cy, r, angle)
    shadow = pts + np.int32([rng.integers(2, 6) * 16, rng.integers(2, 6) * 16])
    cv2.fillPoly(img, [shadow], (30, 30, 30), cv2.LINE_AA, shift=4)
    cv2.fillPoly(img, [pts], color, cv2.LINE_AA, shift=4)


def _camera_effects(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uneven lighting, defocus blur and sensor noise."""
    h, w = img.shape[:2]
    gx, gy = np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h))
    a, b = rng.uniform(-0.35, 0.35, 2)
    light = rng.uniform(0.6, 1.3) * (1 + a * gx + b * gy)
    out = img.astype(np.float32) * light[..., None]
    sigma = rng.uniform(0, 1.6)
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    out += rng.normal(0, rng.uniform(0, 9), out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def render(name: str, rng: np.random.Generator, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)
           ) -> np.ndarray:
    """One camera-like BGR image of class ``name``, ``size`` = (width, height)."""
    w, h = size
    img = _background(rng, w, h)
    s = min(w, h)
    r = s * rng.uniform(0.18, 0.36)
    cx = w / 2 + rng.uniform(-0.2, 0.2) * s
    cy = h / 2 + rng.uniform(-0.2, 0.2) * s
    draw_object(img, name, rng, cx, cy, r, rng.uniform(0, 360))
    return _camera_effects(img, rng)


def write_images(out: Path, per_class: int, seed: int) -> dict[str, int]:
    """Writes ``per_class`` JPEGs per class under ``out/images``; returns counts."""
    counts = {}
    for ci, name in enumerate(sorted(CLASSES)):
        folder = out / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, ci])
        for i in range(per_class):
            img = render(name, rng)
            quality = int(rng.integers(70, 96))
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            (folder / f"{name}_{i:04d}.jpg").write_bytes(buf.tobytes())
        counts[name] = per_class
    return counts


def write_video(out: Path, frames: int, seed: int) -> Path:
    """Writes a video showing each class in turn, moving and turning; returns its path."""
    rng = np.random.default_rng([seed, 999])
    names = sorted(CLASSES)
    per = max(1, frames // len(names))
    w, h = VIDEO_SIZE
    target = out / "video.avi"
    labels = []
    with atomic_path(target) as tmp:
        tmp_avi = tmp.with_suffix(".avi")  # OpenCV picks the container from the suffix
        writer = cv2.VideoWriter(str(tmp_avi), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, (w, h))
        if not writer.isOpened():
            raise RuntimeError("OpenCV cannot write MJPG video on this machine")
        try:
            for i in range(frames):
                name = names[min(i // per, len(names) - 1)]
                if i % per == 0:
                    bg = _background(rng, w, h)
                    x0, y0 = rng.uniform(0.3, 0.7) * w, rng.uniform(0.35, 0.65) * h
                    dx, dy = rng.uniform(-1.2, 1.2, 2)
                    spin, r = rng.uniform(-4, 4), rng.uniform(0.22, 0.33) * h
                k = i % per
                img = bg.copy()
                draw_object(img, name, np.random.default_rng([seed, 999, i // per]),
                            x0 + dx * k, y0 + dy * k, r, spin * k)
                writer.write(_camera_effects(img, rng))
                labels.append(name)
        finally:
            writer.release()
        tmp_avi.replace(tmp)
    (out / "video_labels.txt").write_text("".join(f"{n}\n" for n in labels), encoding="utf-8")
    return target


def generate(out: str | Path, per_class: int = 100, frames: int = 240, seed: int = 0) -> Path:
    """Writes the sample image folder and video; returns ``out``.

    Args:
        out: destination folder (created).
        per_class: images per class.
        frames: video length in frames (0 for no video).
        seed: the same seed gives the same files.
    """
    out = Path(out)
    write_images(out, per_class, seed)
    if frames:
        write_video(out, frames, seed)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = Parser(prog="python -m train.sample_data", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="destination folder")
    p.add_argument("--per-class", type=int, default=100, help="images per class (>= 5)")
    p.add_argument("--frames", type=int, default=240, help="video frames (0: no video)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    args = p.parse_args(argv)
    if args.per_class < 5 or args.frames < 0:
        print(f"error: --per-class must be >= 5 and --frames >= 0, got {args.per_class} and "
              f"{args.frames}", file=sys.stderr)
        return EXIT_ERROR
    try:
        generate(args.out, args.per_class, args.frames, args.seed)
    except OSError as e:
        print(f"error: cannot write sample data to {args.out}: {e}", file=sys.stderr)
        return EXIT_ERROR
    n = args.per_class * len(CLASSES)
    print(f"wrote {n} images in {len(CLASSES)} classes to {args.out / 'images'}"
          + (f" and a {args.frames}-frame video {args.out / 'video.avi'}" if args.frames else ""))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
