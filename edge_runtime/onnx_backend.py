"""ONNX Runtime as a second backend: a Jetson's GPU through TensorRT or CUDA, the CPU in tests.

:class:`OnnxInterpreter` offers the part of the TFLite ``Interpreter`` API the runtime uses
(``get_input_details``, ``get_output_details``, ``set_tensor``, ``tensor``, ``invoke``,
``get_tensor``), so :class:`edge_runtime.classify.Classifier`, the daemon, the self-test
and the benchmarks run an ``.onnx`` model unchanged: same preprocessing, same results.

Providers are tried in order TensorRT (FP16, with an engine cache so the slow first engine
build happens once) -> CUDA -> CPU; the one that actually runs is in
:attr:`OnnxInterpreter.provider`. ``onnxruntime`` is imported only when an ONNX model is
used, and never TensorFlow.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgekitError

log = logging.getLogger(__name__)

METADATA_KEY = "edgekit_manifest"  # the manifest, as JSON, in the model's metadata_props
SELFTEST_KEY = "edgekit_selftest"
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
SHORT_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
               "cpu": "CPUExecutionProvider"}
INSTALL_HINT = ("pip install onnxruntime (CPU); on a Jetson, onnxruntime-gpu built for your "
                "JetPack release (NVIDIA's Jetson packages: PyPI has no GPU build for aarch64)")
_DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def is_onnx_model(model_path: str | Path) -> bool:
    """True for a ``.onnx`` file name."""
    return Path(model_path).suffix.lower() == ".onnx"


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise EdgekitError(f"an ONNX model needs ONNX Runtime: {INSTALL_HINT}") from None
    return ort


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers ([] when not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def resolve_providers(requested: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The providers to ask for, best first, limited to those this build has.

    Args:
        requested: provider names ("tensorrt", "cuda", "cpu" or onnxruntime's full names);
            None means all of :data:`PROVIDER_ORDER`.

    Returns:
        The available ones in the requested order, always ending with the CPU provider.
        Requested providers that are missing are logged once.
    """
    wanted = [SHORT_NAMES.get(p.lower(), p) for p in (requested or PROVIDER_ORDER)]
    unknown = [p for p in wanted if p not in PROVIDER_ORDER]
    if unknown:
        raise EdgekitError(f"unknown ONNX Runtime provider(s) {', '.join(unknown)}; expected "
                           f"{', '.join(SHORT_NAMES)}")
    have = set(available_providers())
    chosen = [p for p in wanted if p in have]
    missing = [p for p in wanted if p not in have]
    if missing and requested is not None:
        log.warning("ONNX Runtime provider(s) not available here: %s; using %s",
                    ", ".join(missing), ", ".join(chosen or ["CPUExecutionProvider"]))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _provider_options(providers: list[str], cache_dir: str | Path | None) -> list[Any]:
    out: list[Any] = []
    for p in providers:
        if p == "TensorrtExecutionProvider":
            opts = {"trt_fp16_enable": "True"}
            if cache_dir:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                opts.update(trt_engine_cache_enable="True",
                            trt_engine_cache_path=str(cache_dir),
                            trt_timing_cache_enable="True",
                            trt_timing_cache_path=str(cache_dir))
            out.append((p, opts))
        else:
            out.append(p)
    return out


def read_metadata(model_path: str | Path, key: str = METADATA_KEY) -> str | None:
    """A ``metadata_props`` value of an ONNX model, read without loading the graph's weights
    into a session; None when absent or unreadable."""
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            m = onnx.load(str(model_path), load_external_data=False)
        except Exception:  # an unreadable file has no metadata
            return None
        return next((p.value for p in m.metadata_props if p.key == key), None)
    try:  # onnxruntime alone (the device): the session exposes custom metadata
        ort = _ort()
        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        return sess.get_modelmeta().custom_metadata_map.get(key)
    except Exception:
        return None


def read_embedded_manifest(model_path: str | Path) -> dict[str, Any] | None:
    """The edgekit manifest stored in an ONNX model's metadata, or None."""
    raw = read_metadata(model_path)
    if raw is None:
        return None
    try:
        d = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return d if isinstance(d, dict) else None


