"""The end-to-end slice on tiny settings: train -> convert -> classify -> camera -> bench."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edge_runtime import Classifier, load_manifest
from tests.conftest import ROOT, run_cli


def test_sample_data_is_deterministic_and_complete(sample, tmp_path):
    from train.sample_data import CLASSES, generate

    classes = sorted(p.name for p in (sample / "images").iterdir())
    assert classes == sorted(CLASSES) and len(classes) >= 4
    for c in classes:
        assert len(list((sample / "images" / c).glob("*.jpg"))) == 60
    again = generate(tmp_path / "again", per_class=60, frames=0, seed=1)
    a = (sample / "images/star/star_0007.jpg").read_bytes()
    assert a == (again / "images/star/star_0007.jpg").read_bytes()
    import cv2

    cap = cv2.VideoCapture(str(sample / "video.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 60
    cap.release()


def test_run_folder_contents(trained_run):
    for name in ("model.keras", "labels.txt", "manifest.json", "metrics.json", "history.csv",
                 "training_curves.png"):
        assert (trained_run / name).is_file(), name
    m = load_manifest(trained_run / "manifest.json")
    assert m.labels == ["circle", "square", "star", "triangle"]
    assert m.input_size == (96, 96) and m.color_order == "RGB"
    split = m.extra["data"]["split"]
    train_files = {p for p, _ in split["train"]}
    test_files = {p for p, _ in split["test"]}
    assert train_files and test_files and not train_files & test_files
    assert not test_files & {p for p, _ in split["val"]}
    # Stratified: every class in the held-out split.
    assert {c for _, c in split["test"]} == {0, 1, 2, 3}
    metrics = json.loads((trained_run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["count"] == len(split["test"])  # every held-out image scored, only those
    cm = test["confusion_matrix"]  # rows: true class, summing to each class's test images
    assert [sum(row) for row in cm] == [sum(c == i for _, c in split["test"]) for i in range(4)]
    assert test["top1"] == pytest.approx(sum(cm[i][i] for i in range(4)) / test["count"])
    assert (trained_run / "labels.txt").read_text().split() == m.labels


def test_trained_model_learned_something(trained_run):
    # Chance is 0.25 on four balanced classes; a working pipeline does far better even
    # after a few short epochs (a BatchNorm-statistics bug would sit at chance).
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["test"]["top1"] >= 0.8


def test_float32_agrees_with_keras(exported):
    report = json.loads((exported / "convert_report.json").read_text())
    f32 = report["variants"]["float32"]
    assert f32["agreement"] >= 0.99
    assert f32["max_prob_error"] < 1e-3
    assert f32["size_bytes"] == (exported / "model_float32.tflite").stat().st_size


def test_int8_is_full_integer_and_agrees_with_float(exported):
    clf = Classifier(exported / "model_int8.tflite")
    assert clf.spec.dtype == np.uint8
    out = clf.interpreter.get_output_details()[0]
    assert out["dtype"] == np.uint8
    report = json.loads((exported / "convert_report.json").read_text())
    assert report["variants"]["int8"]["calibration_images"] >= 100
    f32 = Classifier(exported / "model_float32.tflite")
    from train.data import load_arrays, load_run

    manifest, split, root = load_run(exported.parent)
    x, _, _ = load_arrays(root, split.test, manifest.input_size, manifest.resize,
                          manifest.interpolation)
    a = np.array([f32.scores(img).argmax() for img in x])
    b = np.array([clf.scores(img).argmax() for img in x])
    assert (a == b).mean() >= 0.9


def test_exported_folder_is_self_describing(exported):
    m = load_manifest(exported / "manifest.json")
    assert m.labels == ["circle", "square", "star", "triangle"]
    assert m.extra["provenance"]["source_sha256"]
    assert set(m.extra["variants"]) == {"float32", "int8"}
    assert (exported / "labels.txt").read_text().split() == m.labels


def test_classify_cli_reads_manifest(exported, sample):
    img = sorted((sample / "images" / "square").glob("*.jpg"))[0]
    r = run_cli("edge_runtime", "classify", "--json", "--top-k", "4",
                "--model", str(exported / "model_float32.tflite"), str(img))
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert {c["label"] for c in row["top"]} == {"circle", "square", "star", "triangle"}
    assert sum(c["score"] for c in row["top"]) == pytest.approx(1.0, abs=1e-3)


def test_camera_loop_over_video(exported, sample, tmp_path):
    out = tmp_path / "cam.jsonl"
    r = run_cli("edge_runtime", "run", "--model", str(exported / "model_int8.tflite"),
                "--source", str(sample / "video.avi"), "--output", str(out))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["frame"] for row in rows] == list(range(60))
    assert set(rows[0]) == {"time", "frame", "index", "label", "score", "inference_ms"}
    assert all(row["inference_ms"] > 0 for row in rows)
    from benchmarks.video_check import video_accuracy

    assert video_accuracy(out, sample / "video_labels.txt")["accuracy"] >= 0.8


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_camera_loop_stops_cleanly_on_signal(exported, sample, sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "run", "--loop",
         "--model", str(exported / "model_float32.tflite"), "--source", str(sample / "video.avi")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # wait until it is classifying
        assert json.loads(first)["frame"] == 0
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 2.0
    finally:
        proc.kill()
    assert proc.returncode == (130 if sig == signal.SIGINT else 0), err
    assert "Traceback" not in err and "stopped by signal" in err


def test_benchmarks_write_report(exported):
    from benchmarks import run

    report = run(exported.parent, threads=[1], runs=5, warmup=1)
    results = json.loads((report.parent / "results.json").read_text())
    rows = results["rows"]
    converted = json.loads((exported / "convert_report.json").read_text())["variants"]
    assert {r["variant"] for r in rows} == {"float32", "int8"}
    for r in rows:
        assert r["threads"] == 1 and r["size_bytes"] > 0
        # The same model on the same held-out images scores what the conversion measured.
        assert r["top1"] == pytest.approx(converted[r["variant"]]["top1"], abs=1e-9)
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert (report.parent / "results.csv").read_text().count("\n") == 3
    assert (report.parent / "latency_vs_accuracy.png").stat().st_size > 1000
    assert "| int8 | 1 |" in report.read_text()


def test_camera_loop_from_profile(exported, sample, tmp_path):
    profile = tmp_path / "dev.yaml"
    profile.write_text(f"name: dev\nmodel:\n  path: {exported / 'model_int8.tflite'}\n"
                       f"camera:\n  source: {sample / 'video.avi'}\n  flip: horizontal\n"
                       "classify:\n  threshold: 0.99\n")
    out = tmp_path / "out.jsonl"
    r = run_cli("edge_runtime", "run", "--config", str(profile), "--max-frames", "7",
                "--set", f"output.jsonl={out}")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 7
    # Below the profile's threshold a frame's label is null, never a wrong guess.
    assert all((row["label"] is None) == (row["score"] < 0.99) for row in rows)
