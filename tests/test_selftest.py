"""Golden cases embedded in a model and replayed by edge_runtime.selftest."""

from __future__ import annotations

import json
import shutil

import cv2
import pytest

from edge_runtime import selftest as st
from edge_runtime.classify import Classifier
from tests.conftest import ROOT

MODEL = "mobilenet_v2_1.0_224_quant.tflite"
PHOTOS = ("cat.bmp", "parrot.jpg", "grace_hopper.bmp", "hot_dog.jpg")


@pytest.fixture(scope="module")
def golden(tmp_path_factory, coral):
    """Coral's MobileNetV2 with golden cases from Coral's photos, and its labels."""
    labels = coral / "imagenet_labels.txt"
    clf = Classifier(coral / MODEL, labels=labels)
    cases = st.make_cases(clf, [(p, cv2.imread(str(coral / p))) for p in PHOTOS])
    out = tmp_path_factory.mktemp("golden")
    model = out / "model.tflite"
    model.write_bytes(st.embed_cases((coral / MODEL).read_bytes(), cases))
    return model, labels, cases


def test_cases_are_recorded_with_margins(golden):
    model, _, cases = golden
    # Four photos: the three widest margins (one per class), and the fourth as a narrow one.
    kinds = [c["kind"] for c in cases["cases"]]
    assert kinds == ["wide"] * st.MAX_CASES + ["narrow"]
    margins = [c["margin"] for c in cases["cases"]]
    assert margins[-1] == min(margins) and margins[-1] > 2 * cases["tolerance"]
    top1 = {c["name"]: c["top"][0]["label"] for c in cases["cases"]}
    assert top1["parrot.jpg"] == "macaw"
    assert st.read_cases(model)["cases"][0]["input_sha256"] == cases["cases"][0]["input_sha256"]
    assert cases["tolerance"] == pytest.approx(st.QUANT_STEPS / 256)  # uint8 output steps


def test_passes_on_the_machine_that_made_it(golden):
    model, labels, _ = golden
    report = st.run_selftest(model, labels=labels)
    assert report.status == "pass", report.failure_lines()
    assert all(c.got_top1 == c.expected_top1 for c in report.cases)
    assert f"{len(PHOTOS)}/{len(PHOTOS)} golden cases" in report.summary()


def test_wrong_interpolation_fails_on_the_digest(golden):
    model, labels, _ = golden
    report = st.run_selftest(model, labels=labels, interpolation="linear")
    assert report.status == "fail"
    assert all("input digest differs" in c.problems[0] for c in report.cases)


def test_swapped_labels_fail(golden, tmp_path):
    model, labels, _ = golden
    lines = labels.read_text().splitlines()
    lines[88], lines[89] = lines[89], lines[88]  # macaw is class 89 (background first)
    swapped = tmp_path / "labels.txt"
    swapped.write_text("\n".join(lines) + "\n")
    report = st.run_selftest(model, labels=swapped)
    assert report.status == "fail"
    assert any("labels in use" in p for p in report.problems)
    parrot = next(c for c in report.cases if c.name == "parrot.jpg")
    assert any("labels swapped" in p for p in parrot.problems)


def test_corrupted_copy_fails_on_the_hash_without_loading(golden, tmp_path):
    model, labels, _ = golden
    copy = tmp_path / "model.tflite"
    shutil.copy(model, copy)
    norm = Classifier(model, labels=labels).normalization
    manifest = {"labels": labels.read_text().splitlines(),
                "input_size": {"height": 224, "width": 224}, "interpolation": "area",
                "normalization": {"mean": norm.mean, "std": norm.std},
                "model_sha256": {"model.tflite": st.file_sha256(copy)}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    intact = st.run_selftest(copy)
    assert intact.status == "pass", intact.failure_lines()
    data = bytearray(copy.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4096] = bytes(b ^ 0xFF for b in data[mid:mid + 4096])
    copy.write_bytes(bytes(data))
    report = st.run_selftest(copy)
    assert report.status == "fail"
    assert "differs from the manifest's" in report.problems[0]
    assert report.cases == ()


def test_choose_cases_keeps_the_widest_and_the_narrowest():
    margins = [(0.9, 0), (0.8, 0), (0.3, 1), (0.7, 2), (0.2, 1), (0.5, 0), (0.1, 2)]
    chosen = st.choose_cases(margins, max_cases=3, narrow=2)
    assert chosen == [(0, "wide"), (3, "wide"), (2, "wide"), (6, "narrow"), (4, "narrow")]
    assert st.choose_cases(margins[:2], max_cases=3, narrow=2) == [(0, "wide"), (1, "wide")]
    assert st.choose_cases([], 3, 2) == []


def test_model_without_cases_is_skipped(coral):
    report = st.run_selftest(coral / MODEL)
    assert report.status == "skip" and report.ok
    assert "no golden cases" in report.summary()


def test_margin_filter_drops_ambiguous_images(golden, coral, monkeypatch):
    _, labels, _ = golden
    clf = Classifier(coral / MODEL, labels=labels)
    cat = cv2.imread(str(coral / "cat.bmp"))
    grey = cat.copy()
    grey[:] = 128  # a flat image: no confident class
    images = [("cat", cat), ("flat", grey)]

    def margins(tolerance: float) -> dict[str, float]:
        monkeypatch.setattr(st, "score_tolerance", lambda fc: tolerance)
        cases = st.make_cases(clf, images)
        assert cases["tolerance"] == tolerance
        return {c["name"]: c["top"][0]["score"] - c["top"][1]["score"] for c in cases["cases"]}

    every = margins(0.0)  # no filter: both kept, with their top-1 margins
    assert set(every) == {"cat", "flat"} and every["flat"] < every["cat"], every
    # A tolerance whose doubled band covers the flat image's margin, not the cat's.
    assert set(margins(every["flat"] / 2)) == {"cat"}
    assert set(margins(every["cat"] / 2)) == set()
    assert set(margins(every["flat"] / 2.5)) == {"cat", "flat"}


def _selftest_cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "edge_runtime", "selftest", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_pass_fail_and_missing(golden, tmp_path):
    model, labels, _ = golden
    ok = _selftest_cli("--model", model, "--labels", labels, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "pass"
    bad = _selftest_cli("--model", model, "--labels", labels, "--interpolation", "linear")
    assert bad.returncode == 1
    failed = [ln for ln in bad.stderr.splitlines() if ln.startswith("selftest: ")]
    assert len(failed) >= st.MAX_CASES and all(" case " in ln for ln in failed)
    assert f"selftest FAILED: 0/{len(PHOTOS)}" in bad.stdout
    missing = _selftest_cli("--model", tmp_path / "none.tflite")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == \
        f"error: model not found: {tmp_path / 'none.tflite'}"
    assert "Traceback" not in missing.stderr


def test_entry_without_cases_is_skipped_not_failed(golden, tmp_path):
    model, labels, _ = golden
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(st.embed_cases(model.read_bytes(), {"version": 1, "cases": []}))
    report = st.run_selftest(empty, labels=labels)
    assert report.status == "skip" and "holds no cases" in report.note
