"""Loads a TFLite model with the interpreter in a child process: a native crash, a hang or a
memory blow-up on a hostile model becomes one :class:`EdgekitError` line, never this
process's end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .backend import backend
from .errors import EdgekitError

LOAD_TIMEOUT_S = 120.0


# Runs in a child process: the interpreter is native code, and a hostile model must not be
# able to crash (or exhaust the memory of) the process that asked.
_CHILD = r"""
import json, sys
try:
    import resource
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
except (ImportError, ValueError, OSError):
    pass
def say(**kw):
    sys.stdout.write("\n" + json.dumps(kw) + "\n")
try:
    import importlib
    module, _, name = sys.argv[4].rpartition(".")
    it = getattr(importlib.import_module(module), name)(model_path=sys.argv[1])
    if sys.argv[2] == "allocate":
        it.allocate_tensors()
    say(ok=True)
except MemoryError:
    say(ok=False, error="out of memory")
except BaseException as e:
    text = str(e).strip()
    say(ok=False, error=text.splitlines()[0][:300] if text else type(e).__name__)
"""


def load_check(path: str | Path, allocate: bool = True,
               timeout: float = LOAD_TIMEOUT_S) -> str:
    """Loads the model with the TFLite interpreter in a child process.

    Args:
        path: the ``.tflite`` file.
        allocate: also allocate its tensors (not possible for an Edge TPU-compiled model
            without the Edge TPU: its custom op has no CPU kernel).
        timeout: seconds before the child is stopped.

    Returns:
        The interpreter package that loaded it ("ai-edge-litert", ...).

    Raises:
        EdgekitError: the interpreter refused the model, crashed on it or timed out.
    """
    path = Path(path)
    size = path.stat().st_size
    # Room for Python, the runtime and a few copies of the model; beyond that a model asks
    # for memory no edge device has.
    limit = max(4 << 30, 6 * size + (2 << 30))
    chosen = backend()  # the child loads the class this process would use, nothing else
    cls = f"{chosen.interpreter_cls.__module__}.{chosen.interpreter_cls.__qualname__}"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), "allocate" if allocate else "build",
             str(limit), cls], capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise EdgekitError(f"the TFLite interpreter did not load {path} within {timeout:g} s"
                           ) from None
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        raise EdgekitError(f"the TFLite interpreter crashed loading {path} ({sig})")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise EdgekitError(f"the TFLite interpreter failed on {path}: {last[:300]}") from None
    if not result.get("ok"):
        raise EdgekitError(f"the TFLite interpreter cannot load {path}: {result.get('error')}")
    return chosen.name


__all__ = ["LOAD_TIMEOUT_S", "load_check"]
