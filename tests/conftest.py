"""Shared fixtures and helpers: tiny sample data, one tiny trained run and its exported
models, Coral's reference folder, waiting with a deadline, a fake camera, running a CLI.

The run is trained once per session with test-sized settings (alpha 0.35, 96 px, a few
short epochs on 168 training images), so every pipeline test uses a real model in seconds;
a background process (tests/tiny_run.py) trains it while the tests that do not need it run.
Test modules import the helpers one way, ``from tests.conftest import ...`` (a bare
``from conftest import`` would load this file a second time as another module).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Coral's reference models and photos: beside the development checkout, else where
# `make test-data` puts them (tests/fetch_data.py).
CORAL_DIRS = ((ROOT / ".." / "shared" / "reference" / "coral").resolve(),
              ROOT / "data" / "coral")
CORAL = next((d for d in CORAL_DIRS if (d / "mobilenet_v2_1.0_224_quant.tflite").is_file()),
             CORAL_DIRS[0])

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_cli(*args: str, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs ``python -m <args>`` from the project root; returns the completed process."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


T = TypeVar("T")


def wait_for(fn: Callable[[], T], timeout: float = 20.0, every: float = 0.05) -> T:
    """Calls ``fn`` until it returns something truthy, which is returned; AssertionError
    after ``timeout`` seconds. Tests wait on a condition, never on a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {getattr(fn, '__name__', fn)}")
        time.sleep(every)


class FakeCamera:
    """Delivers ``frames`` (None: a failed read) ``delay`` s apart, then hangs in read()
    until released (``hang``: a wedged driver) or reports the end. What Capture uses of
    ``cv2.VideoCapture``."""

    def __init__(self, frames: list, hang: bool = True, delay: float = 0.002) -> None:
        self.frames = list(frames)
        self.hang = hang
        self.delay = delay
        self.released = threading.Event()

    def read(self) -> tuple[bool, Any]:
        if self.frames:
            f = self.frames.pop(0)
            time.sleep(self.delay)
            return (f is not None), f
        if self.hang:
            self.released.wait(5)  # a wedged driver: read() does not return
        return False, None

    def set(self, *_: Any) -> bool:
        return False

    def get(self, *_: Any) -> float:
        return 0.0

    def release(self) -> None:
        self.released.set()


def error_lines(stderr: str) -> list[str]:
    """stderr lines that are not interpreter/TF log noise."""
    noise = ("INFO:", "WARNING:", "W0000", "I0000", "E0000", "oneDNN")
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(noise)]


@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> Path:
    """Sample data: 60 images per class and a 60-frame video."""
    from train.sample_data import generate

    return generate(tmp_path_factory.mktemp("sample"), per_class=60, frames=60, seed=1)


MODEL_FIXTURES = {"trained_run", "exported"}


def _needs_model(item: pytest.Item) -> bool:
    return bool(MODEL_FIXTURES & set(getattr(item, "fixturenames", ())))


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only the tests that will run
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that need the tiny run go last, in their order, so the run's background
    process (tests/tiny_run.py) trains while the others run. (A module fixture used on
    both sides of the split is made twice; the ones here cost milliseconds.)"""
    items.sort(key=_needs_model)  # stable: each side keeps its order


@pytest.fixture(scope="session")
def _tiny_run(sample, tmp_path_factory):
    """The background process making the tiny run (tests/tiny_run.py), not yet started."""
    from tests.tiny_run import TinyRun

    tiny = TinyRun(tmp_path_factory.mktemp("runs"))
    yield tiny
    tiny.stop()


@pytest.fixture(scope="session", autouse=True)
def _start_tiny_run(request) -> None:
    """At the session's first test: starts the tiny run if any test of the session needs
    it, so it trains while the tests before those run."""
    if any(_needs_model(item) for item in request.session.items):
        tiny = request.getfixturevalue("_tiny_run")
        tiny.start(request.getfixturevalue("sample"))


@pytest.fixture(scope="session")
def trained_run(_tiny_run, sample) -> Path:
    """A run folder trained from scratch with tiny settings (tests/tiny_run.py)."""
    from tests.tiny_run import TRAINED

    _tiny_run.start(sample)  # no-op once started
    return _tiny_run.wait(TRAINED)


@pytest.fixture(scope="session")
def exported(_tiny_run, sample) -> Path:
    """The run's export folder with float32 and int8 (uint8 io) models."""
    from tests.tiny_run import EXPORTED

    _tiny_run.start(sample)
    return _tiny_run.wait(EXPORTED)


@pytest.fixture(scope="session")
def coral() -> Path:
    """Coral's reference models and photos; skips when the folder is absent."""
    if not (CORAL / "mobilenet_v2_1.0_224_quant.tflite").is_file():
        pytest.skip("Coral reference data not found in "
                    f"{' or '.join(str(d) for d in CORAL_DIRS)}: run `make test-data`")
    return CORAL
