"""What to convert: a training run, or a Keras/SavedModel file made elsewhere."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import file_sha256
from edge_runtime.labels import read_labels
from edge_runtime.manifest import Manifest, Normalization
from edge_runtime.runs import Split, load_arrays, load_run, scan, stratified_split


@dataclass
class Source:
    """A model to convert and the data to calibrate and check it with.

    Attributes:
        path: the ``.keras`` file or SavedModel folder.
        manifest: labels, input size and preprocessing for the exported models.
        export_dir: where the models go.
        data_root: folder the split's relative paths start from (None: no data).
        split: calibration comes from ``train``, checks from ``test`` (None: no data).
        origin: "run" or "external".
        seed: for choosing calibration images.
    """

    path: Path
    manifest: Manifest
    export_dir: Path
    data_root: Path | None
    split: Split | None
    origin: str
    seed: int = 0

    def sha256(self) -> str:
        """Hash of the source model (files of a SavedModel folder, in order)."""
        h = hashlib.sha256()
        files = [self.path] if self.path.is_file() else sorted(
            p for p in self.path.rglob("*") if p.is_file())
        for f in files:
            h.update(f.read_bytes())
        return h.hexdigest()

    @staticmethod
    def sha256_of(path: Path) -> str:
        """sha256 of one file."""
        return file_sha256(path)

    def test_arrays(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Held-out images through the runtime's preprocessing (empty without data)."""
        if self.split is None or self.data_root is None:
            return np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, np.int64), []
        return load_arrays(self.data_root, self.split.test, self.manifest.input_size,
                           self.manifest.resize, self.manifest.interpolation)


def open_source(target: str | Path, labels: str | Path | None = None,
                img_size: int | None = None, data: str | Path | None = None,
                out: str | Path | None = None, seed: int = 0) -> Source:
    """Resolves ``target``: a run folder, a ``.keras`` file or a SavedModel folder.

    A model not made by ``train`` needs ``labels`` and ``img_size``; ``data`` (a folder
    of class subfolders) is split 50/50, stratified, into calibration and check images.

    Raises:
        EdgekitError: missing pieces, named.
    """
    target = Path(target)
    if not target.exists():
        raise EdgekitError(f"run folder or model not found: {target}")
    if target.is_dir() and (target / "manifest.json").is_file() and \
            (target / "model.keras").exists():
        manifest, split, root = load_run(target)
        seed = int(manifest.extra.get("training", {}).get("seed", seed))
        return Source(target / "model.keras", manifest, Path(out or target / "export"), root,
                      split, "run", seed)
    is_saved_model = target.is_dir() and (target / "saved_model.pb").is_file()
    if not (is_saved_model or target.suffix == ".keras"):
        raise EdgekitError(f"expected a training run folder, a .keras file or a SavedModel "
                           f"folder, got {target}")
    if labels is None or img_size is None:
        raise EdgekitError(f"{target.name} was not made by edgekit's train: pass --labels "
                           "FILE and --img-size N (and --data DIR to calibrate and check)")
    names_by_index = read_labels(labels)
    names = [names_by_index.get(i, str(i)) for i in range(max(names_by_index) + 1)]
    manifest = Manifest(names, (img_size, img_size), normalization=Normalization(0.0, 1.0),
                        resize="center_crop",
                        extra={"model": {"source": str(target.resolve()),
                                         "input_range": "0-255 RGB (model's own scaling)"}})
    split = root = None
    if data is not None:
        classes, files = scan(data, min_per_class=2)
        if classes != names:
            raise EdgekitError(f"--data classes {classes} differ from the labels {names}")
        root = Path(data)
        s = stratified_split(root, classes, files, 0.01, 0.5, seed)
        split = Split(s.train + s.val, [], s.test)
    default_out = target.parent / "export" if target.is_file() else target.parent / (
        target.name + "_export")
    return Source(target, manifest, Path(out or default_out), root, split, "external", seed)


def load_reference(source: Source):
    """Loads the source model as a callable ``images -> probabilities`` plus the Keras model.

    Returns:
        (predict, keras_model_or_None, saved_model_loader_or_None)
    """
    import keras
    import tensorflow as tf

    if source.path.is_dir():
        loaded = tf.saved_model.load(str(source.path))
        fn = loaded.signatures.get("serving_default")
        if fn is None:
            raise EdgekitError(f"SavedModel has no serving_default signature: {source.path}")

        def predict(x: np.ndarray) -> np.ndarray:
            outs = [list(fn(tf.constant(x[i:i + 1], tf.float32)).values())[0].numpy()
                    for i in range(len(x))]
            return np.concatenate(outs) if outs else np.zeros((0, len(source.manifest.labels)))

        return predict, None, loaded
    try:
        model = keras.models.load_model(source.path, safe_mode=True, compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise EdgekitError(f"cannot load Keras model {source.path}: {type(e).__name__}: "
                           f"{first}") from None

    def predict_keras(x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, len(source.manifest.labels)), np.float32)
        return model.predict(x.astype(np.float32), batch_size=32, verbose=0)

    return predict_keras, model, None
