"""Data in: layouts, the pre-scan of bad files, stratified splits and class weights."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from edge_runtime import EdgekitError
from train.prepare import class_weights, prepare


def _jpg(path, color=(0, 0, 255), size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), color, np.uint8))
    return path


def _folders(root, n=6, classes=("a", "b")):
    for i, c in enumerate(classes):
        for k in range(n):
            _jpg(root / c / f"{k}.jpg", (40 * i, 100, 200))
    return root


def test_prescan_rejects_bad_files_and_records_conversions(tmp_path):
    root = _folders(tmp_path / "data")
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "notes.txt").write_text("not an image")
    noisy = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    full = cv2.imencode(".jpg", noisy)[1].tobytes()
    (root / "a" / "cut.jpg").write_bytes(full[: len(full) // 2])  # header intact, data cut
    _jpg(root / "b" / "tiny.jpg", size=8)
    Image.new("CMYK", (40, 40), (0, 50, 100, 0)).save(root / "b" / "cmyk.jpg")
    Image.new("I;16", (40, 40)).save(root / "b" / "deep.png")
    outside = _jpg(tmp_path / "elsewhere" / "x.jpg")
    (root / "b" / "link.jpg").symlink_to(outside)
    out = tmp_path / "run"
    out.mkdir()
    classes, split, _, report = prepare(root, out, 5, 0.15, 0.15, seed=0)
    reasons = {r["path"]: r["reason"] for r in report["rejected"]}
    assert reasons["a/empty.jpg"] == "zero-byte file"
    assert reasons["a/notes.txt"] == "not an image"
    assert reasons["a/cut.jpg"] == "truncated JPEG file"
    assert reasons["b/tiny.jpg"].startswith("tiny image 8x8")
    assert "outside the data folder" in reasons["b/link.jpg"]
    converted = {r["path"]: r["reason"] for r in report["converted"]}
    assert converted == {"b/cmyk.jpg": "CMYK converted to RGB",
                         "b/deep.png": "16-bit converted to 8-bit"}
    used = {p for part in (split.train, split.val, split.test) for p, _ in part}
    assert not used & set(reasons) and {"b/cmyk.jpg", "b/deep.png"} <= used
    assert json.loads((out / "data_report.json").read_text())["layout"] == "class-folders"


def test_too_few_images_names_the_class(tmp_path):
    root = _folders(tmp_path / "data", n=6)
    for p in list((root / "b").iterdir())[:3]:
        p.unlink()
    with pytest.raises(EdgekitError, match="class 'b' has 3 images, at least 5 needed"):
        prepare(root, tmp_path / "run", 5, 0.15, 0.15, seed=0)


def test_presplit_layout_keeps_test_folder_as_held_out(tmp_path):
    root = tmp_path / "data"
    for part, n in (("train", 8), ("val", 2), ("test", 3)):
        _folders(root / part, n)
    (tmp_path / "run").mkdir()
    classes, split, _, report = prepare(root, tmp_path / "run", 2, 0.15, 0.15, seed=0)
    assert report["layout"] == "presplit" and classes == ["a", "b"]
    assert all(p.startswith("test/") for p, _ in split.test) and len(split.test) == 6
    assert all(p.startswith("val/") for p, _ in split.val)
    assert all(p.startswith("train/") for p, _ in split.train)


def test_split_is_stratified_and_fixed_by_seed(tmp_path):
    root = _folders(tmp_path / "data", n=20, classes=("a", "b", "c"))
    (tmp_path / "r1").mkdir()
    (tmp_path / "r2").mkdir()
    _, s1, _, _ = prepare(root, tmp_path / "r1", 5, 0.15, 0.15, seed=3)
    _, s2, _, _ = prepare(root, tmp_path / "r2", 5, 0.15, 0.15, seed=3)
    assert s1 == s2
    assert sorted(c for _, c in s1.test) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_csv_pixel_csv_and_jsonl_layouts(tmp_path):
    imgs = _folders(tmp_path / "imgs", n=6)
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("path,label\n" + "".join(
        f"imgs/{c}/{k}.jpg,{c}\n" for c in "ab" for k in range(6)))
    (tmp_path / "r1").mkdir()
    classes, split, _, rep = prepare(csv_file, tmp_path / "r1", 5, 0.15, 0.15, 0)
    assert rep["layout"] == "csv" and classes == ["a", "b"] and len(split.train) == 8

    pixels = tmp_path / "sign.csv"
    rows = ["label," + ",".join(f"pixel{i}" for i in range(28 * 28))]
    for k in range(12):
        rows.append(f"{k % 2}," + ",".join(str((i * 7 + k) % 256) for i in range(28 * 28)))
    pixels.write_text("\n".join(rows) + "\n")
    (tmp_path / "r2").mkdir()
    classes, split, root, rep = prepare(pixels, tmp_path / "r2", 5, 0.15, 0.15, 0)
    assert rep["layout"] == "pixel-csv" and classes == ["0", "1"]
    assert cv2.imread(str(root / split.train[0][0]), cv2.IMREAD_UNCHANGED).shape == (28, 28)
    assert {r["reason"] for r in rep["converted"]} == {"grayscale converted to RGB"}

    jsonl = tmp_path / "data.jsonl"
    lines = []
    for k in range(6):
        lines.append(json.dumps({"image": f"imgs/a/{k}.jpg", "label": "a"}))
        data = (imgs / "b" / f"{k}.jpg").read_bytes()
        lines.append(json.dumps({"image": base64.b64encode(data).decode(), "label": "b"}))
    jsonl.write_text("\n".join(lines) + "\n")
    (tmp_path / "r3").mkdir()
    classes, split, _, rep = prepare(jsonl, tmp_path / "r3", 5, 0.15, 0.15, 0)
    assert rep["layout"] == "jsonl" and classes == ["a", "b"] and not rep["rejected"]


def test_class_weights_balance_the_loss(tmp_path):
    from train.data import Split

    split = Split([("x", 0)] * 30 + [("y", 1)] * 10, [], [])
    w = class_weights(split, 2)
    assert w[0] * 30 == pytest.approx(w[1] * 10) and w[1] == pytest.approx(2.0)