def embed_metadata(model_path: str | Path, entries: dict[str, str]) -> None:
    """Stores ``entries`` in an ONNX model's ``metadata_props`` (replacing same keys),
    writing the file atomically."""
    import onnx

    from .fileio import atomic_path

    m = onnx.load(str(model_path))
    keep = [(p.key, p.value) for p in m.metadata_props if p.key not in entries]
    del m.metadata_props[:]
    for k, v in keep + sorted(entries.items()):
        p = m.metadata_props.add()
        p.key, p.value = k, v
    with atomic_path(model_path) as tmp:
        onnx.save(m, str(tmp))


class OnnxInterpreter:
    """An ONNX Runtime session behind the TFLite Interpreter methods the runtime calls.

    Args:
        model_path: the ``.onnx`` file.
        threads: intra-op CPU threads (None: onnxruntime's default).
        providers: provider names, best first (None: TensorRT -> CUDA -> CPU, as available).
        cache_dir: TensorRT engine cache folder.

    Raises:
        EdgekitError: onnxruntime missing, not an ONNX model, or not one image input and
            one output.
    """

    def __init__(self, model_path: str | Path, threads: int | None = None,
                 providers: list[str] | tuple[str, ...] | None = None,
                 cache_dir: str | Path | None = None) -> None:
        ort = _ort()
        path = Path(model_path)
        if not path.is_file():
            raise EdgekitError(f"model not found: {path}")
        self.requested = resolve_providers(providers)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # warnings from ORT itself are ours to phrase
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts,
                providers=_provider_options(self.requested, cache_dir))
        except Exception as e:  # onnxruntime raises its own (Fail, InvalidGraph, ...) types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EdgekitError(f"cannot load ONNX model {path}: {first[:300]}") from None
        self.providers = list(self.session.get_providers())
        self.provider = self.providers[0] if self.providers else "CPUExecutionProvider"
        if self.provider != self.requested[0]:
            log.warning("ONNX Runtime runs %s on %s (%s did not start)", path.name,
                        self.provider, self.requested[0])
        else:
            log.info("ONNX Runtime runs %s on %s", path.name, self.provider)
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if len(ins) != 1:
            raise EdgekitError(f"not an image classifier: {len(ins)} inputs, expected 1 "
                               f"[{path}]")
        if len(outs) != 1:
            raise EdgekitError(f"not an image classifier: {len(outs)} outputs, expected 1 "
                               f"[{path}]")
        self._in, self._out = ins[0], outs[0]
        dtype = _DTYPES.get(self._in.type)
        if dtype is None:
            raise EdgekitError(f"unsupported ONNX input type {self._in.type} [{path}]")
        shape = [d if isinstance(d, int) else 1 for d in self._in.shape]
        if len(shape) == 4 and shape[1] == 3 and shape[3] != 3:
            raise EdgekitError(f"ONNX input is channels-first {shape}; edgekit feeds "
                               f"[1, height, width, 3] images (export with NHWC input) [{path}]")
        self._in_shape = np.array(shape, np.int32)
        self._buffer = np.zeros(shape, dtype)
        out_shape = [d if isinstance(d, int) else 1 for d in self._out.shape]
        self._out_shape = np.array(out_shape, np.int32)
        self._result: np.ndarray | None = None

    def allocate_tensors(self) -> None:
        """Nothing to do: ONNX Runtime allocates on its own (TFLite API parity)."""

    def get_input_details(self) -> list[dict[str, Any]]:
        return [{"index": 0, "name": self._in.name, "shape": self._in_shape,
                 "dtype": self._buffer.dtype.type, "quantization": (0.0, 0)}]

    def get_output_details(self) -> list[dict[str, Any]]:
        return [{"index": 1, "name": self._out.name, "shape": self._out_shape,
                 "dtype": np.float32, "quantization": (0.0, 0)}]

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        if index != 0:
            raise ValueError(f"tensor {index} is not the input (0)")
        self._buffer[...] = value

    def tensor(self, index: int) -> Any:
        if index != 0:
            raise ValueError(f"tensor {index} is not the input (0)")
        return lambda: self._buffer

    def invoke(self) -> None:
        self._result = self.session.run([self._out.name], {self._in.name: self._buffer})[0]

    def get_tensor(self, index: int) -> np.ndarray:
        if index == 0:
            return self._buffer.copy()
        if self._result is None:
            raise ValueError("invoke() has not run")
        return np.array(self._result, np.float32, copy=True)
