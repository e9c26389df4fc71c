"""The field split: field images (with a device sidecar) held out by device and time."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from train.field import evaluate_field, field_split, group_of, summary
from train.prepare import prepare

CLASSES = ("circle", "square")


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (24, 24, 3), np.uint8)
    path.write_bytes(cv2.imencode(".jpg", img)[1].tobytes())


def _sidecar(image: Path, device: str, source_time_s: float | None, **extra) -> None:
    d = {"device": device, "model_sha256": "ab" * 32, "time": "2026-12-01T10:00:00.000Z",
         "frame": 0, **extra}
    if source_time_s is not None:
        d["source_time_s"] = source_time_s
    image.with_suffix(".json").write_text(json.dumps(d))


def _dataset(root: Path, field: bool = True) -> Path:
    """12 ordinary images per class; with ``field``, 2 devices x 8 scenes x 4 frames of
    field images (scenes 10 s apart, frames 0.2 s apart, classes in turn)."""
    for ci, c in enumerate(CLASSES):
        for i in range(12):
            _jpeg(root / c / f"{c}_{i:02d}.jpg", ci * 100 + i)
    if field:
        for d, device in enumerate(("cam1", "cam2")):
            for scene in range(8):
                c = CLASSES[scene % 2]
                for k in range(4):
                    t = scene * 10 + k * 0.2
                    img = root / c / f"{device}_s{scene}_f{k}.jpg"
                    _jpeg(img, 1000 + d * 100 + scene * 10 + k)
                    _sidecar(img, device, t)
    return root


def _prepare(root: Path, out: Path, seed: int = 0, block: float = 10.0):
    return prepare(root, out, 5, 0.15, 0.15, seed, field_test_fraction=0.3,
                   field_block_seconds=block)


def test_group_is_device_and_time_block():
    assert group_of({"device": "a", "source_time_s": 19.9}, 10) == "a/source:1"
    assert group_of({"device": "a", "source_time_s": 20.0}, 10) == "a/source:2"
    assert group_of({"device": "b", "source_time_s": 19.9}, 10) == "b/source:1"
    # No source clock: the wall-clock time; neither: one undated group per device.
    t = {"device": "a", "time": "2026-12-01T10:00:25.000Z"}
    assert group_of(t, 60) == f"a/time:{1796119225 // 60}"
    assert group_of({"device": "a", "source_time_s": True, "time": "junk"}, 60) == "a/undated"


def test_prepare_holds_out_whole_groups_and_keeps_original_test(tmp_path):
    root = _dataset(tmp_path / "data")
    classes, split, _, report = _prepare(root, tmp_path / "run")
    field = report["field"]
    assert field["images"] == 64 and field["groups"] == 16 and field["block_seconds"] == 10
    test = {p for p, _ in field["test"]}
    assert 0.2 <= len(test) / 64 <= 0.45
    # Whole groups: a (device, scene) is entirely in the field test split or entirely out.
    scenes = {p.rsplit("_f", 1)[0] for p in test}
    assert all(all(f"{s}_f{k}.jpg" in test for k in range(4)) for s in scenes)
    assert field["test_groups"] == sorted(field["test_groups"]) and len(
        field["test_groups"]) == len(scenes)
    assert {c for _, c in field["test"]} == {0, 1}  # every class covered
    trainval = {p for p, _ in split.train + split.val}
    assert not test & trainval
    every = {f"{CLASSES[s % 2]}/{d}_s{s}_f{k}.jpg" for d in ("cam1", "cam2")
             for s in range(8) for k in range(4)}
    assert every - test <= trainval  # the rest of the field images train or validate
    # The original test split holds no field image and is the one the data without field
    # images gets (v1 and v2 are scored on the same original images).
    assert not any("_s" in p for p, _ in split.test)
    plain = _dataset(tmp_path / "plain", field=False)
    _, split0, _, report0 = _prepare(plain, tmp_path / "run0")
    assert split.test == split0.test and "field" not in report0
    assert not any(p.endswith(".json") for p, _ in split.train + split.val + split.test)
    assert report["rejected"] == []  # sidecars are not scanned as broken images
    saved = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert saved["field"]["test"] == field["test"]


def test_field_split_deterministic_and_seeded(tmp_path):
    root = _dataset(tmp_path / "data")
    a = _prepare(root, tmp_path / "a", seed=3)[3]["field"]
    b = _prepare(root, tmp_path / "b", seed=3)[3]["field"]
    assert a == b
    items = [(f"{c}/{j.name}", ci, json.loads(j.with_suffix(".json").read_text()))
             for ci, c in enumerate(CLASSES) for j in sorted((root / c).glob("*_f*.jpg"))]
    assert field_split(items, 0.3, 0.15, 10, 3).test_groups == a["test_groups"]
    others = [field_split(items, 0.3, 0.15, 10, s).test_groups for s in range(4, 8)]
    assert any(g != a["test_groups"] for g in others)


def test_one_group_is_held_out_whole_and_warned(tmp_path, capsys):
    root = _dataset(tmp_path / "data")
    _, split, _, report = _prepare(root, tmp_path / "run", block=3600)
    # Two devices, one hour block each: one device is held out, the other trains.
    assert report["field"]["groups"] == 2 and len(report["field"]["test_groups"]) == 1
    held = report["field"]["test_groups"][0].split("/")[0]
    assert all(Path(p).name.startswith(held) for p, _ in report["field"]["test"])
    assert not any(Path(p).name.startswith(held) for p, _ in split.train + split.val)
    items = [(f"x/{i}.jpg", 0, {"device": "one", "source_time_s": i}) for i in range(5)]
    fs = field_split(items, 0.3, 0.15, 600, 0)
    assert len(fs.test) == 5 and not fs.train and fs.groups == 1


def test_non_sidecar_json_and_broken_sidecar_are_ordinary(tmp_path, capsys):
    root = _dataset(tmp_path / "data", field=False)
    (root / "circle" / "circle_00.json").write_text('{"note": "not a sidecar"}')
    (root / "circle" / "circle_01.json").write_text("{broken")
    _, split, _, report = _prepare(root, tmp_path / "run")
    assert "field" not in report
    names = {p for p, _ in split.train + split.val + split.test}
    assert {"circle/circle_00.jpg", "circle/circle_01.jpg"} <= names
    err = capsys.readouterr().err
    assert "circle_01.json: unreadable sidecar" in err and "circle_00" not in err


def test_evaluate_field_metrics_keys(tmp_path):
    root = _dataset(tmp_path / "data")
    classes, _, _, report = _prepare(root, tmp_path / "run")

    class Always0:  # predicts class 0 for every image
        def predict(self, x, batch_size=None, verbose=0):
            return np.tile([0.9, 0.1], (len(x), 1))

    class Cfg:
        img_size, resize, interpolation, batch_size = 32, "stretch", "linear", 8

    field = evaluate_field(Always0(), root, report, classes, Cfg)
    n0 = sum(1 for _, c in report["field"]["test"] if c == 0)
    assert field["count"] == len(report["field"]["test"])
    assert field["top1"] == pytest.approx(n0 / field["count"])
    assert field["groups"] == report["field"]["test_groups"]
    text = summary({"top1": 0.5, "count": 6}, field)
    assert text.splitlines()[0] == "test top1 0.5000 on 6 held-out images"
    assert text.splitlines()[1].startswith(f"field test top1 {field['top1']:.4f} on "
                                           f"{field['count']} held-out field images")
    assert evaluate_field(Always0(), root, {"layout": "x"}, classes, Cfg) is None
