"""train.realdata: the real-photo dataset builder, on tiny .debs made here (no download),
and (slow) on the pinned Debian package when data/real/debs holds it."""

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.errors import EdgekitError
from tests.conftest import ROOT
from train import realdata
from train.realdata import BACKGROUND_PHOTOS, STAMPS, Pin, build, fetch, split_sources


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            ti = tarfile.TarInfo("./" + name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _deb(path: Path, package: str, version: str, files: dict[str, bytes]) -> Pin:
    """Writes a minimal .deb (ar: debian-binary, control.tar.xz, data.tar.xz); its Pin."""
    members = [("debian-binary", b"2.0\n"),
               ("control.tar.xz", _tar_xz({"control": f"Package: {package}\nVersion: "
                                                      f"{version}\n".encode()})),
               ("data.tar.xz", _tar_xz(files))]
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return Pin(package, version, hashlib.sha256(out).hexdigest(), path)


def _cutout(seed: int) -> bytes:
    """A BGRA PNG: a textured disc on a transparent background, different per seed."""
    rng = np.random.default_rng(seed)
    img = np.zeros((40, 50, 4), np.uint8)
    img[..., :3] = rng.integers(0, 256, (40, 50, 3))
    cv2.circle(img, (25, 20), 15, (0, 0, 0, 255), -1)
    img[..., 3] = np.where(img[..., 3] > 0, 255, 0)
    return cv2.imencode(".png", img)[1].tobytes()


STAMP = realdata.STAMP_ROOT


@pytest.fixture
def debs(tmp_path) -> tuple[Pin, Pin]:
    files = {f"{STAMP}animals/birds/bird{i}.png": _cutout(i) for i in range(5)}
    files.update({f"{STAMP}food/fruit/fruit{i}.png": _cutout(10 + i) for i in range(4)})
    files[f"{STAMP}food/fruit/fruit0_mirror.png"] = _cutout(99)  # one source with fruit0
    files[f"{STAMP}food/fruit/cartoon/apple.png"] = _cutout(20)  # a drawing: never used
    files[f"{STAMP}food/fruit/pear.svg"] = b"<svg/>"
    files[f"{STAMP}food/fruit/fruit0.txt"] = b"Fruit."
    files["usr/share/doc/tuxpaint-stamps-default/copyright"] = b"stamps: GPL-2\n"
    stamps = _deb(tmp_path / "stamps.deb", STAMPS.package, STAMPS.version, files)
    jpg = cv2.imencode(".jpg", np.full((120, 160, 3), 90, np.uint8))[1].tobytes()
    bg = {realdata.BACKGROUND_ROOT + n: jpg for n in BACKGROUND_PHOTOS}
    bg["usr/share/doc/mate-backgrounds/copyright"] = b"backgrounds: GPL-2+\n"
    backgrounds = _deb(tmp_path / "bg.deb", "mate-backgrounds", "1.26.0-1", bg)
    return stamps, backgrounds


def test_build_splits_by_source_with_class_folders_and_provenance(tmp_path, debs):
    out = tmp_path / "real"
    result = build(out, stamps=debs[0], backgrounds=debs[1], classes=["bird", "fruit"],
                   per_source=2, size=64)
    prov = json.loads((out / "provenance.json").read_text())
    for split in ("train", "val", "test"):
        assert sorted(d.name for d in (out / "images" / split).iterdir()) == ["bird", "fruit"]
    by_split: dict[str, set[str]] = {}
    for rec in prov["images"]:
        by_split.setdefault(rec["split"], set()).add(realdata.source_group(rec["source"]))
        img = cv2.imread(str(out / rec["file"]))
        assert img.shape == (64, 64, 3)
        assert rec["file"].startswith(f"images/{rec['split']}/{rec['class']}/")
        assert rec["background"] in BACKGROUND_PHOTOS
    assert not (by_split["train"] & by_split["test"] or by_split["train"] & by_split["val"]
                or by_split["val"] & by_split["test"])
    sources = {rec["source"].rsplit("/", 1)[1] for rec in prov["images"]}
    assert sources == {f"bird{i}.png" for i in range(5)} | {f"fruit{i}.png" for i in range(4)} \
        | {"fruit0_mirror.png"}
    split_of = {rec["source"].rsplit("/", 1)[1]: rec["split"] for rec in prov["images"]}
    assert split_of["fruit0.png"] == split_of["fruit0_mirror.png"]
    on_disk = sorted(str(p.relative_to(out)) for p in (out / "images").rglob("*.jpg"))
    assert on_disk == sorted(rec["file"] for rec in prov["images"])
    assert len(on_disk) == 2 * 10 == sum(sum(c.values()) for c in result.counts.values())
    assert prov["packages"]["stamps"]["sha256"] == debs[0].sha256
    assert (out / "LICENSES" / "mate-backgrounds.copyright").read_text() == \
        "backgrounds: GPL-2+\n"
    again = build(tmp_path / "again", stamps=debs[0], backgrounds=debs[1],
                  classes=["bird", "fruit"], per_source=2, size=64)
    assert again.counts == result.counts
    assert all((tmp_path / "again" / f).read_bytes() == (out / f).read_bytes()
               for f in on_disk)


def test_cli_grey_background_and_summary(tmp_path, debs, capsys, monkeypatch):
    monkeypatch.setattr(realdata, "STAMPS", Pin(STAMPS.package, STAMPS.version, debs[0].sha256))
    out = tmp_path / "grey"
    status = realdata.main(["--out", str(out), "--classes", "bird,fruit", "--per-source", "1",
                            "--size", "48", "--background", "grey",
                            "--stamps-deb", str(debs[0].path)])
    assert status == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        "train: 5 images from 4 source photos (bird 2, fruit 3)",  # fruit0 and its mirror
        "val: 2 images from 2 source photos (bird 1, fruit 1)",
        "test: 3 images from 3 source photos (bird 2, fruit 1)"]
    prov = json.loads((out / "provenance.json").read_text())
    assert "backgrounds" not in prov["packages"]
    rec = prov["images"][0]
    assert rec["background"] == "grey"
    corner = cv2.imread(str(out / rec["file"]))[0, 0].astype(int)
    assert np.abs(corner - 128 * rec["gain"]).max() <= 6


