"""tf.data input pipelines: decode and resize from files (the runtime's own preprocessing),
cache, shuffle, batch, augment, prefetch.

Images are decoded by ``edge_runtime.preprocess.load_for_model`` inside the pipeline, so
training sees exactly the pixels the device will, and the dataset never has to fit in
memory before training starts. ``cache`` keeps decoded images after the first epoch: in
memory (default), in a file (large datasets), or not at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.preprocess import DEFAULT_INTERPOLATION, ImageError, load_for_model

CACHE_CHOICES = ("memory", "disk", "none")


def _decoder(root: Path, size: tuple[int, int], resize: str, interpolation: str):
    def decode(rel: bytes) -> np.ndarray:
        try:
            return load_for_model(root / rel.decode(), size, resize, interpolation)
        except ImageError:
            # The pre-scan rejected unreadable files already; a file that broke since
            # then is dropped by ignore_errors() below instead of ending the epoch.
            raise ValueError(f"undecodable image: {rel.decode()}") from None
    return decode


def file_dataset(root: str | Path, items: list[tuple[str, int]], size: tuple[int, int],
                 resize: str, batch: int, seed: int, *, train: bool, augmenter=None,
                 cache: str = "memory", cache_dir: str | Path | None = None,
                 name: str = "train", repeat: bool = False,
                 interpolation: str = DEFAULT_INTERPOLATION):
    """Batches of (float32 0-255 RGB images, class indices) decoded from ``items``.

    Args:
        root: data root; ``items`` are (path relative to root, class index).
        size: (height, width) model input.
        resize: "center_crop" or "stretch" (the manifest's setting).
        batch: batch size.
        seed: shuffling seed (training only; reshuffled every epoch).
        train: shuffle and augment.
        augmenter: a Keras layer applied to training batches, or None.
        cache: "memory", "disk" (a cache file under ``cache_dir``) or "none".
        cache_dir: folder for the disk cache.
        name: cache file name stem.
        repeat: repeat forever (before batching, so every batch is full).
        interpolation: how images are shrunk (the manifest's setting).
    """
    import tensorflow as tf

    h, w = size
    decode = _decoder(Path(root), size, resize, interpolation)
    paths = [p for p, _ in items]
    labels = np.asarray([c for _, c in items], np.int64)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))

    def load(path, label):
        img = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
        img.set_shape((h, w, 3))
        return img, label

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    if cache == "memory":
        ds = ds.cache()
    elif cache == "disk":
        folder = Path(cache_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        ds = ds.cache(str(folder / f"{name}-{h}x{w}-{resize}-{interpolation}"))
    return _finish(ds, len(items), batch, seed, train, augmenter, repeat)


def memory_dataset(x: np.ndarray, y: np.ndarray, batch: int, seed: int, *, train: bool,
                   augmenter=None, repeat: bool = False):
    """The same batches from images already decoded into memory (uint8 [N, H, W, 3])."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return _finish(ds, len(x), batch, seed, train, augmenter, repeat)


def _finish(ds, n: int, batch: int, seed: int, train: bool, augmenter, repeat: bool = False):
    import tensorflow as tf

    if train:
        ds = ds.shuffle(max(1, n), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch).map(lambda a, b: (tf.cast(a, tf.float32), b),
                             num_parallel_calls=tf.data.AUTOTUNE)
    if train and augmenter is not None:
        ds = ds.map(lambda a, b: (tf.clip_by_value(augmenter(a, training=True), 0.0, 255.0), b),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)

