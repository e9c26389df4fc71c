"""The session's tiny trained run and its exported models, made by a background process.

Training and converting it is the largest single cost of ``make test`` (147 s of a 360-s
run on 2 shared cores, in-process), while pytest runs tests one at a time and leaves the
second core mostly idle. So the session starts ``python -m tests.tiny_run SAMPLE FOLDER``
at its first test, at low priority (nice 10: the tests keep their CPU), conftest runs the
tests that need the model last, and the ``trained_run`` and ``exported`` fixtures wait for
this process's markers. The settings are the ones the suite was tuned on; only where it
runs changed (same seed and op determinism: the same model, test top-1 0.9722 both ways).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINED, EXPORTED = "trained.path", "exported.path"  # markers: written when a stage is done
LOG = "tiny_run.log"


def train(sample: Path, out: Path) -> Path:
    """A run folder trained from scratch with tiny settings; returns it."""
    from train.augment import Augment
    from train.core import TrainConfig, fine_tune

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


def _mark(folder: Path, name: str, value: Path) -> None:
    tmp = folder / f".{name}.tmp"
    tmp.write_text(str(value))
    tmp.replace(folder / name)  # a marker is whole or absent


def _end_with_parent() -> None:
    """SIGTERM when pytest dies (killed, or timed out without its finalizers), not
    minutes of orphaned training. Linux only; elsewhere TinyRun.stop() still ends it."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    """Trains into FOLDER/tiny, marks it, exports float32 and int8, marks that."""
    sample, folder = (Path(a) for a in (argv or sys.argv[1:]))
    os.nice(10)  # idle cycles only: the tests running beside it keep their timing
    _end_with_parent()
    run = train(sample, folder / "tiny")
    _mark(folder, TRAINED, run)
    from convert.export import export

    _mark(folder, EXPORTED, export(run, ["float32", "int8"], calib=100).export_dir)
    return 0


class TinyRun:
    """Starts the background process once and waits for its stages."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder  # the run, the markers and the log go here
        self.proc: subprocess.Popen | None = None

    def start(self, sample: Path) -> None:
        """Starts the process on ``sample``; a no-op once started."""
        if self.proc is not None:
            return
        folder = self.folder
        with open(folder / LOG, "wb") as log:
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.tiny_run", str(sample), str(folder)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env)

    def wait(self, marker: str, timeout: float = 1800) -> Path:
        """The path the stage ``marker`` wrote; RuntimeError with the log's tail if the
        process ended without it or ``timeout`` seconds passed."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        path = self.folder / marker
        while not path.is_file():
            rc = self.proc.poll()
            if rc is not None and not path.is_file():
                raise RuntimeError(f"the tiny run stopped (exit {rc}) before {marker}:\n"
                                   + self._tail())
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the tiny run has no {marker} after {timeout:.0f} s:\n"
                                   + self._tail())
            time.sleep(0.2)
        return Path(path.read_text())

    def _tail(self, lines: int = 30) -> str:
        text = (self.folder / LOG).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Ends the process if it is still running (an interrupted or failed session)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
