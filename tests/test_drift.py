"""Confidence drift (edge_runtime.drift): synthetic streams with known answers, the
baseline's place in the manifest, and (slow) the tiny run's models on the sample and field
videos."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from edge_runtime.drift import (
    CHECK_EVERY,
    PERSIST,
    DriftMonitor,
    baseline_for,
    ks_distance,
    make_baseline,
)
from edge_runtime.errors import EdgekitError
from edge_runtime.manifest import Manifest

K = 4


def softmax_rows(rng: np.random.Generator, n: int, margin: float) -> np.ndarray:
    """``n`` probability rows over K classes; the true class's logit is ``margin`` up."""
    labels = rng.integers(0, K, n)
    logits = rng.normal(0, 1, (n, K))
    logits[np.arange(n), labels] += margin
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def feed(mon: DriftMonitor, probs: np.ndarray) -> tuple[int | None, float]:
    """Feeds rows; returns (first frame index with the alert up or None, max value)."""
    first, top = None, 0.0
    for i, p in enumerate(probs):
        mon.update(int(p.argmax()), float(p.max()))
        s = mon.snapshot()
        top = max(top, s.value)
        if s.alert and first is None:
            first = i
    return first, top


def scenes(rng: np.random.Generator, pool: np.ndarray, frames: int, length: int = 60,
           jitter: float = 0.03) -> np.ndarray:
    """A video-like stream: scenes of ``length`` frames, each one draw from ``pool`` held
    (a slowly moving object) with small per-frame jitter on its confidence."""
    out = []
    while len(out) < frames:
        p = pool[rng.integers(len(pool))]
        for _ in range(length):
            q = p.copy()
            top = q.argmax()
            q[top] = np.clip(q[top] + rng.normal(0, jitter), 0.26, 1.0)
            out.append(q)
    return np.array(out[:frames])


@pytest.fixture()
def validation() -> np.ndarray:
    """36 validation outputs, as in the tests' tiny run (a small split on purpose)."""
    return softmax_rows(np.random.default_rng(0), 36, margin=5.0)


def test_baseline_is_compact_and_exact_at_ties():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.9, 0.1]])
    b = make_baseline(probs)
    assert b["n"] == 4
    assert b["class_counts"] == [3, 1]
    q = b["confidence_quantiles"]
    assert len(q) == 101 and q == sorted(q)
    assert q[0] == 0.6 and q[-1] == 0.9 and set(q) == {0.6, 0.8, 0.9}  # real scores only
    with pytest.raises(EdgekitError, match=r"shape \(0,\)"):
        make_baseline(np.zeros(0))


def test_ks_distance_against_step_baseline():
    q = np.linspace(0.5, 1.0, 101)
    assert ks_distance(np.linspace(0.5, 1.0, 1000), q) < 0.02
    assert ks_distance(np.full(50, 0.3), q) == pytest.approx(1.0)
    # half the values below the baseline's range: the CDFs differ by one half there
    assert ks_distance(np.r_[np.full(50, 0.3), np.linspace(0.5, 1, 50)], q) == \
        pytest.approx(0.5, abs=0.02)


def test_ks_distance_is_the_exact_two_sample_statistic():
    """With 101 baseline values the step baseline is their empirical CDF: the result is
    the two-sample KS statistic, here computed by brute force at every point and just
    below it."""
    rng = np.random.default_rng(8)
    base = np.sort(np.round(rng.beta(5, 1, 101), 3))  # rounded: ties on both sides
    for live in (np.round(rng.beta(5, 1, 300), 3), np.round(rng.beta(2, 1, 37), 3)):
        z = np.concatenate([live, base])
        z = np.concatenate([z, z - 1e-9])
        f_live, f_base = ((v[None, :] <= z[:, None]).mean(1) for v in (live, base))
        assert ks_distance(live, base) == pytest.approx(np.abs(f_live - f_base).max())


def test_independent_in_distribution_frames_never_alert(validation):
    rng = np.random.default_rng(1)
    mon = DriftMonitor(make_baseline(validation))
    # a fresh sample of the same population, not the 36 validation rows again
    first, top = feed(mon, softmax_rows(rng, 10_000, margin=5.0))
    assert first is None, f"alert at frame {first}"
    assert top < 1.0
    assert mon.snapshot().effective_confidence > 100  # independent frames count as such