@pytest.mark.parametrize("case, expect", [
    ("missing", r"no such file \(the tuxpaint-stamps-default \.deb\)"),
    ("sha", r"sha256 [0-9a-f]{16}\.\.\., expected 6db6c1bfc870a47f\.\.\. "
            r"\(tuxpaint-stamps-default 2022\.06\.04-1, pinned\)"),
])
def test_cli_bad_package_is_one_line(tmp_path, debs, capsys, case, expect):
    deb = tmp_path / "nope.deb" if case == "missing" else debs[0].path
    status = realdata.main(["--out", str(tmp_path / "o"), "--stamps-deb", str(deb),
                            "--background", "grey"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and err[0].startswith(f"error: {deb}: ")
    assert re.search(expect, err[0])
    assert not (tmp_path / "o" / "images").exists()


def test_no_apt_get_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EdgekitError, match=r"apt-get not found: cannot download "
                       r"tuxpaint-stamps-default 2022\.06\.04-1; pass the \.deb with "
                       r"--stamps-deb"):
        fetch(STAMPS, tmp_path / "cache")


def test_other_version_or_not_a_deb(tmp_path, debs):
    other = _deb(tmp_path / "other.deb", STAMPS.package, "2024.01.01-1", {"x": b"1"})
    with pytest.raises(EdgekitError, match=r"package tuxpaint-stamps-default 2024\.01\.01-1, "
                       r"expected tuxpaint-stamps-default 2022\.06\.04-1"):
        build(tmp_path / "o", stamps=Pin(STAMPS.package, STAMPS.version, other.sha256,
                                         other.path), backgrounds=None)
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"PK\x03\x04 not an ar archive")
    pin = Pin(STAMPS.package, STAMPS.version, hashlib.sha256(junk.read_bytes()).hexdigest(),
              junk)
    with pytest.raises(EdgekitError, match=r"junk\.deb: not a Debian package \(no ar header\)"):
        build(tmp_path / "o", stamps=pin, backgrounds=None)


def test_too_few_sources_and_foreign_output_are_refused(tmp_path, debs):
    with pytest.raises(EdgekitError, match=r"class coin: 2 source photos, need at least 3"):
        split_sources({"coin": ["a.png", "b.png", "b_mirror.png"]}, 0, 0.15, 0.3)
    (tmp_path / "mine" / "images").mkdir(parents=True)
    with pytest.raises(EdgekitError, match=r"has no provenance\.json beside it"):
        build(tmp_path / "mine", stamps=debs[0], backgrounds=None, classes=["bird"])
    with pytest.raises(EdgekitError, match=r"unknown class cat; known: bird, mammal"):
        build(tmp_path / "o", stamps=debs[0], backgrounds=None, classes=["cat"])


REAL_DEB = ROOT / "data" / "real" / "debs" / f"{STAMPS.package}_{STAMPS.version}_all.deb"


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DEB.is_file(), reason=f"no {REAL_DEB} (make real-data)")
def test_real_package_classes_and_split(tmp_path):
    result = build(tmp_path / "real", stamps=Pin(STAMPS.package, STAMPS.version,
                                                 STAMPS.sha256, REAL_DEB),
                   backgrounds=None, per_source=1, size=64)
    total = {c: sum(result.sources[s].get(c, 0) for s in result.sources)
             for c in realdata.CLASSES}
    assert total == {"bird": 35, "mammal": 65, "fruit": 26, "vegetable": 18, "flower": 24,
                     "coin": 26}
    assert sum(result.counts["test"].values()) == 58
