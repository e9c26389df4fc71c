"""Shared fixtures and helpers: tiny sample data, one tiny trained run and its exported
models, Coral's reference folder, waiting with a deadline, a fake camera, running a CLI.

The run is trained once per session with test-sized settings (alpha 0.35, 96 px, a few
short epochs on 168 training images), so every pipeline test uses a real model in seconds.
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


@pytest.fixture(scope="session")
def trained_run(sample, tmp_path_factory) -> Path:
    """A run folder trained from scratch with tiny settings."""
    from train.augment import Augment
    from train.core import TrainConfig, fine_tune

    out = tmp_path_factory.mktemp("runs") / "tiny"
    # The demo's light augmentation: the sample shapes already vary in rotation, scale
    # and lighting, and a tiny model trained from scratch converges faster without more.
    light = Augment(rotation=36, shift=0, shear=0, zoom=0.15, brightness=(1, 1),
                    contrast=0.2)
    # 20 epochs reach a held-out top-1 of ~1.0 (10 stay near 0.7): enough margin for the
    # accuracy asserts. Batch 12 divides the 168/36/36 split exactly, so no partial batch
    # makes Keras trace its step functions again (tracing, not arithmetic, is most of the
    # cost of a run this small).
    cfg = TrainConfig(data=str(sample / "images"), out=str(out), weights="none", alpha=0.35,
                      img_size=96, epochs=20, patience=20, batch_size=12,
                      learning_rate=3e-3, augment=light, seed=0)
    return fine_tune(cfg)


@pytest.fixture(scope="session")
def exported(trained_run) -> Path:
    """The run's export folder with float32 and int8 (uint8 io) models."""
    from convert.export import export

    return export(trained_run, ["float32", "int8"], calib=100).export_dir


@pytest.fixture(scope="session")
def coral() -> Path:
    """Coral's reference models and photos; skips when the folder is absent."""
    if not (CORAL / "mobilenet_v2_1.0_224_quant.tflite").is_file():
        pytest.skip("Coral reference data not found in "
                    f"{' or '.join(str(d) for d in CORAL_DIRS)}: run `make test-data`")
    return CORAL