def test_video_like_in_distribution_stream_never_alerts_over_10_minutes(validation):
    """Scenes of 60 near-equal frames (15 fps, 10 minutes): autocorrelated answers are
    fewer observations than frames; counted as frames they would alert."""
    rng = np.random.default_rng(2)
    stream = scenes(rng, softmax_rows(rng, 500, margin=5.0), 15 * 600)
    mon = DriftMonitor(make_baseline(validation))
    first, top = feed(mon, stream)
    assert first is None, f"alert at frame {first} (max {top})"
    assert mon.snapshot().effective_classes < 60


def test_a_class_that_just_appeared_is_not_many_observations(validation):
    """Scenes with 10 % of frames dropped (a camera read newest-first): the class changes
    are measured against the baseline's change rate, not the window's (where two frames of
    a new class made one change look like nine independent draws: 0.99 here)."""
    rng = np.random.default_rng(104)
    stream = scenes(rng, softmax_rows(rng, 500, margin=5.0), 20_000, jitter=0.0)
    stream = stream[rng.random(len(stream)) > 0.1][:9000]
    first, top = feed(DriftMonitor(make_baseline(validation)), stream)
    assert first is None and top < 0.8, (first, top)


def test_a_static_scene_is_one_observation(validation):
    mon = DriftMonitor(make_baseline(validation))
    p = np.array([0.05, 0.05, 0.2, 0.7])  # an unusual but steady answer, sensor noise only
    rng = np.random.default_rng(3)
    rows = np.repeat(p[None], 3000, 0)
    rows[:, 3] += rng.normal(0, 0.003, 3000)
    first, _ = feed(mon, rows)
    assert first is None
    assert mon.snapshot().effective_confidence < 5


def test_shifted_stream_alerts_within_300_frames(validation):
    rng = np.random.default_rng(4)
    shifted = scenes(rng, softmax_rows(rng, 500, margin=1.5), 600, jitter=0.08)
    mon = DriftMonitor(make_baseline(validation))
    first, top = feed(mon, shifted)
    assert first is not None and first < 300, (first, top)
    assert mon.snapshot().confidence >= 1.0


def test_class_mix_shift_alerts_and_clears(validation):
    rng = np.random.default_rng(5)
    base = make_baseline(validation)
    mon = DriftMonitor(base, window=300)
    # the model now answers class 0 or 1 only, confidently and independently per frame
    rows = softmax_rows(rng, 3000, margin=5.0)
    rows = rows[rows.argmax(1) < 2][:600]
    first, _ = feed(mon, rows)
    assert first is not None and first < 300
    assert mon.snapshot().classes >= 1.0
    # back to normal: the alert clears once the window has refilled
    first_back, _ = feed(mon, softmax_rows(rng, 600, margin=5.0))
    s = mon.snapshot()
    assert not s.alert and s.value < 0.8


def test_alert_needs_persist_consecutive_checks(validation):
    rng = np.random.default_rng(7)
    mon = DriftMonitor(make_baseline(validation), window=100)
    feed(mon, softmax_rows(rng, 300, margin=5.0))
    assert not mon.snapshot().alert
    checks = []
    for p in softmax_rows(rng, 200, margin=0.5):  # low confidence, answers flicker
        mon.update(int(p.argmax()), float(p.max()))
        if mon._count % CHECK_EVERY == 0:
            checks.append(mon.snapshot())
    crossed = next(i for i, s in enumerate(checks) if s.value >= s.threshold)
    raised = next(i for i, s in enumerate(checks) if s.alert)
    assert all(s.value >= s.threshold for s in checks[crossed:raised + 1])
    assert raised == crossed + PERSIST - 1


def test_window_and_threshold_are_honoured(validation):
    mon = DriftMonitor(make_baseline(validation), window=50, threshold=0.5)
    for i in range(200):
        mon.update(i % 4, 0.99)
    s = mon.snapshot()
    assert s.window == 50 and s.threshold == 0.5
    with pytest.raises(EdgekitError, match="drift window 5, expected"):
        DriftMonitor(make_baseline(validation), window=5)
    with pytest.raises(EdgekitError, match="drift threshold 0"):
        DriftMonitor(make_baseline(validation), threshold=0)


def test_bad_baseline_is_one_clear_error():
    with pytest.raises(EdgekitError, match="missing field 'class_counts'"):
        DriftMonitor({"n": 3, "confidence_quantiles": [0.5, 1.0]})
    with pytest.raises(EdgekitError, match="sorted values"):
        DriftMonitor({"n": 3, "confidence_quantiles": [0.9, 0.5], "class_counts": [1, 2]})


