"""Builds a held-out set of real photographs from Debian packages: Tux Paint's photo stamps
(cut-outs on a transparent background, labelled by folder) pasted on crops of real
background photos, split by source photo so no cut-out is in two splits.

Usage:
    python -m train.realdata [--out data/real] [--classes bird,mammal,...] [--per-source 4]
                             [--size 256] [--seed 0] [--background mate|grey]
                             [--stamps-deb PATH] [--backgrounds-deb PATH]
    make real-data

The packages are fetched with ``apt-get download`` at pinned versions and checked against
pinned sha256s (``--stamps-deb``/``--backgrounds-deb`` use a copy you have; it is checked
too). Only the needed files are read from the .deb (an ar archive holding a tar). Output::

    OUT/images/{train,val,test}/<class>/<source-slug>_<k>.jpg
    OUT/provenance.json   (packages, sha256s, licence, every image's source and settings)
    OUT/README.md, OUT/LICENSES/<package>.copyright, OUT/debs/*.deb (the download cache)

Both packages are GPL-2(+) (their Debian copyright files are copied to OUT/LICENSES).
Same seed and packages, same files. provenance.json is written last: its presence means
the dataset is complete.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import (
    EXIT_OK,
    EdgekitError,
    Parser,
    cli_main,
    exit_with,
    float_in,
    int_at_least,
)
from edge_runtime.fileio import file_sha256, write_bytes, write_json, write_text


@dataclass(frozen=True)
class Pin:
    """A Debian package at one version and .deb sha256; ``path`` is a local copy to use."""

    package: str
    version: str
    sha256: str
    path: Path | None = None


STAMPS = Pin("tuxpaint-stamps-default", "2022.06.04-1",
             "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34")
BACKGROUNDS = Pin("mate-backgrounds", "1.26.0-1",
                  "7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04")
STAMP_ROOT = "usr/share/tuxpaint/stamps/"
BACKGROUND_ROOT = "usr/share/backgrounds/mate/nature/"
# Nature photos with nothing a class could be (the other five show flowers or a ladybird).
BACKGROUND_PHOTOS = ("Aqua.jpg", "Blinds.jpg", "Dune.jpg", "GreenMeadow.jpg", "RainDrops.jpg",
                     "Storm.jpg", "Wood.jpg")
# class -> stamp folders (searched recursively). Chosen by looking at every stamp: these
# folders hold photographs; "cartoon", "toys" and "plastic" subfolders and SVGs are drawings.
CLASSES: dict[str, tuple[str, ...]] = {
    "bird": ("animals/birds",),
    "mammal": ("animals/mammals", "animals/marsupials"),
    "fruit": ("food/fruit",),
    "vegetable": ("food/vegetables",),
    "flower": ("plants/flowers",),
    "coin": ("symbols/money/canadian/coins", "symbols/money/euro/coins",
             "symbols/money/japanese", "symbols/money/us/coins"),
}
DRAWING_FOLDERS = {"cartoon", "toys", "plastic"}
DRAWINGS = {"animals/mammals/hedgehog.png", "animals/mammals/echidna.png"}  # seen, not photos
NO_FLIP = {"coin"}  # a mirrored coin shows mirrored writing
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Result:
    """What :func:`build` wrote: the output folder and image counts per split and class."""

    out: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)


def fetch(pin: Pin, cache: Path) -> Path:
    """The pinned .deb: ``pin.path``, a cached copy, or ``apt-get download`` into ``cache``.

    Raises:
        EdgekitError: no such file, apt-get missing or failing, or another sha256.
    """
    name = f"{pin.package}_{pin.version}_all.deb"
    if pin.path is None and (cache / name).is_file() and file_sha256(cache / name) == pin.sha256:
        return cache / name
    if pin.path is None:
        if shutil.which("apt-get") is None:
            raise EdgekitError(f"apt-get not found: cannot download {pin.package} {pin.version}"
                               f"; pass the .deb with --{_flag(pin)}")
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".apt-") as tmp:
            proc = subprocess.run(["apt-get", "download", f"{pin.package}={pin.version}"],
                                  cwd=tmp, capture_output=True, text=True)
            got = list(Path(tmp).glob("*.deb"))
            if proc.returncode or len(got) != 1:
                why = [ln for ln in proc.stderr.splitlines() if ln.startswith("E:")]
                raise EdgekitError(f"apt-get download {pin.package}={pin.version} failed: "
                                   f"{why[-1] if why else f'status {proc.returncode}'}")
            got[0].replace(cache / name)
        path = cache / name
    else:
        path = pin.path
        if not path.is_file():
            raise EdgekitError(f"{path}: no such file (the {pin.package} .deb)")
    digest = file_sha256(path)
    if digest != pin.sha256:
        raise EdgekitError(f"{path}: sha256 {digest[:16]}..., expected {pin.sha256[:16]}... "
                           f"({pin.package} {pin.version}, pinned)")
    return path


def _flag(pin: Pin) -> str:
    return "backgrounds-deb" if pin.package == BACKGROUNDS.package else "stamps-deb"


class _Slice(io.RawIOBase):
    """Reads ``size`` bytes of ``f`` from its current position: one member of an ar file."""

    def __init__(self, f: io.BufferedReader, size: int) -> None:
        self._f, self._left = f, size

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        n = min(len(buf), self._left)
        data = self._f.read(n)
        buf[:len(data)] = data
        self._left -= len(data)
        return len(data)


def deb_files(deb: Path, member: str, wanted) -> dict[str, bytes]:
    """Files of a .deb's ``member`` tar ("control" or "data") whose path (without "./")
    ``wanted(path)`` accepts, read in one streaming pass.

    Raises:
        EdgekitError: not a .deb, or a member compressed other than xz/gzip/none.
    """
    out: dict[str, bytes] = {}
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise EdgekitError(f"{deb}: not a Debian package (no ar header)")
        while header := f.read(60):
            if len(header) < 60:
                break
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58])
            except ValueError:
                raise EdgekitError(f"{deb}: not a Debian package (bad ar member header)") from None
            if name.startswith(f"{member}.tar"):
                if name.endswith(".zst"):
                    raise EdgekitError(f"{deb}: {name} is zstd-compressed; only xz/gzip read")
                try:
                    with tarfile.open(fileobj=io.BufferedReader(_Slice(f, size)),
                                      mode="r|*") as tar:
                        for ti in tar:
                            path = ti.name.removeprefix("./")
                            if ti.isfile() and wanted(path):
                                out[path] = tar.extractfile(ti).read()
                except (tarfile.TarError, EOFError, OSError) as e:
                    raise EdgekitError(f"{deb}: {name} is not a readable tar ({e})") from e
                return out
            f.seek(size + size % 2, 1)
    raise EdgekitError(f"{deb}: not a Debian package (no {member}.tar member)")


def _check_control(deb: Path, pin: Pin) -> None:
    control = deb_files(deb, "control", lambda p: p == "control").get("control", b"")
    fields = dict(re.findall(r"^(Package|Version): *(\S+)", control.decode("utf-8", "replace"),
                             re.M))
    got = (fields.get("Package"), fields.get("Version"))
    if got != (pin.package, pin.version):
        raise EdgekitError(f"{deb}: package {got[0]} {got[1]}, expected {pin.package} "
                           f"{pin.version}")


def stamp_class(path: str, classes: dict[str, tuple[str, ...]]) -> str | None:
    """The class of a stamp path under :data:`STAMP_ROOT`, or None (not a photo we use)."""
    if not path.startswith(STAMP_ROOT) or not path.endswith(".png"):
        return None
    rel = path[len(STAMP_ROOT):]
    if rel in DRAWINGS or DRAWING_FOLDERS & set(rel.split("/")[:-1]):
        return None
    for name, folders in classes.items():
        if any(rel.startswith(d + "/") for d in folders):
            return name
    return None


def source_group(rel: str) -> str:
    """The split unit: a stamp and its ``_mirror`` copy are one source photo."""
    return re.sub(r"[_-]mirror(?=\.png$)", "", rel)


def split_sources(sources: dict[str, list[str]], seed: int, val: float,
                  test: float) -> dict[str, dict[str, list[str]]]:
    """Per class, source groups shuffled by ``seed`` and cut into train/val/test, so every
    source photo (with its mirror) lands in one split only.

    Raises:
        EdgekitError: a class with fewer than 3 source photos.
    """
    splits: dict[str, dict[str, list[str]]] = {s: {} for s in SPLIT_NAMES}
    for cls, rels in sorted(sources.items()):
        groups = sorted({source_group(r) for r in rels})
        if len(groups) < 3:
            raise EdgekitError(f"class {cls}: {len(groups)} source photos, need at least 3 "
                               "(one per split)")
        order = np.random.default_rng([seed, zlib.crc32(cls.encode())]).permutation(len(groups))
        n_test = max(1, round(len(groups) * test))
        n_val = max(1, round(len(groups) * val))
        n_val = min(n_val, len(groups) - n_test - 1)
        for i, g in enumerate(groups[j] for j in order):
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            splits[split].setdefault(cls, []).extend(sorted(r for r in rels
                                                            if source_group(r) == g))
    return splits


def load_cutout(data: bytes, name: str) -> np.ndarray:
    """BGRA uint8 of a stamp, cropped to its opaque pixels.

    Raises:
        EdgekitError: not a decodable image, or fully transparent.
    """
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise EdgekitError(f"{name}: not a decodable image")
    if img.dtype != np.uint8:
        img = (img / 257).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGRA)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    ys, xs = np.nonzero(img[..., 3] > 16)
    if not len(ys):
        raise EdgekitError(f"{name}: fully transparent")
    return img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _background(rng: np.random.Generator, photos: dict[str, np.ndarray],
                size: int) -> tuple[np.ndarray, dict]:
    if not photos:
        return np.full((size, size, 3), 128, np.uint8), {"background": "grey"}
    name = sorted(photos)[rng.integers(len(photos))]
    bg = photos[name]
    side = int(min(bg.shape[:2]) * rng.uniform(0.35, 0.8))
    y = int(rng.integers(0, bg.shape[0] - side + 1))
    x = int(rng.integers(0, bg.shape[1] - side + 1))
    crop = cv2.resize(bg[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
    return crop, {"background": name, "crop": [x, y, side]}


def composite(cutout: np.ndarray, rng: np.random.Generator, photos: dict[str, np.ndarray],
              size: int, flip: bool) -> tuple[np.ndarray, dict]:
    """One ``size`` x ``size`` BGR image: the cut-out scaled, turned, maybe mirrored and
    placed at random on a background crop, under a random light level."""
    bg, info = _background(rng, photos, size)
    angle = float(rng.uniform(-12, 12))
    flipped = bool(flip and rng.random() < 0.5)
    obj = cutout[:, ::-1] if flipped else cutout
    h, w = obj.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    bw, bh = int(h * sin + w * cos) + 1, int(h * cos + w * sin) + 1
    m[:, 2] += (bw - w) / 2, (bh - h) / 2
    obj = cv2.warpAffine(np.ascontiguousarray(obj), m, (bw, bh), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    scale = float(rng.uniform(0.5, 0.85)) * size / max(bw, bh)
    nw, nh = max(1, round(bw * scale)), max(1, round(bh * scale))
    obj = cv2.resize(obj, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1
                     else cv2.INTER_CUBIC)
    x = int(rng.integers(0, size - nw + 1))
    y = int(rng.integers(0, size - nh + 1))
    alpha = obj[..., 3:4].astype(np.float32) / 255
    roi = bg[y:y + nh, x:x + nw].astype(np.float32)
    bg[y:y + nh, x:x + nw] = (obj[..., :3] * alpha + roi * (1 - alpha)).round().astype(np.uint8)
    gain = float(rng.uniform(0.8, 1.2))
    img = np.clip(bg.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    info.update(angle=round(angle, 2), scale=round(scale, 3), xy=[x, y],
                flipped=flipped, gain=round(gain, 3))
    return img, info


def _backgrounds(deb: Path | None, size: int) -> dict[str, np.ndarray]:
    if deb is None:
        return {}
    files = deb_files(deb, "data", lambda p: p.startswith(BACKGROUND_ROOT) and
                      p[len(BACKGROUND_ROOT):] in BACKGROUND_PHOTOS)
    photos = {}
    for path, data in sorted(files.items()):
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise EdgekitError(f"{deb}: {path} is not a decodable image")
        # Crops are later shrunk to `size`; 3x that keeps detail and makes decoding cheap.
        s = 3 * size / min(img.shape[:2])
        photos[path[len(BACKGROUND_ROOT):]] = cv2.resize(img, None, fx=s, fy=s,
                                                         interpolation=cv2.INTER_AREA)
    missing = sorted(set(BACKGROUND_PHOTOS) - set(photos))
    if missing:
        raise EdgekitError(f"{deb}: no {', '.join(missing)} under /{BACKGROUND_ROOT}")
    return photos


def _slug(rel: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", rel.removesuffix(".png")).strip("-")


def _write_images(stage: Path, splits: dict, stamps: dict[str, bytes],
                  photos: dict[str, np.ndarray], per_source: int, size: int,
                  seed: int) -> tuple[list[dict], Result]:
    records, result = [], Result(stage)
    for split, by_class in splits.items():
        for cls, rels in sorted(by_class.items()):
            result.sources.setdefault(split, {})[cls] = len({source_group(r) for r in rels})
            result.counts.setdefault(split, {})[cls] = len(rels) * per_source
            for rel in rels:
                data = stamps[STAMP_ROOT + rel]
                cutout = load_cutout(data, rel)
                for k in range(per_source):
                    rng = np.random.default_rng([seed, zlib.crc32(rel.encode()), k])
                    img, info = composite(cutout, rng, photos, size, cls not in NO_FLIP)
                    name = f"images/{split}/{cls}/{_slug(rel)}_{k}.jpg"
                    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
                    if not ok:
                        raise EdgekitError(f"cannot encode {name}")
                    (stage / name).parent.mkdir(parents=True, exist_ok=True)
                    (stage / name).write_bytes(buf.tobytes())
                    records.append({"file": name, "split": split, "class": cls,
                                    "source": STAMP_ROOT + rel,
                                    "source_sha256": _sha(data), **info})
    return records, result


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def build(out: Path, *, stamps: Pin = STAMPS, backgrounds: Pin | None = BACKGROUNDS,
          classes: list[str] | None = None, per_source: int = 4, size: int = 256,
          seed: int = 0, val: float = 0.15, test: float = 0.30) -> Result:
    """Writes the dataset under ``out`` (replacing an earlier one) and returns its counts.

    Raises:
        EdgekitError: a package missing or not the pinned one, an unknown class, a class
            with too few photos, or ``out/images`` that this builder did not write.
    """
    chosen = classes or list(CLASSES)
    unknown = sorted(set(chosen) - set(CLASSES))
    if unknown:
        raise EdgekitError(f"unknown class {', '.join(unknown)}; known: {', '.join(CLASSES)}")
    if (out / "images").exists() and not (out / "provenance.json").is_file():
        raise EdgekitError(f"{out / 'images'} exists and has no provenance.json beside it: "
                           "not written by train.realdata; choose another --out")
    wanted = {c: CLASSES[c] for c in chosen}
    debs = {"stamps": fetch(stamps, out / "debs")}
    _check_control(debs["stamps"], stamps)
    if backgrounds is not None:
        debs["backgrounds"] = fetch(backgrounds, out / "debs")
        _check_control(debs["backgrounds"], backgrounds)
    copyright_of = {p: f"usr/share/doc/{p.package}/copyright" for p in (stamps, backgrounds) if p}
    files = deb_files(debs["stamps"], "data", lambda p: stamp_class(p, wanted) is not None or
                      p == copyright_of[stamps])
    by_class: dict[str, list[str]] = {}
    for path in sorted(files):
        if (cls := stamp_class(path, wanted)) is not None:
            by_class.setdefault(cls, []).append(path[len(STAMP_ROOT):])
    missing = sorted(set(wanted) - set(by_class))
    if missing:
        raise EdgekitError(f"{debs['stamps']}: no photos for class {', '.join(missing)}")
    splits = split_sources(by_class, seed, val, test)
    photos = _backgrounds(debs.get("backgrounds"), size)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".images-", dir=out))
    try:
        records, result = _write_images(stage, splits, files, photos, per_source, size, seed)
        (out / "provenance.json").unlink(missing_ok=True)  # incomplete until rewritten
        shutil.rmtree(out / "images", ignore_errors=True)
        (stage / "images").replace(out / "images")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    result.out = out
    _write_licences(out, debs, copyright_of, files, stamps, backgrounds)
    settings = {"classes": chosen, "per_source": per_source, "size": size, "seed": seed,
                "fractions": {"val": val, "test": test}}
    packages = {k: {"package": p.package, "version": p.version, "sha256": p.sha256}
                for k, p in (("stamps", stamps), ("backgrounds", backgrounds)) if p}
    write_text(out / "README.md", _readme(result, packages, settings))
    write_json(out / "provenance.json", {
        "packages": packages, "licence": "GPL-2 (tuxpaint-stamps-default), GPL-2+ "
        "(mate-backgrounds); see LICENSES/", "split": "by source photo (a stamp and its "
        "_mirror copy together); no source is in two splits", "settings": settings,
        "sources": result.sources, "counts": result.counts, "images": records})
    return result


def _write_licences(out: Path, debs: dict, copyright_of: dict, stamp_files: dict,
                    stamps: Pin, backgrounds: Pin | None) -> None:
    texts = {stamps: stamp_files.get(copyright_of[stamps])}
    if backgrounds is not None:
        path = copyright_of[backgrounds]
        texts[backgrounds] = deb_files(debs["backgrounds"], "data",
                                       lambda p: p == path).get(path)
    for pin, text in texts.items():
        if text is None:
            raise EdgekitError(f"{pin.package}: the .deb has no /{copyright_of[pin]}")
        write_bytes(out / "LICENSES" / f"{pin.package}.copyright", text)


def _readme(result: Result, packages: dict, settings: dict) -> str:
    lines = ["# Real photographs for held-out accuracy (made by `python -m train.realdata`)", "",
             "Tux Paint's photo stamps (Debian `tuxpaint-stamps-default`, GPL-2), cut-outs "
             "labelled by their folder, pasted on crops of real photos from Debian "
             "`mate-backgrounds` (GPL-2+; or flat grey). Split by source photo: no cut-out "
             "is in two splits. Every image's source, background crop, angle, scale and "
             "light gain are in provenance.json; the licences are in LICENSES/.", "",
             "| split | " + " | ".join(settings["classes"]) + " | images (sources) |",
             "|---|" + "---|" * (len(settings["classes"]) + 1)]
    for split in SPLIT_NAMES:
        c, s = result.counts.get(split, {}), result.sources.get(split, {})
        lines.append(f"| {split} | " + " | ".join(f"{c.get(k, 0)} ({s.get(k, 0)})"
                                                  for k in settings["classes"]) +
                     f" | {sum(c.values())} ({sum(s.values())}) |")
    lines += ["", "Packages: " + ", ".join(f"{p['package']} {p['version']} (sha256 "
                                           f"{p['sha256'][:16]}...)" for p in packages.values()),
              f"Settings: {json.dumps(settings)}", ""]
    return "\n".join(lines)


def _parser() -> Parser:
    p = Parser(prog="python -m train.realdata", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data/real"), help="output folder")
    p.add_argument("--classes", default=",".join(CLASSES), help="comma-separated classes")
    p.add_argument("--per-source", type=int_at_least(1), default=4,
                   help="composites per source photo")
    p.add_argument("--size", type=int_at_least(32), default=256, help="image side, pixels")
    p.add_argument("--seed", type=int, default=0,
                   help="split and composition seed (same seed, same files)")
    p.add_argument("--val-fraction", type=float_in(0.01, 0.5), default=0.15,
                   help="share of each class's source photos in val")
    p.add_argument("--test-fraction", type=float_in(0.01, 0.5), default=0.30,
                   help="share of each class's source photos in the held-out test split")
    p.add_argument("--background", choices=("mate", "grey"), default="mate",
                   help="crops of mate-backgrounds' nature photos, or flat grey")
    p.add_argument("--stamps-deb", type=Path, metavar="PATH",
                   help=f"use this {STAMPS.package}_{STAMPS.version} .deb (sha256-checked)")
    p.add_argument("--backgrounds-deb", type=Path, metavar="PATH",
                   help=f"use this {BACKGROUNDS.package}_{BACKGROUNDS.version} .deb")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stamps = Pin(STAMPS.package, STAMPS.version, STAMPS.sha256, args.stamps_deb)
    backgrounds = (None if args.background == "grey" else
                   Pin(BACKGROUNDS.package, BACKGROUNDS.version, BACKGROUNDS.sha256,
                       args.backgrounds_deb))
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    result = build(args.out, stamps=stamps, backgrounds=backgrounds, classes=classes,
                   per_source=args.per_source, size=args.size, seed=args.seed,
                   val=args.val_fraction, test=args.test_fraction)
    for split in SPLIT_NAMES:
        c, s = result.counts.get(split, {}), result.sources.get(split, {})
        print(f"{split}: {sum(c.values())} images from {sum(s.values())} source photos "
              f"({', '.join(f'{k} {v}' for k, v in sorted(c.items()))})")
    print(f"wrote {result.out / 'images'} and {result.out / 'provenance.json'}")
    return EXIT_OK


if __name__ == "__main__":
    exit_with(main)
