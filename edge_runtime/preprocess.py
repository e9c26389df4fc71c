"""Image preprocessing, the one implementation shared by training, conversion and runtime.

Training, calibration, evaluation and the camera loop all turn an image into model input
with these functions, so a model sees the same pixels in the field as in training:
decode with OpenCV, convert BGR to RGB once, then resize (stretch or centre crop).
:func:`fit_frame` is the same transform for camera frames, reordered to be cheap (crop,
resize, then swap channels on the small image) and bit-identical to
``fit(bgr_to_rgb(frame))``.

Shrinking uses one of :data:`INTERPOLATIONS`, recorded in the model's manifest:

* ``"linear"`` (the default for new models): bilinear (OpenCV's ``INTER_LINEAR_EXACT``,
  bit-identical on x86 and ARM, unlike ``INTER_LINEAR``), as TensorFlow's and
  Keras's image resizing do by default. Where the image is more than 4x the input in a
  direction, an exact integer box reduction (OpenCV's ``INTER_AREA`` fast path) first
  leaves at most 4x to interpolate, the two-step idea of Pillow's ``reducing_gap``, so a
  photo or a 1080p frame does not alias badly. About 6x faster than ``"area"`` on a
  640x480 frame (1.2 ms against 7.2 ms, side by side on this project's 2-core x86 machine
  under load; plain ``INTER_LINEAR`` 0.5 ms), which matters when the resize runs once per
  camera frame beside ``invoke()``.
* ``"area"``: OpenCV's ``INTER_AREA``, the exact box filter. Models whose manifest
  predates the choice were trained with it, and it is the assumption for a model with no
  manifest: it reproduces pycoral's published scores for Coral's models.

Enlarging always uses ``INTER_LINEAR_EXACT``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .imageio import ImageError as ImageError  # re-exported: callers catch it from here
from .imageio import read_image

INTERPOLATIONS = ("linear", "area")
DEFAULT_INTERPOLATION = "linear"  # for new models; see the module docstring
# A box reduction first when the image is more than this many times the input.
MAX_LINEAR_FACTOR = 4

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})


def load_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Reads an image file as an RGB ``uint8`` array of shape (H, W, 3).

    The size is read from the header first: an image above ``max_pixels`` (default
    :func:`edge_runtime.imageio.max_pixels`, 50 Mpx) is refused before it is decoded.
    Grayscale, 16-bit and alpha images are converted (to 3-channel 8-bit RGB).

    Raises:
        ImageError: missing, empty, unsupported, corrupt or oversized file.
    """
    return read_image(path, max_pixels)


def bgr_to_rgb(frame: np.ndarray) -> np.ndarray:
    """Converts an OpenCV BGR frame to RGB (the only place the runtime swaps channels)."""
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def center_crop(img: np.ndarray, aspect: float) -> np.ndarray:
    """Returns the largest centred view of ``img`` with width/height == ``aspect``."""
    h, w = img.shape[:2]
    if w / h > aspect:
        new_w = max(1, round(h * aspect))
        x0 = (w - new_w) // 2
        return img[:, x0:x0 + new_w]
    new_h = max(1, round(w / aspect))
    y0 = (h - new_h) // 2
    return img[y0:y0 + new_h]


def fit(img: np.ndarray, size: tuple[int, int], resize: str = "stretch",
        out: np.ndarray | None = None, interpolation: str = DEFAULT_INTERPOLATION
        ) -> np.ndarray:
    """Resizes an RGB image to ``size`` = (height, width) as the manifest says.

    Args:
        img: (H, W, 3) uint8 image.
        size: target (height, width).
        resize: "stretch" or "center_crop".
        out: optional (height, width, 3) uint8 array to write into (no extra copy).
        interpolation: one of :data:`INTERPOLATIONS` (used when shrinking).

    Returns:
        The resized image (``out`` when given).
    """
    h, w = size
    img = _crop(img, size, resize)
    if img.shape[0] == h and img.shape[1] == w:
        if out is None:
            return np.ascontiguousarray(img)
        out[...] = img
        return out
    return _resize(img, size, interpolation, out)


def _crop(img: np.ndarray, size: tuple[int, int], resize: str) -> np.ndarray:
    """The part of ``img`` that is resized to ``size``: all of it, or a centred view."""
    if resize == "center_crop":
        return center_crop(img, size[1] / size[0])
    if resize != "stretch":
        raise ValueError(f"resize {resize!r}, expected 'stretch' or 'center_crop'")
    return img


