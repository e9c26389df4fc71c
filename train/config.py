"""Training settings: one frozen dataclass, validated, recorded in the run folder."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from edge_runtime.errors import EdgekitError
from edge_runtime.preprocess import DEFAULT_INTERPOLATION, INTERPOLATIONS

from .augment import Augment
from .model import ALPHAS, IMAGENET_SIZES
from .pipeline import CACHE_CHOICES

SCHEDULES = ("constant", "cosine", "plateau")
STRATEGIES = ("default", "mirrored", "multiworker")
AUGMENT_CHOICES = ("auto", "none", "light", "classic")  # what --augment accepts
AUGMENT_POLICIES = (*AUGMENT_CHOICES, "custom")  # custom: single flags given


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (all recorded in the run's manifest and ``train_config.json``).

    Attributes:
        data: class folders, train/val[/test] folders, a CSV or a JSON Lines file.
        out: run folder to write.
        weights: "imagenet", "none" or a path to a local no-top ``.h5``.
        alpha: MobileNetV2 width multiplier.
        img_size: square input size.
        epochs: head-training epochs (early stopping may end sooner).
        fine_tune_epochs: extra epochs with the top ``unfreeze`` base layers trainable
            (transfer learning only), at a tenth of the learning rate.
        unfreeze: base layers to unfreeze for fine-tuning.
        batch_size: batch size.
        learning_rate: Adam learning rate for the head.
        dropout: dropout before the classifier.
        l2: L2 penalty on the classifier's weights (0 = none).
        label_smoothing: label smoothing of the cross-entropy loss.
        val_fraction: share of each class for validation (early stopping, checkpoints).
        test_fraction: share of each class held out, never seen in training.
        field_test_fraction: share of the field images (those with a device sidecar)
            held out as the field test split, by whole device/time groups
            (:mod:`train.field`).
        field_block_seconds: length of the time blocks field images are grouped by.
        patience: early-stopping patience in epochs.
        augment: augmentation settings, or None for none.
        augment_policy: "auto" (a short pilot on the validation split picks ``augment``
            among none, light and classic, flip on or off; see :mod:`train.policy`),
            "none", "light", "classic" (the named presets) or "custom" (``augment`` as
            given).
        resize: "center_crop" or "stretch"; recorded so the runtime does the same.
        interpolation: how images are shrunk, "linear" or "area"
            (:data:`edge_runtime.preprocess.INTERPOLATIONS`); recorded likewise.
        class_weights: weight the loss by inverse class frequency (imbalanced data).
        min_per_class: a class with fewer usable images is an error naming it.
        lr_schedule: "constant", "cosine" (decay to 0 over each phase) or "plateau"
            (divide by 5 after ``patience // 2`` epochs without improvement).
        warmup_epochs: linear learning-rate warm-up before the schedule.
        cache: decoded images kept after the first epoch: "memory", "disk" or "none".
        strategy: "default", "mirrored" (all local GPUs) or "multiworker" (TF_CONFIG);
            mixed precision is used whenever a GPU is present.
        seed: fixes the split, initialisation, shuffling and augmentation.
        force: allow writing into an existing, non-empty run folder.
    """

    data: str
    out: str
    weights: str = "imagenet"
    alpha: float = 1.0
    img_size: int = 224
    epochs: int = 10
    fine_tune_epochs: int = 0
    unfreeze: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    dropout: float = 0.2
    l2: float = 0.0
    label_smoothing: float = 0.0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    field_test_fraction: float = 0.3
    field_block_seconds: float = 600.0
    patience: int = 5
    augment: Augment | None = field(default_factory=Augment)
    augment_policy: str = "custom"
    resize: str = "center_crop"
    interpolation: str = DEFAULT_INTERPOLATION
    class_weights: bool = True
    min_per_class: int = 5
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    cache: str = "memory"
    strategy: str = "default"
    seed: int = 0
    force: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "img_size"):
            if getattr(self, name) < 1:
                raise EdgekitError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 0.5 or not 0 < self.test_fraction < 0.5:
            raise EdgekitError("val and test fractions must be in (0, 0.5), got "
                               f"{self.val_fraction} and {self.test_fraction}")
        if not 0 < self.field_test_fraction < 1 or not self.field_block_seconds > 0:
            raise EdgekitError("field_test_fraction must be in (0, 1) and field_block_seconds "
                               f"> 0, got {self.field_test_fraction} and "
                               f"{self.field_block_seconds}")
        choices = {"augment_policy": AUGMENT_POLICIES, "lr_schedule": SCHEDULES,
                   "strategy": STRATEGIES, "cache": CACHE_CHOICES,
                   "resize": ("center_crop", "stretch"), "interpolation": INTERPOLATIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise EdgekitError(f"{name} {getattr(self, name)!r}, expected one of "
                                   f"{', '.join(allowed)}")
        if self.alpha not in ALPHAS:
            raise EdgekitError(f"alpha {self.alpha}, expected one of "
                               f"{', '.join(map(str, ALPHAS))}")
        if self.img_size < 32:
            raise EdgekitError(f"img_size {self.img_size} is too small (minimum 32)")
        if not 0 <= self.dropout < 1 or not 0 <= self.label_smoothing < 1 or self.l2 < 0:
            raise EdgekitError("dropout and label_smoothing must be in [0, 1), l2 >= 0")
        if self.learning_rate <= 0:
            raise EdgekitError(f"learning_rate must be > 0, got {self.learning_rate}")

    def warnings(self) -> list[str]:
        """Settings that work but deserve a word."""
        out = []
        if self.img_size not in IMAGENET_SIZES and self.weights.lower() != "none":
            out.append(f"no ImageNet weights exist for {self.img_size} px (only "
                       f"{', '.join(map(str, IMAGENET_SIZES))}); Keras loads the 224 px "
                       "weights, which transfer less well")
        if self.weights.lower() == "none" and self.fine_tune_epochs:
            out.append("--fine-tune-epochs is ignored when training from scratch "
                       "(--weights none trains every layer already)")
        return out

    def to_dict(self) -> dict:
        """JSON form (``augment`` as a dict or null)."""
        d = asdict(self)
        d["augment"] = self.augment.to_dict() if self.augment else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise EdgekitError(f"unknown training settings: {', '.join(sorted(unknown))}")
        d = dict(d)
        d.setdefault("interpolation", "area")  # a run recorded before the choice existed
        aug = d.get("augment")
        if isinstance(aug, dict):
            aug = dict(aug)
            aug["brightness"] = tuple(aug.get("brightness", (1.0, 1.0)))
            d["augment"] = Augment(**aug)
        return cls(**d)

    def save(self, path: str | Path) -> None:
        """Writes ``train_config.json`` (atomically)."""
        from edge_runtime.fileio import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Reads a ``train_config.json``."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise EdgekitError(f"cannot read training settings {path}: {e}") from None


def warn(cfg: TrainConfig) -> None:
    """Prints :meth:`TrainConfig.warnings` to stderr."""
    for line in cfg.warnings():
        print(f"warning: {line}", file=sys.stderr)
