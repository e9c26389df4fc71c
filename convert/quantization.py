"""Quantization choices as a small validated config, applied to the converter in one place."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import EdgekitError

IO_TYPES = ("uint8", "int8", "float")


@dataclass(frozen=True)
class Quantization:
    """How one TFLite variant is produced.

    Use the named constructors: ``Quantization.float32()``, ``.float16()``, ``.dynamic()``,
    ``.int8(representative, io="uint8")``.

    Attributes:
        name: variant name, also the file suffix (``model_<name>.tflite``).
        kind: "none", "float16", "dynamic" or "int8".
        io: input/output type for full-integer models ("uint8", "int8" or "float").
        representative: callable returning an iterable of float32 [1, H, W, 3] batches.
    """

    name: str
    kind: str
    io: str = "float"
    representative: Callable[[], Iterable[list[np.ndarray]]] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("none", "float16", "dynamic", "int8"):
            raise ValueError(f"quantization kind {self.kind!r}, expected none, float16, "
                             "dynamic or int8")
        if self.io not in IO_TYPES:
            raise ValueError(f"io type {self.io!r}, expected one of {IO_TYPES}")
        if self.kind == "int8" and self.representative is None:
            raise ValueError("int8 quantization needs a representative dataset")

    @classmethod
    def float32(cls) -> Quantization:
        """No quantization."""
        return cls("float32", "none")

    @classmethod
    def float16(cls) -> Quantization:
        """Weights stored as float16; computation in float32."""
        return cls("float16", "float16")

    @classmethod
    def dynamic(cls) -> Quantization:
        """Dynamic-range: int8 weights, float activations."""
        return cls("dynamic", "dynamic")

    @classmethod
    def int8(cls, representative: Callable[[], Iterable[list[np.ndarray]]],
             io: str = "uint8") -> Quantization:
        """Full-integer int8 with calibrated activations; ``io`` sets input/output types."""
        return cls("int8", "int8", io, representative)

    def converter(self, saved_model: str | Path) -> Any:
        """A ``tf.lite.TFLiteConverter`` for ``saved_model`` set up for this variant: every
        converter edgekit uses (the quantization debugger's too) is made here."""
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        self.apply(converter)
        return converter

    def apply(self, converter: Any) -> None:
        """Configures a ``tf.lite.TFLiteConverter`` for this variant."""
        import tensorflow as tf

        if self.kind == "none":
            return
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if self.kind == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif self.kind == "int8":
            converter.representative_dataset = self.representative
            # Every op must have an int8 kernel (what the Edge TPU needs); a float op would
            # silently fall back otherwise.
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if self.io != "float":
                io_type = {"uint8": tf.uint8, "int8": tf.int8}[self.io]
                converter.inference_input_type = io_type
                converter.inference_output_type = io_type


def parse_variants(text: str) -> list[str]:
    """Parses ``float32,int8`` into a validated list."""
    known = ("float32", "float16", "dynamic", "int8", "edgetpu", "onnx", "imx500")
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in known]
    if bad or not names:
        raise EdgekitError(f"unknown variant(s) {bad or text!r}, expected some of {list(known)}")
    return list(dict.fromkeys(names))