def _resize(img: np.ndarray, size: tuple[int, int], interpolation: str,
            out: np.ndarray | None) -> np.ndarray:
    """Resizes ``img`` to ``size`` (into ``out`` when given) with ``interpolation``.

    Works per channel, so the channel order of ``img`` does not change the result.
    """
    h, w = size
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r}, expected one of "
                         f"{', '.join(INTERPOLATIONS)}")
    # INTER_LINEAR_EXACT, not INTER_LINEAR: OpenCV's INTER_LINEAR rounds differently with
    # NEON than with SSE/AVX (about 1 value in 5 is 1 apart on aarch64, measured under
    # `make test-arm64`), so a Pi would feed the model other pixels than the desktop that
    # trained it, and the self-test's input digest could never match there.
    if img.shape[0] * img.shape[1] <= h * w:
        mode = cv2.INTER_LINEAR_EXACT  # enlarging (or same area): no aliasing to avoid
    elif interpolation == "area":
        mode = cv2.INTER_AREA
    else:
        mode = cv2.INTER_LINEAR_EXACT
        img = _box_reduce(img, size)  # leaves at least 2x: never the size itself
    if out is None:
        return cv2.resize(img, (w, h), interpolation=mode)
    cv2.resize(img, (w, h), dst=out, interpolation=mode)
    return out


def _box_reduce(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Averages whole ``ky`` x ``kx`` blocks so that at most :data:`MAX_LINEAR_FACTOR`
    is left between the image and ``size`` in each direction (factors of 1 where less
    is left already). The rows/columns left over (fewer than the factor) are trimmed
    evenly from both edges. Returns ``img`` when no reduction is needed."""
    h, w = size
    ih, iw = img.shape[:2]
    ky = max(1, int(ih / h / (MAX_LINEAR_FACTOR / 2))) if ih > MAX_LINEAR_FACTOR * h else 1
    kx = max(1, int(iw / w / (MAX_LINEAR_FACTOR / 2))) if iw > MAX_LINEAR_FACTOR * w else 1
    if ky == 1 and kx == 1:
        return img
    th, tw = ih - ih % ky, iw - iw % kx
    y0, x0 = (ih - th) // 2, (iw - tw) // 2
    img = img[y0:y0 + th, x0:x0 + tw]
    # Whole factors take OpenCV's INTER_AREA fast path: an exact block mean.
    return cv2.resize(img, (tw // kx, th // ky), interpolation=cv2.INTER_AREA)


def fit_frame(frame: np.ndarray, size: tuple[int, int], resize: str = "stretch",
              out: np.ndarray | None = None, work: np.ndarray | None = None,
              rgb: bool = True, interpolation: str = DEFAULT_INTERPOLATION) -> np.ndarray:
    """A camera frame (BGR, BGRA or grey) as model input: ``fit(bgr_to_rgb(frame))``.

    Same pixels, less work: the crop is a view, the resize runs on the BGR frame (into
    ``work`` when given), and the channel swap runs on the small result, written into
    ``out``. Both reorderings are exact: resizing treats channels independently, so
    swapping them before or after gives identical bytes (the tests check this).

    Args:
        frame: (H, W, 3) BGR, (H, W, 4) BGRA, or (H, W) / (H, W, 1) grey uint8 frame.
        size: target (height, width).
        resize: "stretch" or "center_crop".
        out: optional (height, width, 3) uint8 array for the result (e.g. the input tensor).
        work: optional (height, width, 3) uint8 scratch array for the BGR resize.
        rgb: False keeps BGR (for a model whose manifest says BGR).
        interpolation: one of :data:`INTERPOLATIONS` (used when shrinking).

    Returns:
        The (height, width, 3) image (``out`` when given).
    """
    h, w = size
    if out is None:
        out = np.empty((h, w, 3), np.uint8)
    elif out.shape != (h, w, 3) or out.dtype != np.uint8:
        # OpenCV would silently write a new array instead of this one.
        raise ValueError(f"out is {out.dtype} {list(out.shape)}, expected uint8 [{h}, {w}, 3]")
    if frame.ndim == 2 or frame.shape[2] == 1:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    frame = _crop(frame, size, resize)
    if frame.shape[0] == h and frame.shape[1] == w:
        small = frame
    else:
        if work is None:
            work = np.empty((h, w, 3), np.uint8)
        small = _resize(frame, size, interpolation, work)
    if rgb:
        cv2.cvtColor(small, cv2.COLOR_BGR2RGB, dst=out)
    else:
        out[...] = small
    return out


def load_for_model(path: str | Path, size: tuple[int, int], resize: str = "stretch",
                   interpolation: str = DEFAULT_INTERPOLATION,
                   max_pixels: int | None = None) -> np.ndarray:
    """Reads an image file and resizes it for a model: :func:`load_image` + :func:`fit`."""
    return fit(load_image(path, max_pixels), size, resize, interpolation=interpolation)


def list_images(folder: str | Path) -> list[Path]:
    """Lists image files (by suffix) directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
