"""Checkpoints that make ``--resume`` possible and keep the best model across resumes.

``runs/NAME/checkpoints/`` holds:

* ``last.keras``: the model with its optimizer state after the last finished epoch;
* ``best.keras``: the best model so far on validation accuracy (ties broken by the
  validation loss), over all phases and resumes (a resumed run starts from the recorded
  best score, so a worse epoch after a resume never replaces it);
* ``state.json``: phase, epochs finished in it, best score, and the history so far;
* ``data.json``: classes and the split, so a resumed run trains on the same files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import atomic_path, write_json

PHASES = ("head", "fine_tune")
SCORE = "val_score"  # what checkpoints, early stopping and plateau monitor; see score_callback
# Printed beside the score: it exceeds 1 by the tie-breaker when accuracy is 1.
SCORE_MEANING = ("val_accuracy plus a tie-breaker smaller than one image's worth that "
                 "favours lower val_loss, so it can exceed 1")


def score_callback(n_val: int):
    """Adds ``val_score`` to each epoch's logs: validation accuracy, ties broken by loss.

    ``val_accuracy + (1 / (1 + val_loss)) / (n_val + 1)``: the loss term is smaller than
    one image's worth of accuracy, so a more accurate epoch always wins, and among equally
    accurate ones (common once a small validation split saturates) the more confident one
    wins instead of simply the first. Must come before the callbacks that monitor it.
    """
    import keras

    class Score(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is not None and "val_accuracy" in logs and "val_loss" in logs:
                loss = max(0.0, float(logs["val_loss"]))
                logs[SCORE] = float(logs["val_accuracy"]) + 1.0 / (1.0 + loss) / (n_val + 1)

    return Score()


@dataclass
class State:
    """Where training stands.

    Attributes:
        phase: "head" or "fine_tune".
        epoch: epochs finished in ``phase``.
        phase_done: the phase ended (all epochs run, or early stopping).
        best: best ``val_score`` so far (-1 before the first epoch).
        history: per-epoch logs of all finished epochs, all phases.
    """

    phase: str = "head"
    epoch: int = 0
    phase_done: bool = False
    best: float = -1.0
    history: dict[str, list[float]] = field(default_factory=dict)


def folder(out: Path) -> Path:
    """The run's checkpoint folder."""
    return out / "checkpoints"


def save_state(out: Path, state: State) -> None:
    """Writes ``state.json`` atomically."""
    write_json(folder(out) / "state.json", asdict(state))


def load_state(out: Path) -> State:
    """Reads ``state.json``.

    Raises:
        EdgekitError: nothing to resume, or an unreadable state.
    """
    path = folder(out) / "state.json"
    if not path.is_file() or not (folder(out) / "last.keras").is_file():
        raise EdgekitError(f"nothing to resume in {out}: no checkpoints/state.json and "
                           "last.keras (it finished no epoch yet, or it is not a run folder)")
    try:
        d = json.loads(path.read_text())
        state = State(**d)
    except (OSError, ValueError, TypeError) as e:
        raise EdgekitError(f"cannot read {path}: {e}") from None
    if state.phase not in PHASES:
        raise EdgekitError(f"bad phase {state.phase!r} in {path}")
    return state


def save_model(model, path: Path) -> None:
    """``model.save`` through a temporary file, so a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def load_model(path: Path):
    """Loads a checkpoint in Keras safe mode (no arbitrary code from the file)."""
    import keras

    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - zip, HDF5 and deserialisation errors vary
        raise EdgekitError(f"cannot load checkpoint {path}: {e}") from None


def callback(out: Path, state: State):
    """A Keras callback that saves ``last.keras`` and ``state.json`` after every epoch."""
    import keras

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            for k, v in logs.items():
                state.history.setdefault(k, []).append(float(v))
            state.epoch = epoch + 1
            score = logs.get(SCORE)
            if score is not None and score > state.best:
                state.best = float(score)
            save_model(self.model, folder(out) / "last.keras")
            save_state(out, state)

    return Progress()


def best_checkpoint(out: Path, state: State):
    """``ModelCheckpoint`` of the best ``val_score``, starting from ``state.best``."""
    import keras

    return keras.callbacks.ModelCheckpoint(
        str(folder(out) / "best.keras"), monitor=SCORE, mode="max",
        save_best_only=True, initial_value_threshold=state.best if state.best >= 0 else None)


def finish_phase(out: Path, state: State, model) -> None:
    """Records a finished phase with the model it ended with (best weights restored)."""
    state.phase_done = True
    save_model(model, folder(out) / "last.keras")
    save_state(out, state)


def start_phase(out: Path, state: State, phase: str) -> None:
    """Moves the state to the start of ``phase``."""
    state.phase, state.epoch, state.phase_done = phase, 0, False
    save_state(out, state)


def write_data(out: Path, classes: list[str], split, root: Path, report: dict) -> None:
    """Records classes, split and data root for a later ``--resume``."""
    write_json(folder(out) / "data.json", {"classes": classes, "split": split.to_dict(),
                                           "root": str(root), "report": report})


def read_data(out: Path):
    """(classes, split, root, report) as recorded by :func:`write_data`."""
    from .data import Split

    path = folder(out) / "data.json"
    try:
        d = json.loads(path.read_text())
        return d["classes"], Split.from_dict(d["split"]), Path(d["root"]), d["report"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgekitError(f"cannot read {path}: {e}") from None