def test_manifest_carries_the_baseline_per_model(validation):
    entry = make_baseline(validation)
    other = {**entry, "n": 7}
    drift = {"version": 1, "split": "validation",
             "models": {"model_float32.tflite": entry, "model_int8.tflite": other}}
    m = Manifest(["a", "b", "c", "d"], (96, 96), drift_baseline=drift)
    back = Manifest.from_dict(m.to_dict())
    assert back.drift_baseline == drift
    assert baseline_for(back, "export/model_int8.tflite")["n"] == 7
    assert baseline_for(back, "renamed.tflite") is None  # two entries: which one?
    assert baseline_for({"drift_baseline": {"models": {"x.tflite": entry}}}, "y.tflite") == entry
    assert DriftMonitor.from_manifest(back, model="model_float32.tflite") is not None
    old = {k: v for k, v in m.to_dict().items() if k != "drift_baseline"}
    assert Manifest.from_dict(old).drift_baseline is None  # manifests from before load
    assert DriftMonitor.from_manifest(Manifest.from_dict(old)) is None
    with pytest.raises(EdgekitError, match="drift_baseline must be an object"):
        Manifest.from_dict({**old, "drift_baseline": [1, 2]})


def test_update_is_cheap_and_snapshot_safe_from_another_thread(validation):
    mon = DriftMonitor(make_baseline(validation))
    rows = softmax_rows(np.random.default_rng(6), 5000, margin=5.0)
    idx, conf = rows.argmax(1).tolist(), rows.max(1).tolist()
    seen, stop = [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(mon.snapshot().window)

    t = threading.Thread(target=reader)
    t.start()
    t0 = time.perf_counter()
    for i, c in zip(idx, conf):
        mon.update(i, c)
    per_call_us = (time.perf_counter() - t0) / len(idx) * 1e6
    stop.set()
    t.join()
    assert seen and max(seen) == 300
    # amortized (a check every CHECK_EVERY frames included); ~10-25 us on one core
    assert per_call_us < 500, per_call_us


def test_each_exported_model_carries_its_own_baseline(exported):
    """The int8 model's baseline comes from its own (1/256-step) outputs, not float's."""
    from edge_runtime.metadata import read_embedded_manifest

    beside = Manifest.from_dict(json.loads((exported / "manifest.json").read_text()))
    drift = beside.drift_baseline
    assert drift["split"] == "validation"
    assert set(drift["models"]) == {"model_float32.tflite", "model_int8.tflite"}
    for name, entry in drift["models"].items():
        assert entry["n"] == 36 == sum(entry["class_counts"])
        inside = read_embedded_manifest(exported / name)["drift_baseline"]
        assert inside["models"] == {name: entry}  # a copied model file describes itself
        # The input statistics: the model's own training and validation images (168 + 36).
        assert entry["input"]["n"] == 168 + 36 and entry["input"]["split"] == \
            "train+validation"
    q8 = np.array(drift["models"]["model_int8.tflite"]["confidence_quantiles"])
    assert np.allclose(q8 * 256, np.round(q8 * 256), atol=1e-3)
    qf = np.array(drift["models"]["model_float32.tflite"]["confidence_quantiles"])
    assert not np.allclose(qf * 256, np.round(qf * 256), atol=1e-3)


@pytest.mark.slow
def test_tiny_run_flags_the_field_video_not_the_sample_video(exported, tmp_path):
    """The issue's goal, measured as the daemon computes it (raw top-1 and the model input
    of every frame): the field video flagged within 300 frames, the sample video looped
    for 10 minutes at 15 fps (9000 frames) never, for float32 and int8."""
    from benchmarks.field_loop import drift_replay
    from train.sample_data import write_video

    (tmp_path / "lab").mkdir()
    (tmp_path / "field").mkdir()
    lab = write_video(tmp_path / "lab", 240, seed=1)
    field = write_video(tmp_path / "field", 720, seed=1, field=True)
    for name in ("model_float32.tflite", "model_int8.tflite"):
        r = drift_replay(exported / name, None, video=lab, frames=9000)
        assert r["first_alert_frame"] is None, f"{name}: sample video flagged: {r}"
        assert r["max"] < 0.8, f"{name}: sample video drift reached {r}"
        r = drift_replay(exported / name, None, video=field)
        first = r["first_alert_frame"]
        assert first is not None and first <= 300, f"{name}: field video: {r}"


# The input component (edge_runtime.drift_input): synthetic pictures with known answers.

def picture(rng: np.random.Generator, gain: float = 1.0, stripes: bool = False,
            background: np.ndarray | None = None) -> np.ndarray:
    """A 48x48 RGB "training image": a smooth low-saturation background of random
    brightness (or ``background``) with a coloured square; ``gain`` dims it, ``stripes``
    adds saturated stripes (what the field video shows and the training set lacks)."""
    if background is None:
        background = scene_background(rng)
    img = background.copy()
    if stripes:
        img[:, ::4] = (230, 40, 40)
    y, x = rng.integers(4, 24, 2)
    img[y:y + 20, x:x + 20] = rng.uniform(0, 255, 3)
    return np.clip(img * gain, 0, 255).astype(np.uint8)


def scene_background(rng: np.random.Generator) -> np.ndarray:
    """A background of random brightness, tint and lighting ramp (float RGB)."""
    base = rng.uniform(90, 170) + rng.uniform(-25, 25, 3)
    ramp = np.linspace(-20, 20, 48)[None, :, None] * rng.uniform(-1, 1)
    return np.broadcast_to(base, (48, 48, 3)) + ramp


def noisy(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """``img`` with sensor noise, as every frame and training picture has."""
    return np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape), 0,
                   255).astype(np.uint8)


