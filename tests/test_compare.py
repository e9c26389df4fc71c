"""``python -m benchmarks compare OLD NEW --data FOLDER``: two models on the same images,
answers matched by label name; bad input gets one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.compare import collect, compare

PER_CLASS = 6


@pytest.fixture(scope="module")
def data(sample, tmp_path_factory) -> Path:
    """A few sample images per class; two of each class carry a field sidecar."""
    root = tmp_path_factory.mktemp("cmpdata")
    for d in sorted((sample / "images").iterdir()):
        (root / d.name).mkdir()
        for i, p in enumerate(sorted(d.glob("*.jpg"))[:PER_CLASS]):
            shutil.copyfile(p, root / d.name / p.name)
            if i < 2:
                (root / d.name / p.with_suffix(".json").name).write_text(json.dumps(
                    {"device": "cam1", "model_sha256": "ab" * 32, "reason": "random"}))
    (root / "circle" / ".tmp-copy.jpg").write_bytes(b"half")  # a copy in progress: ignored
    return root


def relabelled(exported: Path, tmp: Path, name: str, rename: dict[str, str]) -> Path:
    """A copy of the float model whose manifest renames labels (same outputs)."""
    folder = tmp / name
    folder.mkdir()
    shutil.copyfile(exported / "model_float32.tflite", folder / "model.tflite")
    m = json.loads((exported / "manifest.json").read_text())
    m["labels"] = [rename.get(c, c) for c in m["labels"]]
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder / "model.tflite"


def test_collect_finds_labels_and_field_images(data):
    images = collect(data)
    assert len(images) == 4 * PER_CLASS
    assert sum(im.field for im in images) == 8
    assert {im.label for im in images} == {"circle", "square", "star", "triangle"}


def test_same_model_agrees_with_itself(exported, data):
    r = compare(exported / "model_float32.tflite", exported / "model_float32.tflite", data)
    assert r["agreement"] == 1.0 and r["differ"]["images"] == 0
    assert r["top1"]["old"] == r["top1"]["new"]
    assert r["images"] == 24 and r["field_images"] == 8
    per = r["per_class"]
    assert sum(c["images"] for c in per.values()) == 24
    assert r["top1"]["old"] == pytest.approx(sum(c["old"] * c["images"] for c in per.values())
                                             / 24, abs=1e-3)


def test_labels_are_matched_by_name_not_index(exported, data, tmp_path):
    """Swapping two names in OLD's manifest moves its answers between those classes."""
    true = exported / "model_float32.tflite"
    swapped = relabelled(exported, tmp_path, "swapped", {"circle": "square",
                                                          "square": "circle"})
    r = compare(swapped, true, data)
    rows = r["rows"]
    moved = [x for x in rows if x["new"] in ("circle", "square")]
    assert r["differ"]["images"] == len(moved)
    assert r["agreement"] == pytest.approx(1 - len(moved) / len(rows), abs=1e-4)
    right = sum(x["new"] == x["label"] for x in moved)
    assert r["differ"]["new_right"] == right
    assert r["top1"]["new"] - r["top1"]["old"] == pytest.approx(
        (right - sum(x["old"] == x["label"] for x in moved)) / len(rows), abs=1e-3)


def test_old_without_a_class_is_reported_new_without_one_refused(exported, data, tmp_path,
                                                                  capsys):
    true = exported / "model_float32.tflite"
    blob = relabelled(exported, tmp_path, "blob", {"circle": "blob"})
    r = compare(blob, true, data)
    assert r["unknown_to_old"] == ["circle"] and r["per_class"]["circle"]["old"] == 0.0
    assert main(["compare", str(true), str(blob), "--data", str(data)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the NEW model has no class 'circle'" in err[0]
    assert str(data / "circle") in err[0]


def test_cli_prints_table_and_writes_json_and_out(exported, data, tmp_path, capsys):
    out_json, out_dir = tmp_path / "cmp.json", tmp_path / "cmp"
    status = main(["compare", str(exported / "model_float32.tflite"),
                   str(exported / "model_int8.tflite"), "--data", str(data),
                   "--json", str(out_json), "--out", str(out_dir)])
    assert status == 0
    table = capsys.readouterr().out
    r = json.loads(out_json.read_text())
    assert f"{100 * r['top1']['new']:6.1f}" in table.splitlines()[5]
    assert "field top-1" in table and "agreement" in table
    assert json.loads((out_dir / "compare.json").read_text())["images"] == 24
    lines = (out_dir / "differences.csv").read_text().splitlines()
    assert len(lines) == 1 + r["differ"]["images"]
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temp left


def test_strict_fails_when_new_is_less_accurate(exported, data, tmp_path, capsys):
    true = exported / "model_float32.tflite"
    swapped = relabelled(exported, tmp_path, "swapped", {"circle": "square",
                                                          "square": "circle"})
    assert main(["compare", str(swapped), str(true), "--data", str(data), "--strict"]) == 0
    assert main(["compare", str(true), str(swapped), "--data", str(data), "--strict"]) == 3
    assert "points below OLD's" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["no-folder", "broken-model", "missing-model", "no-data-flag"])
def test_bad_input_is_one_line(exported, data, tmp_path, capsys, case):
    good = str(exported / "model_float32.tflite")
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer" * 10)
    argv, expect = {
        "no-folder": (["compare", good, good, "--data", str(tmp_path / "nope")],
                      "data folder not found"),
        "broken-model": (["compare", good, str(broken), "--data", str(data)], "broken.tflite"),
        "missing-model": (["compare", str(tmp_path / "gone.tflite"), good, "--data",
                           str(data)], "OLD model not found"),
        "no-data-flag": (["compare", good, good], "needs --data FOLDER"),
    }[case]
    assert main(argv) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
