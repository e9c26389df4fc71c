"""Keeping frames on the device, without a model: reasons, source-clock limits, near
duplicates, the quota, atomic pairs, the bounded queue, a full disk, /kept and /metrics."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import numpy as np
import pytest

from edge_runtime import EdgekitError
from edge_runtime.classify import Class
from edge_runtime.config import load_config
from edge_runtime.keep import Keeper, KeepPolicy, RateLimiter, thumbnail
from edge_runtime.keep_settings import KeepSettings
from edge_runtime.keepstore import KeepStore, atomic_write, stem_for
from edge_runtime.metrics import Metrics
from edge_runtime.server import Server
from edge_runtime.settings import HttpSettings
from edge_runtime.smoothing import Result

LABELS = {0: "cat", 1: "dog", 2: "bird"}
# Every reason off: each test switches on what it checks.
OFF = KeepSettings(dir="unused", low_confidence=0.0, near_threshold=0.0, disagreement=False,
                   classes=(), random=0.0, max_per_minute=0, max_per_hour=0, max_per_day=0,
                   duplicate_diff=0.0)


@dataclass
class FakeFrame:
    image: np.ndarray
    seq: int
    t: float = 0.0


@dataclass(frozen=True)
class FakeDrift:
    value: float
    alert: bool


def result(raw=(0, 0.9), reported=(0, 0.9)) -> Result:
    """A smoothed result: the model's raw top-1 and the reported (index, score)."""
    i, s = reported
    return Result(i, None if i is None else LABELS[i], s, [],
                  Class(raw[0], LABELS[raw[0]], raw[1]))


