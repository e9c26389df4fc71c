"""Stream slots and the MJPEG parts, without sockets or threads: who yields a slot to a
newcomer, and what a viewer receives."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from edge_runtime import stream
from edge_runtime.stream import LiveState, MjpegEncoder, Slots, Viewer, serve_viewer


class FakeSock:
    def __init__(self) -> None:
        self.shut = False

    def shutdown(self, how: int) -> None:
        self.shut = True

    def settimeout(self, t: float) -> None:
        pass

    def setsockopt(self, *args) -> None:
        pass


def fill(slots: Slots, n: int) -> list[Viewer]:
    return [slots.acquire(FakeSock()) for _ in range(n)]


def test_viewers_that_read_keep_their_slots():
    slots = Slots(2)
    a, b = fill(slots, 2)
    a.sent = b.sent = stream.PROVEN_BYTES + 1
    assert slots.acquire(FakeSock()) is None
    assert len(slots) == 2 and not a.sock.shut and not b.sock.shut


def test_a_stalled_viewer_yields_before_an_unproven_one():
    slots = Slots(3)
    a, b, c = fill(slots, 3)
    now = time.monotonic()
    a.sent = b.sent = stream.PROVEN_BYTES + 1
    b.writing_since = now - stream.STALL_S - 1.0  # a reader whose writes are stuck
    a.writing_since = now - stream.STALL_S / 2  # a write in progress, not yet a stall
    d = slots.acquire(FakeSock())
    assert d is not None and b.sock.shut and b.evicted
    assert not a.sock.shut and not c.sock.shut and len(slots) == 3


def test_the_oldest_unproven_viewer_yields_when_none_is_stalled():
    slots = Slots(3)
    a, b, c = fill(slots, 3)
    a.sent = stream.PROVEN_BYTES + 1
    b.since, c.since = 100.0, 50.0  # c came first
    assert slots.acquire(FakeSock()) is not None
    assert c.sock.shut and not b.sock.shut and not a.sock.shut
    slots.release(c)  # its own thread gives the slot back later: harmless
    assert len(slots) == 3


def test_the_viewer_gets_whole_jpeg_parts_and_stops_when_evicted():
    state = LiveState()
    enc = MjpegEncoder(state, fps=50, width=64, quality=70, max_clients=1)
    try:
        viewer = enc.open(FakeSock())
        assert viewer is not None and enc.clients == 1
        state.publish(np.full((48, 64, 3), 128, np.uint8), {"label": "cat", "score": 0.5})
        out = io.BytesIO()

        class Evicting(io.BytesIO):
            def write(self, data: bytes) -> int:
                n = out.write(data)
                if out.getvalue().count(b"\xff\xd9") >= 1:
                    viewer.evicted = True  # as Slots does for a newcomer
                return n

        t0 = time.monotonic()
        serve_viewer(viewer, Evicting(), enc, lambda: time.monotonic() - t0 > 5)
        data = out.getvalue()
        assert time.monotonic() - t0 < 5
        head, jpeg = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"--" + stream.BOUNDARY.encode())
        length = int(head.split(b"Content-Length: ")[1])
        assert jpeg[:2] == b"\xff\xd8" and jpeg[length - 2:length] == b"\xff\xd9"
        assert viewer.sent == len(data) and viewer.writing_since is None
    finally:
        enc.stop()
    assert enc.clients == 0


@pytest.mark.parametrize("width, expect", [(32, (24, 32)), (640, (48, 64))])
def test_annotate_shrinks_but_never_enlarges(width, expect):
    img = stream.annotate(np.zeros((48, 64), np.uint8), None, width)
    assert img.shape == (*expect, 3)


def test_cpu_budget_holds_requests_back_to_its_share():
    from edge_runtime.server import _CpuBudget

    b = _CpuBudget(share=0.5, burst_s=0.01)
    assert b.admit(0.0)  # a full bucket admits at once
    b.charge(0.26)  # a request that took 0.26 s: about 0.5 s of refill owed
    t0 = time.monotonic()
    assert not b.admit(0.1)  # not within 0.1 s
    assert b.admit(2.0)
    assert 0.35 < time.monotonic() - t0 < 1.5
