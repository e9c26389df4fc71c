"""Keeping and drift in the running daemon, with the shared tiny model: kept pairs end to
end, a full disk that never stops inference, drift on /metrics and /healthz, hot reload."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil

import cv2
import numpy as np
import pytest

from edge_runtime import Classifier
from edge_runtime.camera import parse_source
from edge_runtime.capture import Capture
from edge_runtime.cli import build_parser
from edge_runtime.config import load_config
from edge_runtime.drift import make_baseline
from edge_runtime.keep import Keeper
from edge_runtime.keepstore import KeepStore
from edge_runtime.loop import Daemon, StopFlag
from tests.conftest import run_cli


def _pairs(keep_dir):
    sides = sorted(keep_dir.rglob("*.json"))
    assert all(s.with_suffix(".jpg").is_file() for s in sides)
    assert not [p for p in keep_dir.rglob(".*")]  # no temporary file left behind
    return [json.loads(s.read_text()) for s in sides], sides


def test_run_keep_dir_writes_pairs_with_the_contract_sidecar(exported, sample, tmp_path):
    model = exported / "model_int8.tflite"
    keep, out = tmp_path / "keep", tmp_path / "r.jsonl"
    r = run_cli("edge_runtime", "run", "--model", str(model), "--source",
                str(sample / "video.avi"), "--output", str(out), "--keep-dir", str(keep),
                "--keep-max-per-minute", "0", "--set", "keep.random=1",
                "--set", "keep.duplicate_diff=0", "--set", "keep.queue=100",
                "--set", "keep.device=cam-1", "--set", "output.details=true")
    assert r.returncode == 0, r.stderr
    assert f"keeping frames in {keep}" in r.stderr
    assert f"; kept 60 frames in {keep}\n" in r.stderr  # the final line
    rows = {x["frame"]: x for x in map(json.loads, out.read_text().splitlines())}
    docs, sides = _pairs(keep)
    assert sorted(d["frame"] for d in docs) == sorted(rows) == list(range(60))
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    for doc, side in zip(docs, sides):
        row = rows[doc["frame"]]
        assert doc["label"] == row["label"] and doc["raw"] == row["raw"]
        assert doc["top"][0] == doc["raw"] and len(doc["top"]) == 3
        assert (doc["model"], doc["model_sha256"], doc["device"]) == \
            ("model_int8.tflite", sha, "cam-1")
        assert "random" in doc["reasons"] and doc["reason"] == doc["reasons"][0]
        assert doc["source"] == str(sample / "video.avi")
        assert doc["source_time_s"] == pytest.approx(doc["frame"] / 15.0, abs=1e-3)
        assert side.name.endswith(f"_f{doc['frame']:08d}.json")
    img = cv2.imread(str(sides[0].with_suffix(".jpg")))
    assert img.shape == (240, 320, 3) == (docs[0]["height"], docs[0]["width"], 3)



def test_keep_flags_set_the_profile():
    from edge_runtime.run_command import _run_config

    args = build_parser().parse_args(["run", "--model", "m.tflite", "--source", "0",
                                      "--keep-dir", "/k", "--keep-max-per-minute", "0"])
    keep = _run_config(args).keep
    assert (keep.dir, keep.max_per_minute, keep.max_per_hour) == ("/k", 0, 120)
    args = build_parser().parse_args(["run", "--model", "m.tflite", "--source", "0"])
    assert not _run_config(args).keep.enabled  # keeping is off without a folder


def test_bad_keep_settings_are_one_line(exported, sample, tmp_path, capsys):
    r = run_cli("edge_runtime", "run", "--model", str(exported / "model_int8.tflite"),
                "--source", str(sample / "video.avi"), "--keep-dir", str(tmp_path / "k"),
                "--set", "keep.classes=unicorn")
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 1 and len(lines) == 1 and "keep.classes: unknown label " \
        "'unicorn'" in lines[0] and "Traceback" not in r.stderr
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["run", "--keep-max-per-minute=-1"])
    assert e.value.code == 2 and "expected an integer >= 0, got -1" in capsys.readouterr().err


class _FullDisk(KeepStore):
    def write_pair(self, day, stem, jpeg, sidecar):
        raise OSError(errno.ENOSPC, "No space left on device")


def _daemon(model, sample, cfg, keeper=None):
    cap = Capture(parse_source(str(sample / "video.avi")), cfg.camera, cfg.watchdog).start()
    return Daemon(Classifier(model), cap, cfg, None, StopFlag(), keeper=keeper), cap


def test_full_disk_never_stops_inference(exported, sample, tmp_path, caplog):
    cfg = load_config(None, ["keep.random=1", "keep.duplicate_diff=0", "keep.max_per_minute=0",
                             f"keep.dir={tmp_path}"], environ={})
    clf = Classifier(exported / "model_int8.tflite")
    keeper = Keeper(cfg.keep, 0.0, clf.labels, clf.model_path, "video.avi", 15.0,
                    store=_FullDisk(tmp_path, 1 << 20)).start()
    daemon, cap = _daemon(exported / "model_int8.tflite", sample, cfg, keeper)
    with caplog.at_level(logging.WARNING):
        try:
            summary = daemon.run()
        finally:
            cap.stop()
            keeper.stop(timeout=30)
    assert summary["frames"] == 60
    dropped = keeper.counts()["dropped"]
    assert set(dropped) <= {("random", "disk_full"), ("random", "queue_full")}
    assert sum(dropped.values()) == 60 and dropped[("random", "disk_full")] >= 16
    assert len([r for r in caplog.records if r.name == "edge_runtime.keep"]) == 1


def _with_baseline(exported, folder, probs=None):
    """A copy of the int8 model whose manifest carries a drift baseline from ``probs``
    (None: no baseline)."""
    folder.mkdir()
    shutil.copy(exported / "model_int8.tflite", folder)
    manifest = json.loads((exported / "manifest.json").read_text())
    manifest.pop("drift_baseline", None)
    if probs is not None:
        manifest["drift_baseline"] = {"version": 1, "split": "val",
                                      "models": {"model_int8.tflite": make_baseline(probs)}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "model_int8.tflite"


def test_drift_on_metrics_healthz_sidecars_and_reload(exported, sample, tmp_path):
    # A baseline unlike the video: unsure answers, all of one class.
    rng = np.random.default_rng(0)
    probs = np.full((200, 4), 0.1)
    probs[:, 3] = rng.uniform(0.3, 0.45, 200)
    model = _with_baseline(exported, tmp_path / "m", probs)
    cfg = load_config(None, ["drift.window=50", "keep.random=1", "keep.max_per_minute=0",
                             "keep.duplicate_diff=0", "keep.queue=100",
                             f"keep.dir={tmp_path / 'keep'}"], environ={})
    clf = Classifier(model)
    keeper = Keeper(cfg.keep, 0.0, clf.labels, model, "video.avi", 15.0).start()
    daemon, cap = _daemon(model, sample, cfg, keeper)
    try:
        daemon.run()
    finally:
        cap.stop()
        keeper.stop(timeout=30)
    status = daemon.status()
    assert status["drift"] > 1.0 and status["drift_alert"] is True
    text = daemon.metrics.render().splitlines()
    assert f"edgekit_confidence_drift {status['drift']}" in text
    assert "edgekit_confidence_drift_alert 1.0" in text
    assert "edgekit_top1_confidence_count 60.0" in text
    assert sum(float(ln.split()[-1]) for ln in text
               if ln.startswith("edgekit_predictions_total{")) == 60
    docs, _ = _pairs(tmp_path / "keep")
    assert docs[0]["drift"] == 0.0 and docs[-1]["drift"] == status["drift"]

    # SIGHUP swaps in a model without a baseline: drift goes with the old model.
    plain = Classifier(_with_baseline(exported, tmp_path / "plain"))
    daemon.reloader = lambda: (plain, cfg)
    daemon.stop.reload.set()
    daemon._check_reload()
    daemon._reload_thread.join(10)
    daemon._check_reload()
    assert daemon.classifier is plain and daemon.drift is None
    assert daemon.status()["drift"] is None and daemon.status()["drift_alert"] is None
    assert keeper.model_path == plain.model_path
    assert "edgekit_confidence_drift" not in daemon.metrics.render()


def test_malformed_baseline_serves_without_drift(exported, tmp_path, caplog):
    from edge_runtime.loop import drift_monitor

    model = _with_baseline(exported, tmp_path / "m", np.full((5, 4), 0.25))
    manifest = json.loads((model.parent / "manifest.json").read_text())
    manifest["drift_baseline"]["models"]["model_int8.tflite"]["n"] = -3
    (model.parent / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        assert drift_monitor(Classifier(model), load_config(None).drift) is None
    assert "drift off for model_int8.tflite: drift baseline" in caplog.text