def noise(seed: int, shape=(48, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


class MemoryStore(KeepStore):
    """A KeepStore that records pairs instead of writing them (optionally slow or failing)."""

    def __init__(self, delay: float = 0.0, error: OSError | None = None) -> None:
        super().__init__("unused", 1 << 40)
        self.delay, self.error, self.pairs = delay, error, []

    def scan(self, clean: bool = False) -> None:
        pass

    def write_pair(self, day, stem, jpeg, sidecar):
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        self.pairs.append((day, stem, sidecar))
        return len(jpeg)

    def add(self, rel, size):
        return []


def keeper(settings=OFF, store=None, fps=10.0, threshold=0.5, seed=0) -> Keeper:
    return Keeper(settings, threshold, LABELS, __file__, "video.avi", fps,
                  store=store or MemoryStore(), rng=random.Random(seed))


# -- reasons -----------------------------------------------------------------------------

@pytest.mark.parametrize("on, res, reason", [
    ({"low_confidence": 0.5}, result(raw=(1, 0.4), reported=(None, 0.4)), "low_confidence"),
    ({"near_threshold": 0.05}, result(reported=(0, 0.52)), "near_threshold"),
    ({"disagreement": True}, result(raw=(1, 0.6), reported=(0, 0.7)), "disagreement"),
    ({"classes": ("bird",)}, result(raw=(2, 0.99), reported=(2, 0.99)), "class"),
    ({"random": 1.0}, result(), "random"),
])
def test_each_reason_applies_only_when_switched_on(on, res, reason):
    assert KeepPolicy(replace(OFF, **on), 0.5, LABELS).reasons(res) == [reason]
    assert KeepPolicy(OFF, 0.5, LABELS).reasons(res) == []


def test_reasons_do_not_fire_on_a_confident_agreeing_frame_and_come_in_order():
    every = replace(OFF, low_confidence=0.5, near_threshold=0.05, disagreement=True,
                    classes=("dog",))
    policy = KeepPolicy(every, 0.5, LABELS)
    assert policy.reasons(result(raw=(0, 0.95), reported=(0, 0.95))) == []
    assert policy.reasons(result(raw=(1, 0.45), reported=(0, 0.53))) == [
        "low_confidence", "near_threshold", "disagreement", "class"]
    # No decision threshold (0): nothing is "near" it.
    assert KeepPolicy(every, 0.0, LABELS).reasons(result(reported=(0, 0.02))) == []


def test_random_sample_rate_and_drift_boost():
    policy = KeepPolicy(replace(OFF, random=0.02, drift_boost=5.0), 0.5, LABELS,
                        random.Random(1))
    calm = sum(bool(policy.reasons(result())) for _ in range(20000))
    drifting = sum(bool(policy.reasons(result(), drift_alert=True)) for _ in range(20000))
    assert 320 <= calm <= 480  # 400 expected, +-4 sigma
    assert 1800 <= drifting <= 2200  # 2000 expected


def test_unknown_keep_class_is_one_clear_error():
    with pytest.raises(EdgekitError, match=r"keep.classes: unknown label 'fish'.*cat"):
        KeepPolicy(replace(OFF, classes=("fish",)), 0.5, LABELS)


# -- limits on the source clock ----------------------------------------------------------

def test_rate_limiter_windows():
    lim = RateLimiter(replace(OFF, max_per_minute=2, max_per_hour=3))
    for t in (0.0, 1.0):
        assert lim.allows(t)
        lim.record(t)
    assert not lim.allows(59.9)
    assert lim.allows(60.0)  # the first left the minute
    lim.record(60.0)
    assert not lim.allows(200.0)  # the hour is full
    assert lim.allows(3600.0)


def test_file_limits_count_source_time_not_wall_time():
    """Two minutes of a 10 fps file replayed in milliseconds: the minute limit holds per
    source minute, as the camera would have seen it."""
    k = keeper(replace(OFF, classes=("cat",), max_per_minute=3, queue=1000)).start()
    for seq in range(1200):
        k.offer(FakeFrame(noise(0), seq), np.array([1.0, 0, 0]), result())
    k.stop(timeout=30)
    frames = [p[2]["frame"] for p in k.store.pairs]
    assert frames == [0, 1, 2, 600, 601, 602]
    assert k.dropped[("class", "rate_limit")] == 1200 - 6
    assert k.store.pairs[3][2]["source_time_s"] == 60.0


def test_max_per_minute_zero_lifts_the_limit():
    k = keeper(replace(OFF, classes=("cat",), queue=1000)).start()
    for seq in range(300):
        k.offer(FakeFrame(noise(seq), seq), np.array([1.0, 0, 0]), result())
    k.stop(timeout=30)
    assert len(k.store.pairs) == 300 and not k.dropped


def test_live_source_is_timed_by_the_capture_clock():
    k = keeper(replace(OFF, classes=("cat",), max_per_minute=1), fps=None).start()
    t0 = k._t0
    for i, t in enumerate((1.0, 30.0, 61.5)):
        k.offer(FakeFrame(noise(i), 1000 + i, t0 + t), np.array([1.0, 0, 0]), result())
    k.stop(timeout=30)
    assert [p[2]["source_time_s"] for p in k.store.pairs] == [1.0, 61.5]


# -- near duplicates ---------------------------------------------------------------------

def test_static_scene_is_kept_once(monkeypatch):
    import edge_runtime.keep as keep_module

    made = []
    real = keep_module.thumbnail
    monkeypatch.setattr(keep_module, "thumbnail", lambda img: made.append(1) or real(img))
    k = keeper(replace(OFF, classes=("cat",), duplicate_diff=3.0)).start()
    scene = noise(7, (240, 320, 3))
    rng = np.random.default_rng(0)
    for seq in range(20):  # 2 s of the same scene with sensor noise (+-4 levels), 10 fps
        jitter = rng.integers(-4, 5, scene.shape)
        k.offer(FakeFrame(np.clip(scene + jitter, 0, 255).astype(np.uint8), seq),
                np.array([1.0, 0, 0]), result())
    k.offer(FakeFrame(noise(8, (240, 320, 3)), 30), np.array([1.0, 0, 0]), result())
    k.stop(timeout=30)
    assert [p[2]["frame"] for p in k.store.pairs] == [0, 30]
    assert k.dropped[("class", "duplicate")] == 19
    assert len(made) <= 7  # checked twice a source second, not on each of the 21 frames


def test_thumbnail_is_small_gray_and_handles_gray_and_bgra_frames():
    assert thumbnail(noise(1, (1080, 1920, 3))).shape == (16, 16)
    assert thumbnail(noise(1, (100, 100))).dtype == np.float32
    assert thumbnail(noise(1, (64, 64, 4))).shape == (16, 16)


# -- the disk: atomic pairs and the quota --------------------------------------------------

def test_pair_names_follow_the_contract():
    when = datetime(2026, 12, 2, 23, 5, 7, 123456, tzinfo=timezone.utc)
    assert stem_for(when, 42) == ("2026-12-02", "20261202T230507.123Z_f00000042")


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "a.jpg"
    real = os.write
    calls = []

    def short_then_full(fd, data):
        calls.append(1)
        if len(calls) == 1:
            return real(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError):
        atomic_write(target, b"x" * 100)
    assert list(tmp_path.iterdir()) == []  # no target, no temporary file


def test_failed_sidecar_removes_its_jpeg(tmp_path, monkeypatch):
    import edge_runtime.keepstore as ks

    store = KeepStore(tmp_path, 1 << 20)
    real = ks.atomic_write

    def jpeg_only(target, data):
        if target.suffix == ".json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(target, data)

    monkeypatch.setattr(ks, "atomic_write", jpeg_only)
    with pytest.raises(OSError):
        store.write_pair("2026-12-02", "20261202T000000.000Z_f00000001", b"jpeg", {})
    assert list((tmp_path / "2026-12-02").iterdir()) == []


def test_quota_removes_the_oldest_pairs_first(tmp_path):
    store = KeepStore(tmp_path, quota_bytes=3500)
    rels = []
    for i in range(6):
        day = "2026-12-01" if i < 2 else "2026-12-02"
        stem = f"{day.replace('-', '')}T0000{i:02d}.000Z_f{i:08d}"
        size = store.write_pair(day, stem, b"j" * 1000, {"i": i})
        rels.append(f"{day}/{stem}.jpg")
        store.add(rels[-1], size)
    assert store.bytes <= 3500
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jpg"))
    assert left == rels[-3:]  # the newest three, each with its sidecar
    assert all((tmp_path / r).with_suffix(".json").is_file() for r in left)
    assert not (tmp_path / "2026-12-01").exists()  # the emptied day folder went too
    (tmp_path / "2026-12-02" / ".x.jpg.123.tmp").write_bytes(b"half")  # a crash's leftover
    again = KeepStore(tmp_path, quota_bytes=2500)  # a restart counts what is there
    again.scan(clean=True)
    assert not list(tmp_path.rglob(".*"))
    assert again.bytes == store.bytes and again.enforce() == [rels[3]]


# -- the writer: bounded queue, full disk, sidecars ----------------------------------------

def test_full_queue_drops_without_blocking_inference():
    slow = MemoryStore(delay=0.2)
    k = keeper(replace(OFF, classes=("cat",), queue=2), store=slow).start()
    t0 = time.perf_counter()
    for seq in range(40):
        k.offer(FakeFrame(noise(seq), seq), np.array([1.0, 0, 0]), result())
    spent = time.perf_counter() - t0
    k.stop(timeout=5)
    assert spent < 0.15  # 40 offers while the writer sleeps 0.2 s a frame
    dropped = k.dropped[("class", "queue_full")]
    assert dropped >= 37 and dropped + len(slow.pairs) == 40


def test_full_disk_is_one_warning_and_every_drop_counted(caplog):
    full = MemoryStore(error=OSError(errno.ENOSPC, "No space left on device"))
    k = keeper(replace(OFF, classes=("cat",), queue=100), store=full).start()
    with caplog.at_level(logging.INFO, logger="edge_runtime.keep"):
        for seq in range(25):
            k.offer(FakeFrame(noise(seq), seq), np.array([1.0, 0, 0]), result())
        k.stop(timeout=30)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "disk full" in warnings[0].getMessage()
    assert k.counts()["dropped"] == {("class", "disk_full"): 25}
    full.error = None  # room again: writes resume, said at INFO level only
    k2 = keeper(replace(OFF, classes=("cat",)), store=full)
    k2.failing = "disk_full"
    k2.start()
    with caplog.at_level(logging.INFO, logger="edge_runtime.keep"):
        k2.offer(FakeFrame(noise(1), 1), np.array([1.0, 0, 0]), result())
        k2.stop(timeout=30)
    assert k2.failing is None and k2.kept["class"] == 1


def test_sidecar_has_the_contract_fields(tmp_path):
    store = KeepStore(tmp_path, 1 << 30)
    k = keeper(replace(OFF, dir=str(tmp_path), device="pi-7", disagreement=True),
               store=store).start()
    image = noise(3, (120, 160, 3))
    scores = np.array([0.2, 0.7, 0.1], np.float32)
    k.offer(FakeFrame(image, 31), scores, result(raw=(1, 0.7), reported=(0, 0.6)),
            FakeDrift(0.25, False))
    k.stop(timeout=30)
    [side] = list(tmp_path.rglob("*.json"))
    doc = json.loads(side.read_text())
    assert set(doc) == {"time", "source_time_s", "device", "model", "model_sha256", "top",
                        "label", "raw", "reason", "reasons", "frame", "source", "width",
                        "height", "drift"}
    import hashlib

    assert doc["model_sha256"] == hashlib.sha256(open(__file__, "rb").read()).hexdigest()
    assert doc["device"] == "pi-7" and doc["model"] == "test_keep.py"
    assert doc["top"][0] == {"index": 1, "label": "dog", "score": pytest.approx(0.7)}
    assert [c["label"] for c in doc["top"]] == ["dog", "cat", "bird"]
    assert doc["label"] == "cat" and doc["raw"]["label"] == "dog"
    assert doc["reason"] == "disagreement" and doc["reasons"] == ["disagreement"]
    assert (doc["frame"], doc["source_time_s"], doc["width"], doc["height"]) == \
        (31, 3.1, 160, 120)
    assert doc["source"] == "video.avi" and doc["drift"] == 0.25
    assert datetime.fromisoformat(doc["time"]).utcoffset().total_seconds() == 0
    jpg = side.with_suffix(".jpg")
    assert jpg.stem == side.stem and side.parent.name == doc["time"][:10]
    import cv2

    back = cv2.imread(str(jpg))
    assert back.shape == image.shape  # the source resolution, not the model input
    assert k.counts()["kept"] == {"disagreement": 1}
    assert k.counts()["bytes"] == jpg.stat().st_size + side.stat().st_size


# -- settings ------------------------------------------------------------------------------

def test_keep_settings_are_validated_and_off_by_default():
    assert not load_config(None).keep.enabled
    cfg = load_config(None, ["keep.dir=/data/keep", "keep.classes=cat,dog", "drift.window=50"])
    assert cfg.keep.dir == "/data/keep" and cfg.keep.classes == ("cat", "dog")
    assert cfg.drift.window == 50 and cfg.drift.threshold is None
    for bad, fragment in (("keep.random=1.5", "random 1.5, expected 0..1"),
                          ("keep.max_per_minute=-1", "max_per_minute -1"),
                          ("keep.jpeg_quality=0", "jpeg_quality 0"),
                          ("drift.threshold=0", "threshold 0.0")):
        with pytest.raises(EdgekitError, match=fragment):
            load_config(None, [bad])


# -- HTTP and /metrics -----------------------------------------------------------------------

def _get(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                 if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def _kept_store(tmp_path):
    store = KeepStore(tmp_path / "keep", 1 << 30)
    for i in range(3):
        day, stem = stem_for(datetime(2026, 12, 2, 10, 0, i, tzinfo=timezone.utc), i)
        store.write_pair(day, stem, f"jpeg{i}".encode(), {
            "time": f"t{i}", "reason": "random", "raw": {"label": "cat", "score": 0.5}})
    (tmp_path / "secret.txt").write_text("not a kept frame")
    return store


def test_kept_frames_need_a_token_and_refuse_traversal(tmp_path):
    store = _kept_store(tmp_path)
    open_srv = Server(HttpSettings(enabled=True, port=0), Metrics(), dict, 10.0,
                      kept=store).start()
    try:
        code, _, body = _get(open_srv.url + "kept")
        assert code == 403 and b"set http.token" in body
        assert _get(open_srv.url + "kept/2026-12-02/20261202T100000.000Z_f00000000.jpg")[0] \
            == 403
    finally:
        open_srv.stop()
    srv = Server(HttpSettings(enabled=True, port=0, token="s3cret"), Metrics(), dict, 10.0,
                 kept=store).start()
    try:
        assert _get(srv.url + "kept")[0] == 401
        code, ctype, body = _get(srv.url + "kept", "s3cret")
        frames = json.loads(body)["frames"]
        assert code == 200 and [f["name"][-13:] for f in frames] == [
            "f00000002.jpg", "f00000001.jpg", "f00000000.jpg"]  # newest first
        assert frames[0] == {"name": "2026-12-02/20261202T100002.000Z_f00000002.jpg",
                             "time": "t2", "reason": "random", "label": "cat", "score": 0.5}
        code, ctype, body = _get(srv.url + "kept/" + frames[1]["name"], "s3cret")
        assert (code, ctype, body) == (200, "image/jpeg", b"jpeg1")
        for bad in ("kept/../secret.txt", "kept/2026-12-02/../../secret.txt",
                    "kept/%2e%2e/secret.txt", "kept/2026-12-02/.x.jpg",
                    "kept/2026-12-02/20261202T100000.000Z_f00000000.json", "kept/"):
            assert _get(srv.url + bad, "s3cret")[0] == 404, bad
    finally:
        srv.stop()


def test_kept_with_keeping_off_says_how_to_turn_it_on():
    srv = Server(HttpSettings(enabled=True, port=0, token="t"), Metrics(), dict, 10.0).start()
    try:
        code, _, body = _get(srv.url + "kept", "t")
        assert code == 404 and b"keeping is off: set keep.dir" in body
    finally:
        srv.stop()


def test_metrics_names_of_the_field_loop(tmp_path):
    m = Metrics()
    m.observe_top1(Class(1, "dog", 0.93))
    m.observe_top1(Class(0, "cat", 0.42))
    text = m.render()
    assert 'edgekit_predictions_total{label="dog"} 1.0' in text.splitlines()
    assert 'edgekit_top1_confidence_bucket{le="0.5"} 1.0' in text.splitlines()
    assert "edgekit_top1_confidence_count 2.0" in text.splitlines()
    assert "edgekit_confidence_drift" not in text  # no baseline: absent, not a fake 0
    full = MemoryStore(error=OSError(errno.ENOSPC, "full"))
    k = keeper(replace(OFF, classes=("cat",)), store=full).start()
    k.offer(FakeFrame(noise(0), 0), np.array([1.0, 0, 0]), result())
    k.stop(timeout=30)
    k.kept["class"] += 2
    full.quota_bytes = 5000
    m.keeper, m.drift = k, FakeDrift(1.7, True)
    lines = m.render().splitlines()
    for line in ("edgekit_confidence_drift 1.7", "edgekit_confidence_drift_alert 1.0",
                 'edgekit_kept_frames_total{reason="class"} 2.0',
                 'edgekit_keep_dropped_total{cause="disk_full",reason="class"} 1.0',
                 "edgekit_keep_bytes 0.0", "edgekit_keep_quota_bytes 5000.0"):
        assert line in lines, line


def test_offer_does_not_touch_the_disk(monkeypatch):
    """The inference side decides and queues only: no file is opened on its thread."""
    import builtins

    k = keeper(replace(OFF, classes=("cat",), duplicate_diff=3.0))
    me = threading.get_ident()
    opened = []
    real_open, real_os_open = builtins.open, os.open
    monkeypatch.setattr(builtins, "open", lambda *a, **kw: (
        opened.append(a[0]) if threading.get_ident() == me else None) or real_open(*a, **kw))
    monkeypatch.setattr(os, "open", lambda *a, **kw: (
        opened.append(a[0]) if threading.get_ident() == me else None) or real_os_open(*a, **kw))
    for seq in range(5):
        k.offer(FakeFrame(noise(seq), seq), np.array([1.0, 0, 0]), result())
    assert opened == [] and k._queue.qsize() == 5
