"""Keeps TensorFlow's and LiteRT's own C++ log lines off the user's terminal (``--verbose``
shows them).

``TF_CPP_MIN_LOG_LEVEL`` hides most of them but not all: lines logged before absl's
logging starts (``WARNING: All log messages before absl::InitializeLog() ...`` and the
oneDNN ``I0000`` notice, at every level) and the harmless ``E0000 ... NodeDef mentions
attribute use_unbounded_threadpool`` that tf.data logs when Keras and TensorFlow
versions differ slightly. :func:`quiet_tensorflow` sets the level and, while it is
active, passes file descriptor 2 through a filter that drops exactly those lines; every
other line (errors, warnings, tracebacks) reaches the terminal unchanged. The converter's
``fully_quantize: 0, inference_type: 6, ...`` line and Keras' "triggered tf.function
retracing" warnings (``predict`` on batches of a new size; harmless here) are dropped too.

LiteRT prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` from C++ when an
interpreter allocates its tensors, whatever ``TF_CPP_MIN_LOG_LEVEL`` says (its Python API
has no switch): :func:`quiet_native` hides it around that one call.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

# Whole lines only; anything else on stderr is passed on.
NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to"
    rb" STDERR"
    rb"|[IW]\d{4} \d+:\d+:\d+\.\d+ +\d+ \S+:\d+\] "  # absl INFO / WARNING from C++
    rb"|E\d{4} \d+:\d+:\d+\.\d+ +\d+ node_def_util\.cc:\d+\] NodeDef mentions attribute "
    rb"use_unbounded_threadpool "
    rb"|fully_quantize: \d+, inference_type: \d+, input_inference_type: "
    rb"|WARNING:tensorflow:\d+ out of the last \d+ calls to <function .*> triggered "
    rb"tf\.function retracing\."
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$)")


def is_noise(line: bytes) -> bool:
    """True for a TensorFlow log line :func:`quiet_tensorflow` drops."""
    return NOISE.match(line) is not None


def _pump(read_fd: int, write_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            kept = b"".join(ln + b"\n" for ln in lines if not is_noise(ln))
            if kept:
                os.write(write_fd, kept)
        if pending and not is_noise(pending):
            os.write(write_fd, pending)


@contextlib.contextmanager
def quiet_tensorflow(verbose: bool = False) -> Iterator[None]:
    """Hides TensorFlow's C++ log noise while the block runs (enter before importing TF).

    Args:
        verbose: show everything: set nothing, filter nothing.

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless the user set it, and routes stderr (the file
    descriptor, so C++ and subprocesses are covered) through a line filter; both are
    undone on exit. Meant for a CLI's ``main``, not for library code.
    """
    if verbose:
        yield
        return
    old_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    pump = threading.Thread(target=_pump, args=(read_fd, saved), name="stderr-filter",
                            daemon=True)
    pump.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees EOF
        pump.join(timeout=5)
        os.close(saved)
        if old_level is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)


@contextlib.contextmanager
def quiet_native(verbose: bool = False) -> Iterator[None]:
    """Hides native log noise printed while a short block runs (an interpreter's creation).

    File descriptor 2 goes to a temporary file for the block; afterwards every line that is
    not noise is written to the real stderr, in order. No thread: cheap enough for each
    model load, and safe in the long-running daemon.

    Args:
        verbose: show everything: redirect nothing.
    """
    if verbose:
        yield
        return
    # Serialised: two threads swapping fd 2 at once could leave it on a deleted file.
    with _NATIVE_LOCK, tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all (closed by whoever started us): nothing to hide
            yield
            return
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = b"".join(ln for ln in held.read().splitlines(keepends=True)
                            if not is_noise(ln.rstrip(b"\r\n")))
            if kept:
                os.write(2, kept)


_NATIVE_LOCK = threading.RLock()