def scene_stream(rng: np.random.Generator, frames: int, objects: int = 1, **kw
                 ) -> list[np.ndarray]:
    """Scenes of 60 frames, each one background and light with ``objects`` passing in
    turn (1: as in the sample video; 4: as in the field video), with sensor noise."""
    out = []
    while len(out) < frames:
        bg = scene_background(rng)
        for _ in range(objects):
            img = picture(rng, background=bg, **kw)
            out += [noisy(rng, img) for _ in range(60 // objects)]
    return out[:frames]


@pytest.fixture()
def with_input(validation) -> dict:
    """The tiny validation outputs' baseline plus input statistics of 300 pictures."""
    from edge_runtime.drift_input import make_input_baseline

    rng = np.random.default_rng(1)
    entry = make_baseline(validation)
    entry["input"] = make_input_baseline([noisy(rng, picture(rng)) for _ in range(300)],
                                         "train")
    return entry


def feed_images(mon: DriftMonitor, validation: np.ndarray, images: list) -> tuple:
    """Feeds in-distribution outputs with ``images``; (first alert frame, max state)."""
    rng = np.random.default_rng(2)
    first, top = None, None
    for i, img in enumerate(images):
        p = validation[rng.integers(len(validation))]
        mon.update(int(p.argmax()), float(p.max()), img)
        s = mon.snapshot()
        top = s if top is None or s.value > top.value else top
        if s.alert and first is None:
            first = i
    return first, top


def test_input_stats_of_known_pictures():
    from edge_runtime.drift_input import input_stats

    grey = np.full((96, 96, 3), 100, np.uint8)
    assert input_stats(grey) == (100.0, 0.0, 0.0)
    red = np.zeros((96, 96, 3), np.uint8)
    red[..., 0] = 200
    lum, sat, edges = input_stats(red)
    assert lum == pytest.approx(0.299 * 200, abs=1) and sat > 1.0 and edges == 0.0
    assert input_stats(red[..., ::-1].copy(), bgr=True) == (lum, sat, edges)
    bars = grey.copy()
    bars[:, ::2] = 0
    assert input_stats(bars)[2] > 40
    assert input_stats(grey.astype(np.float32)) is None


def test_input_component_flags_dim_and_striped_streams_not_in_distribution(validation,
                                                                           with_input):
    """The outputs stay like validation throughout: only the input can tell. Field-like
    streams (four objects over each background, five backgrounds per 300 frames): dimmed
    light alerts within 300 frames; saturated stripes cross the line within 600 (a
    persisted alert needs more scenes there: each scene is about one observation)."""
    first, top = feed_images(DriftMonitor(with_input), validation,
                             scene_stream(np.random.default_rng(3), 3000))
    assert first is None and top.input < 1.0, top
    first, top = feed_images(DriftMonitor(with_input), validation,
                             scene_stream(np.random.default_rng(3), 300, 4, gain=0.3))
    assert first is not None and first <= 300, (first, top)
    assert top.confidence < 1.0 and top.classes < 1.0 and top.input_luminance >= 1.0, top
    _, top = feed_images(DriftMonitor(with_input), validation,
                         scene_stream(np.random.default_rng(3), 600, 4, stripes=True))
    assert top.input >= 1.0 and top.confidence < 1.0 and top.classes < 1.0, top


def test_one_scene_with_jittery_frames_is_not_many_observations(validation, with_input):
    """A single in-distribution background with large per-frame jitter (a camera's gain
    hunting) counts as one scene: its narrow spread is no evidence of drift."""
    rng = np.random.default_rng(4)
    img = picture(rng).astype(np.int16)
    frames = [np.clip(img + rng.integers(-30, 31), 0, 255).astype(np.uint8)
              for _ in range(300)]
    first, top = feed_images(DriftMonitor(with_input), validation, frames)
    assert first is None and top.effective_input <= 300 // 15 and top.input < 1.0, top


def test_baseline_without_input_statistics_still_works(validation):
    mon = DriftMonitor(make_baseline(validation))
    rng = np.random.default_rng(5)
    first, top = feed_images(mon, validation, scene_stream(rng, 300, gain=0.4))
    assert first is None and top.input is None
    assert set(top.components()) == {"confidence", "classes"}


def test_bad_input_baseline_is_one_clear_error(validation, with_input):
    bad = {**with_input, "input": {**with_input["input"], "grid": 16}}
    with pytest.raises(EdgekitError, match="16-point grid, this runtime reads 32"):
        DriftMonitor(bad)
    q = with_input["input"]["quantiles"]
    bad = {**with_input, "input": {**with_input["input"],
                                   "quantiles": {**q, "edges": [3, 2, 1]}}}
    with pytest.raises(EdgekitError, match="input edges: expected >= 2 sorted numbers"):
        DriftMonitor(bad)


def test_drift_components_on_metrics(validation, with_input):
    from edge_runtime.metrics import Metrics

    mon = DriftMonitor(with_input, window=50)
    feed_images(mon, validation, scene_stream(np.random.default_rng(6), 60))
    m = Metrics()
    m.drift = mon.snapshot()
    lines = m.render().splitlines()
    for name in ("confidence", "classes", "input_luminance", "input_saturation",
                 "input_edges"):
        value = m.drift.components()[name]
        assert f'edgekit_drift_component{{component="{name}"}} {value}' in lines, name
    assert f"edgekit_confidence_drift {m.drift.value}" in lines


def test_rerecord_an_export_in_place(exported, tmp_path):
    """``python -m convert.drift_baseline RUN``: an export made before the input
    statistics gets them; manifest.json's sha256s follow the rewritten model files."""
    import shutil

    from convert.drift_baseline import main
    from edge_runtime.fileio import file_sha256
    from edge_runtime.metadata import read_embedded_manifest

    run = tmp_path / "run"
    shutil.copytree(exported.parent, run, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    beside = json.loads((run / "export" / "manifest.json").read_text())
    for entry in beside["drift_baseline"]["models"].values():
        del entry["input"]
    (run / "export" / "manifest.json").write_text(json.dumps(beside))
    assert main([str(run)]) == 0
    beside = json.loads((run / "export" / "manifest.json").read_text())
    for variant in beside["variants"].values():
        path = run / "export" / variant["file"]
        assert variant["sha256"] == file_sha256(path)
        entry = beside["drift_baseline"]["models"][variant["file"]]
        assert entry["input"]["n"] == 168 + 36
        assert read_embedded_manifest(path)["drift_baseline"]["models"] == {path.name: entry}
    with pytest.raises(EdgekitError, match="no exported models listed"):
        main([str(run), "--export", str(tmp_path)])


def test_daemon_feeds_each_frames_model_input(exported, sample):
    """The daemon hands the monitor each frame's prepared model input: the input
    components appear on /healthz and /metrics (the statistics need 30 frames)."""
    from edge_runtime.camera import parse_source
    from edge_runtime.capture import Capture
    from edge_runtime.classify import Classifier
    from edge_runtime.config import load_config
    from edge_runtime.loop import Daemon, StopFlag

    cfg = load_config(None, [], environ={})
    cap = Capture(parse_source(str(sample / "video.avi")), cfg.camera, cfg.watchdog).start()
    daemon = Daemon(Classifier(exported / "model_int8.tflite"), cap, cfg, None, StopFlag())
    try:
        assert daemon.run()["frames"] == 60
    finally:
        cap.stop()
    parts = daemon.status()["drift_components"]
    assert set(parts) == {"confidence", "classes", "input_luminance", "input_saturation",
                          "input_edges"}
    assert daemon.metrics.drift.window == 60
    lines = daemon.metrics.render().splitlines()
    for name, value in parts.items():
        assert f'edgekit_drift_component{{component="{name}"}} {value}' in lines
