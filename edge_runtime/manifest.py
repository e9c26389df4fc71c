"""The model manifest: what the runtime needs to preprocess and label like training did."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import EdgekitError, brief
from .preprocess import DEFAULT_INTERPOLATION, INTERPOLATIONS

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Normalization:
    """Maps a 0-255 pixel to the model's real-valued input: ``(pixel - mean) / std``.

    edgekit models scale to [-1, 1] inside the model, so theirs is mean 0, std 1 (raw
    pixels in). A model that expects [-1, 1] outside the model has mean 127.5, std 127.5.
    """

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not self.std or self.std <= 0:
            raise ValueError(f"normalization std must be > 0, got {self.std}")


@dataclass(frozen=True)
class Manifest:
    """Everything needed to feed a model the way it was trained.

    Attributes:
        labels: class names; list index = class index.
        input_size: (height, width) in pixels.
        color_order: channel order the model expects, "RGB" or "BGR".
        normalization: pixel-to-input mapping applied before quantization.
        resize: "stretch" (resize the whole frame to the input size) or "center_crop"
            (crop the largest centred region of the input's aspect ratio, then resize).
        interpolation: how images are shrunk, one of
            :data:`edge_runtime.preprocess.INTERPOLATIONS`. A manifest without the field
            was written before the choice existed, when every model used "area".
        extra: everything else (training settings, split file lists, provenance).
        drift_baseline: the validation split's top-1 confidence and class distribution
            per model file (``{"version", "split", "models": {file: entry}}``, see
            :mod:`edge_runtime.drift`); None for a manifest written before it existed.
    """

    labels: list[str]
    input_size: tuple[int, int]
    color_order: str = "RGB"
    normalization: Normalization = field(default_factory=Normalization)
    resize: str = "stretch"
    extra: dict[str, Any] = field(default_factory=dict)
    interpolation: str = DEFAULT_INTERPOLATION
    drift_baseline: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"color_order {self.color_order!r}, expected 'RGB' or 'BGR'")
        if self.resize not in ("stretch", "center_crop"):
            raise ValueError(f"resize {self.resize!r}, expected 'stretch' or 'center_crop'")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r}, expected one of "
                             f"{', '.join(INTERPOLATIONS)}")
        h, w = self.input_size
        if h <= 0 or w <= 0:
            raise ValueError(f"input_size {self.input_size}, expected positive (height, width)")

    def to_dict(self) -> dict[str, Any]:
        """Returns the JSON form (``schema_version`` first, ``extra`` merged in)."""
        d: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        d["labels"] = list(self.labels)
        d["input_size"] = {"height": self.input_size[0], "width": self.input_size[1]}
        d["color_order"] = self.color_order
        d["normalization"] = asdict(self.normalization)
        d["resize"] = self.resize
        d["interpolation"] = self.interpolation
        if self.drift_baseline is not None:
            d["drift_baseline"] = self.drift_baseline
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> Manifest:
        """Builds a Manifest from its JSON form, naming the bad field on error."""
        known = {"schema_version", "labels", "input_size", "color_order", "normalization",
                 "resize", "interpolation", "drift_baseline"}
        try:
            labels = d["labels"]
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise ValueError("labels must be a list of strings")
            size = d["input_size"]
            norm = d.get("normalization", {})
            drift = d.get("drift_baseline")
            if drift is not None and not isinstance(drift, dict):
                raise ValueError(f"drift_baseline must be an object, got {brief(drift)}")
            return cls(
                labels=list(labels),
                input_size=(int(size["height"]), int(size["width"])),
                color_order=d.get("color_order", "RGB"),
                normalization=Normalization(float(norm.get("mean", 0.0)),
                                            float(norm.get("std", 1.0))),
                resize=d.get("resize", "stretch"),
                interpolation=d.get("interpolation", "area"),
                drift_baseline=drift,
                extra={k: v for k, v in d.items() if k not in known},
            )
        except KeyError as e:
            raise EdgekitError(f"invalid manifest: missing field {e} [{source}]") from None
        except (TypeError, ValueError) as e:
            raise EdgekitError(f"invalid manifest: {e} [{source}]") from None

    def save(self, path: str | Path) -> None:
        """Writes the manifest atomically."""
        from .fileio import write_json

        write_json(path, self.to_dict())


def load_manifest(path: str | Path) -> Manifest:
    """Reads a manifest file.

    Raises:
        EdgekitError: missing, not JSON, or a field is wrong (the message names it).
    """
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgekitError(f"manifest not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgekitError(f"invalid manifest: not JSON ({e}) [{path}]") from None
    if not isinstance(d, dict):
        raise EdgekitError(f"invalid manifest: expected a JSON object [{path}]")
    return Manifest.from_dict(d, source=str(path))


def manifest_beside(model_path: str | Path) -> Manifest | None:
    """Returns the manifest in the model's folder, or None when there is none."""
    candidate = Path(model_path).parent / MANIFEST_NAME
    return load_manifest(candidate) if candidate.is_file() else None
