"""Finds a TFLite interpreter (LiteRT first) and the Edge TPU delegate; no TensorFlow needed.

Order: ``ai_edge_litert`` (LiteRT, the maintained runtime), ``tflite_runtime`` (older
Pi images), then ``tensorflow.lite`` as a development fallback only. The official pycoral
is not on PyPI, so the Edge TPU delegate is loaded directly from ``libedgetpu``.
"""

from __future__ import annotations

import functools
import importlib
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EdgekitError
from .quiet import quiet_native
from .tflite import check_identifier, require_model_file

EDGETPU_CUSTOM_OP = b"edgetpu-custom-op"
EDGETPU_LIBRARY = {
    "Linux": "libedgetpu.so.1",
    "Darwin": "libedgetpu.1.dylib",
    "Windows": "edgetpu.dll",
}[platform.system()] if platform.system() in ("Linux", "Darwin", "Windows") else "libedgetpu.so.1"

_CANDIDATES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow"),  # tf.lite is an attribute, not an importable module
)


@dataclass(frozen=True)
class Backend:
    """The interpreter package in use.

    Attributes:
        name: distribution name, e.g. "ai-edge-litert".
        version: its version string.
        interpreter_cls: the ``Interpreter`` class.
        load_delegate: the package's ``load_delegate`` function.
    """

    name: str
    version: str
    interpreter_cls: Any
    load_delegate: Any


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - version is informational only
        return "unknown"


@functools.cache
def backend() -> Backend:
    """Returns the first interpreter package that imports (cached).

    Raises:
        EdgekitError: none is installed (with the install command).
    """
    for dist, module in _CANDIDATES:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if dist == "tensorflow":
            # The distribution may be tensorflow-cpu (so ask the module for its version),
            # and tf.lite keeps load_delegate under experimental.
            return Backend(dist, getattr(mod, "__version__", "unknown"), mod.lite.Interpreter,
                           mod.lite.experimental.load_delegate)
        return Backend(dist, _version(dist), mod.Interpreter, mod.load_delegate)
    raise EdgekitError("no TFLite interpreter found: pip install ai-edge-litert "
                       "(or tflite-runtime on older boards)")


def is_edgetpu_model(model_path: str | Path) -> bool:
    """True when the model was compiled by ``edgetpu_compiler`` (has the custom op)."""
    return EDGETPU_CUSTOM_OP in Path(model_path).read_bytes()


def load_edgetpu_delegate(device: str | None = None) -> Any:
    """Loads the Edge TPU delegate from ``libedgetpu`` directly.

    Args:
        device: "usb", "usb:N", "pci:N" or None for the first Edge TPU found.

    Raises:
        EdgekitError: the library or the device is missing, with how to fix it.
    """
    import ctypes
    import sys

    hint = ("install the Edge TPU runtime (Debian/Ubuntu: apt install libedgetpu1-std from "
            "Coral's package repository) and plug in the accelerator")
    try:
        ctypes.CDLL(EDGETPU_LIBRARY)  # checked first: a failed load_delegate is noisy
    except OSError:
        raise EdgekitError(f"Edge TPU library {EDGETPU_LIBRARY} not found; {hint}") from None
    options = {"device": device} if device else {}
    # After a failed load, LiteRT's Delegate.__del__ raises an AttributeError that Python
    # prints as an "ignored exception" traceback; keep that noise off stderr.
    old_hook = sys.unraisablehook

    def hook(u) -> None:
        if not (isinstance(u.exc_value, AttributeError) and "Delegate" in repr(u.object)):
            old_hook(u)

    sys.unraisablehook = hook
    try:
        return backend().load_delegate(EDGETPU_LIBRARY, options)
    except (ValueError, OSError, RuntimeError) as e:
        raise EdgekitError(
            f"Edge TPU delegate did not load ({EDGETPU_LIBRARY}"
            f"{', device ' + device if device else ''}): {e}; {hint}") from None
    finally:
        sys.unraisablehook = old_hook


def _check_has_operators(data: bytes, path: Path) -> None:
    """Refuses a model whose main graph has no operators: LiteRT loads it, then fails on the
    first read of the output ("Tensor data is null"). A lazy FlatBuffer read (microseconds);
    the full structural check is ``python -m convert lint``."""
    from .tflite import find_schema

    s = find_schema()
    if s is None:
        return
    try:
        graphs = s.Model.GetRootAs(data, 0)
        empty = graphs.SubgraphsLength() < 1 or graphs.Subgraphs(0).OperatorsLength() < 1
    except Exception:  # a damaged FlatBuffer: the interpreter's own load says how
        return
    if empty:
        raise EdgekitError(f"invalid TFLite model: its main graph has no operators [{path}]")


def make_interpreter(model_path: str | Path, threads: int | None = None,
                     edgetpu: bool | str = False, providers: list[str] | None = None,
                     engine_cache: str | Path | None = None) -> Any:
    """Creates and allocates an interpreter for a ``.tflite`` file, or for an ``.onnx`` one
    an :class:`edge_runtime.onnx_backend.OnnxInterpreter` with the same methods.

    Args:
        model_path: the model.
        threads: CPU threads for the interpreter (None: the backend's default).
        edgetpu: False, True (first Edge TPU) or a device string such as "usb:0".
        providers: ONNX Runtime providers, best first ("tensorrt", "cuda", "cpu");
            None: all that are available. Ignored for TFLite models.
        engine_cache: TensorRT engine cache folder (ONNX models only).

    Raises:
        EdgekitError: missing file, not a TFLite model, or an Edge TPU model without an
            Edge TPU.
    """
    path = require_model_file(model_path)
    if path.suffix.lower() == ".onnx":
        from .onnx_backend import OnnxInterpreter

        return OnnxInterpreter(path, threads, providers, engine_cache)
    if path.suffix.lower() == ".rpk":  # the Raspberry Pi AI Camera runs it on its sensor
        from .imx500_backend import Imx500Interpreter

        return Imx500Interpreter(path)
    data = path.read_bytes()
    check_identifier(data, path)
    _check_has_operators(data, path)
    delegates = []
    if edgetpu:
        delegates.append(load_edgetpu_delegate(edgetpu if isinstance(edgetpu, str) else None))
    elif EDGETPU_CUSTOM_OP in data:
        raise EdgekitError(
            f"{path.name} is compiled for the Edge TPU (edgetpu-custom-op) and cannot run on "
            "the CPU: run it with --edgetpu on a machine with a Coral device, or use the "
            "CPU model it was compiled from (e.g. model_int8.tflite)")
    try:
        with quiet_native():  # LiteRT's XNNPACK INFO line, printed on allocation
            interp = backend().interpreter_cls(model_path=str(path), num_threads=threads,
                                               experimental_delegates=delegates or None)
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgekitError(f"cannot load model {path}: {first}") from None
    return interp
