"""The live page tells the story: label timeline, confidence sparkline, top-3 bars, per-class
counts, health and kept frames, in a real headless Chromium at desktop and phone widths."""

from __future__ import annotations

import html
import re
import shutil

import cv2
import numpy as np
import pytest

from edge_runtime.fileio import file_sha256
from edge_runtime.server import _page
from tests.test_daemon import LABELS, DaemonProcess, wait_for
from tests.test_daemon_browser import CHROMIUM, chromium

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make "
                                "test installs it with apt-get install -y chromium as root)")


def _daemon(exported, sample, *extra: str) -> DaemonProcess:
    d = DaemonProcess("--model", str(exported / "model_int8.tflite"), "--source",
                      str(sample / "video.avi"), "--loop", "--http", "127.0.0.1:0",
                      "--set", "camera.realtime=true", "--set", "camera.fps=10",
                      "--set", "output.jsonl=off", *extra)
    wait_for(lambda: d.get("healthz")[0] == 200)
    return d


def _inner(dom: str, ident: str, end: str) -> str:
    """The markup from the element with this id up to ``end``."""
    start = dom.find(f'id="{ident}"')
    assert start >= 0, f"no #{ident} in the page"
    return dom[start:dom.index(end, start)]


def _text(dom: str, ident: str) -> str:
    m = re.search(rf'id="{ident}"[^>]*>([^<]*)<', dom)
    assert m, f"no #{ident} in the page"
    return html.unescape(m.group(1))


def test_page_is_light_and_self_contained():
    page = _page("cam")
    assert len(page.encode()) < 16_000  # one request, no framework
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from a CDN: offline


@pytest.mark.slow
def test_story_panels_in_headless_chromium(exported, sample, tmp_path):
    keep = tmp_path / "keep"
    d = _daemon(exported, sample, "--set", "http.token=tok", "--keep-dir", str(keep),
                "--set", "keep.random=1", "--set", "keep.max_per_minute=0",
                "--set", "keep.duplicate_diff=0")
    try:
        wait_for(lambda: any(keep.rglob("*.json")), timeout=30)
        url = d.url + "?token=tok"
        r = chromium("--virtual-time-budget=12000", "--window-size=1280,900", "--dump-dom",
                     url, timeout=120)
        dom = r.stdout
        assert "<html" in dom, r.stderr[-2000:]
        segs = re.findall(r'class="seg" data-label="([^"]*)"', dom)
        assert segs and set(segs) <= LABELS | {"(none)"}, segs
        assert set(segs) & LABELS  # the video's shapes, coloured runs
        assert re.search(r'class="seg" data-label="\w+" style="left: [0-9.]+%; width: '
                         r'[0-9.]+%; background: rgb', dom)
        spark = re.search(r'id="spark-line"[^>]* points="([^"]*)"', dom).group(1).split()
        assert len(spark) >= 3 and all(2 <= float(p.split(",")[1]) <= 38 for p in spark)
        top = re.findall(r'<span class="n">([^<]*)</span>', _inner(dom, "top3", "<dl>"))
        assert len(top) == 3 and set(top) <= LABELS, top  # raw_top, whatever classify.top_k
        counts = re.findall(r'<span class="n">([^<]*)</span><span class="t">.*?'
                            r'<span class="v">(\d+)</span>', _inner(dom, "counts", "</section>"))
        assert counts and {k for k, _ in counts} <= LABELS and sum(int(v) for _, v in counts) > 0
        assert _text(dom, "counts-title") == "Predictions per class (since start)"
        assert _text(dom, "health") == "ok" and _text(dom, "model") == "model_int8.tflite"
        sha = file_sha256(exported / "model_int8.tflite")
        assert _text(dom, "sha") == sha[:16] + "…"
        assert _text(dom, "selftest") in ("pass", "skip"), _text(dom, "selftest")
        assert re.fullmatch(r"(\d+ min )?\d+ s", _text(dom, "uptime")), _text(dom, "uptime")
        assert _text(dom, "reloads") == "0 ok, 0 failed"
        assert re.search(r'<section class="card" id="kept">', dom)  # shown: not hidden
        kept = re.findall(r'<img[^>]* src="(kept/[^"]+)"', dom)
        assert kept and all(re.fullmatch(r"kept/\d{4}-\d\d-\d\d/\w+\.\d{3}Z_f\d{8}\.jpg\?"
                                         r"token=tok", k) for k in kept), kept
        for width, height in ((1280, 900), (390, 844)):  # a desktop and a phone
            shot = tmp_path / f"live-{width}.png"
            r = chromium("--virtual-time-budget=8000", f"--window-size={width},{height}",
                         "--hide-scrollbars", f"--screenshot={shot}", url, timeout=120)
            img = cv2.imread(str(shot))
            assert img is not None and img.shape[1] == width, r.stderr[-2000:]
            # Something drawn beyond the dark background: text, bars, timeline, video.
            assert np.mean(img.max(axis=2) > 60) > 0.03, f"{shot} looks empty"
        keep_shots = tmp_path.parent / "live-page-shots"  # for a person to look at
        keep_shots.mkdir(exist_ok=True)
        for png in tmp_path.glob("live-*.png"):
            shutil.copy(png, keep_shots / png.name)
    finally:
        d.proc.kill()
        d.proc.wait(10)


@pytest.mark.slow
def test_kept_panel_hidden_without_token(exported, sample):
    d = _daemon(exported, sample)  # no token: /kept answers 403
    try:
        assert d.get("kept")[0] == 403
        r = chromium("--virtual-time-budget=4000", "--dump-dom", d.url, timeout=120)
        assert re.search(r'<section class="card" id="kept" hidden="">', r.stdout), \
            r.stdout[-3000:]
        assert _text(r.stdout, "health") == "ok"
        assert re.findall(r'class="seg" data-label="', r.stdout)
    finally:
        d.proc.kill()
        d.proc.wait(10)
