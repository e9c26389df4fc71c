"""Writes edgekit's built-in sample data: a labelled image folder and a short video.

Usage:
    python -m train.sample_data --out DIR [--per-class N] [--frames N] [--seed S] [--field]

Nothing is downloaded. Four classes of coloured shapes (circle, square, star, triangle)
are drawn with camera-like variation: textured backgrounds, uneven lighting, rotation,
scale, position, blur, sensor noise and JPEG compression. The same seed always writes the
same files. ``--field`` draws the same classes as a deployed camera would meet them and
the sample set never shows: saturated striped, checked or dark backgrounds, a strong
colour cast (tungsten, fluorescent, shade), low light with more sensor noise, and smaller
objects; its video (default 1440 frames) is 24 scenes of 4 seconds, each with its own
background and light, in which the four classes pass in turn (one second each). Output::

    DIR/images/<class>/<class>_0000.jpg ...
    DIR/video.avi            (MJPG, 320x240, 15 fps, the classes in turn)
    DIR/video_labels.txt     (the class shown in each frame)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import EXIT_ERROR, EXIT_OK, Parser
from edge_runtime.fileio import atomic_path, write_text

# class -> (OpenCV hue 0..179 of its usual colour). The hue is jittered per image, so
# colour is a strong cue but shape still matters where neighbours overlap.
CLASSES = {"circle": 0, "square": 110, "star": 25, "triangle": 60}
IMAGE_SIZE = 160
VIDEO_SIZE = (320, 240)
VIDEO_FPS = 15
FIELD_FRAMES = 1440  # the field video's default length (96 s at 15 fps: 24 scenes)
FIELD_SCENE = 60  # frames per scene in the field video (4 s)
# Colour casts of field light, as B, G, R gains: tungsten, cool shade, fluorescent green.
CASTS = ((0.55, 0.85, 1.3), (1.35, 1.0, 0.6), (0.8, 1.3, 0.75))


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


def _field_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A background the sample set never has: saturated stripes, a checkerboard or
    coloured speckle (BGR uint8)."""
    kind = int(rng.integers(0, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 18)
        tex = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0)
    elif kind == 1:
        cell = int(rng.integers(6, 16))
        tex = ((xx // cell + yy // cell) % 2) > 0
    else:
        tex = cv2.resize(rng.random((h // 6 + 1, w // 6 + 1)).astype(np.float32), (w, h),
                         interpolation=cv2.INTER_NEAREST) > 0.5
    hues = rng.integers(0, 180, 2)
    val = np.where(tex, rng.uniform(120, 220), rng.uniform(40, 110)).astype(np.float32)
    hsv = np.stack([np.where(tex, hues[0], hues[1]).astype(np.float32),
                    np.full((h, w), rng.uniform(120, 230), np.float32), val], axis=-1)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)


def _field_light(img: np.ndarray, rng: np.random.Generator, cast: np.ndarray,
                 gain: float) -> np.ndarray:
    """A colour cast, low light and the stronger sensor noise that comes with it."""
    out = img.astype(np.float32) * (cast * gain)
    sigma = rng.uniform(0, 1.2)
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    out += rng.normal(0, rng.uniform(4, 14), out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _field_cast(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """One scene's light: a cast (jittered) and an exposure gain (0.35..0.8: dim)."""
    cast = np.float32(CASTS[int(rng.integers(0, len(CASTS)))]) * rng.uniform(0.9, 1.1, 3)
    return cast.astype(np.float32), float(rng.uniform(0.35, 0.8))


def render_field(name: str, rng: np.random.Generator,
                 size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """One BGR image of class ``name`` as the field shows it (see the module docstring)."""
    w, h = size
    img = _field_background(rng, w, h)
    s = min(w, h)
    r = s * rng.uniform(0.14, 0.26)
    cx = w / 2 + rng.uniform(-0.25, 0.25) * s
    cy = h / 2 + rng.uniform(-0.25, 0.25) * s
    draw_object(img, name, rng, cx, cy, r, rng.uniform(0, 360))
    return _field_light(img, rng, *_field_cast(rng))


def write_images(out: Path, per_class: int, seed: int, field: bool = False) -> dict[str, int]:
    """Writes ``per_class`` JPEGs per class under ``out/images``; returns counts."""
    counts = {}
    for ci, name in enumerate(sorted(CLASSES)):
        folder = out / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        # The field's random stream is another one: no field image repeats a sample one.
        rng = np.random.default_rng([seed, ci, 7] if field else [seed, ci])
        for i in range(per_class):
            img = render_field(name, rng) if field else render(name, rng)
            quality = int(rng.integers(70, 96))
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            (folder / f"{name}_{i:04d}.jpg").write_bytes(buf.tobytes())
        counts[name] = per_class
    return counts


def _sample_frames(frames: int, seed: int) -> Iterator[tuple[np.ndarray, str]]:
    """The sample video: each class in turn, once, moving and turning."""
    rng = np.random.default_rng([seed, 999])
    names = sorted(CLASSES)
    per = max(1, frames // len(names))
    w, h = VIDEO_SIZE
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
        yield _camera_effects(img, rng), name


def _field_frames(frames: int, seed: int) -> Iterator[tuple[np.ndarray, str]]:
    """The field video: scenes of FIELD_SCENE frames, each with its own background, colour
    cast and exposure (a camera's site and light), in which the classes pass in turn, a
    quarter of the scene each (so the background says nothing about the class)."""
    rng = np.random.default_rng([seed, 998])
    names = sorted(CLASSES)
    per = max(1, FIELD_SCENE // len(names))
    w, h = VIDEO_SIZE
    for i in range(frames):
        scene, k = divmod(i, FIELD_SCENE)
        shot, j = divmod(k, per)
        name = names[min(shot, len(names) - 1)]
        if k == 0:
            bg = _field_background(rng, w, h)
            cast, gain = _field_cast(rng)
        if j == 0 or k == 0:
            x0, y0 = rng.uniform(0.3, 0.7) * w, rng.uniform(0.35, 0.65) * h
            dx, dy = rng.uniform(-1.5, 1.5, 2)
            spin, r = rng.uniform(-6, 6), rng.uniform(0.14, 0.26) * h
        img = bg.copy()
        draw_object(img, name, np.random.default_rng([seed, 998, scene, shot]),
                    x0 + dx * j, y0 + dy * j, r, spin * j)
        yield _field_light(img, rng, cast, gain), name


def write_video(out: Path, frames: int, seed: int, field: bool = False) -> Path:
    """Writes ``out/video.avi`` (the sample or the field video) and
    ``out/video_labels.txt``; returns the video's path."""
    w, h = VIDEO_SIZE
    target = out / "video.avi"
    labels = []
    with atomic_path(target) as tmp:
        tmp_avi = tmp.with_suffix(".avi")  # OpenCV picks the container from the suffix
        writer = cv2.VideoWriter(str(tmp_avi), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, (w, h))
        if not writer.isOpened():
            raise RuntimeError("OpenCV cannot write MJPG video on this machine")
        try:
            for img, name in (_field_frames if field else _sample_frames)(frames, seed):
                writer.write(img)
                labels.append(name)
        finally:
            writer.release()
        tmp_avi.replace(tmp)
    write_text(out / "video_labels.txt", "".join(f"{n}\n" for n in labels))
    return target


def generate(out: str | Path, per_class: int = 100, frames: int = 240, seed: int = 0,
             field: bool = False) -> Path:
    """Writes the sample image folder and video; returns ``out``.

    Args:
        out: destination folder (created).
        per_class: images per class.
        frames: video length in frames (0 for no video).
        seed: the same seed gives the same files.
        field: the field variant (what the sample set lacks; see the module docstring).
    """
    out = Path(out)
    write_images(out, per_class, seed, field)
    if frames:
        write_video(out, frames, seed, field)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = Parser(prog="python -m train.sample_data", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="destination folder")
    p.add_argument("--per-class", type=int, default=100, help="images per class (>= 5)")
    p.add_argument("--frames", type=int, default=None,
                   help=f"video frames (0: no video; default 240, {FIELD_FRAMES} with --field)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--field", action="store_true",
                   help="the field variant: backgrounds, light and scale the sample set lacks")
    args = p.parse_args(argv)
    if args.frames is None:
        args.frames = FIELD_FRAMES if args.field else 240
    if args.per_class < 5 or args.frames < 0:
        print(f"error: --per-class must be >= 5 and --frames >= 0, got {args.per_class} and "
              f"{args.frames}", file=sys.stderr)
        return EXIT_ERROR
    try:
        generate(args.out, args.per_class, args.frames, args.seed, args.field)
    except OSError as e:
        print(f"error: cannot write sample data to {args.out}: {e}", file=sys.stderr)
        return EXIT_ERROR
    n = args.per_class * len(CLASSES)
    print(f"wrote {n} images in {len(CLASSES)} classes to {args.out / 'images'}"
          + (f" and a {args.frames}-frame video {args.out / 'video.avi'}" if args.frames else ""))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
