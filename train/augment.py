"""Training-time augmentation as Keras preprocessing layers (never part of the exported model).

Defaults follow the classic ``ImageDataGenerator`` recipe practitioners know: rotation
±40°, shift 0.2, shear 0.2, zoom 0.2, horizontal flip, brightness ×0.4–1.5. Each one is
configurable (``0`` turns it off) from ``python -m train``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edge_runtime.errors import EdgekitError

FLIPS = ("horizontal", "vertical", "horizontal_and_vertical", "none")


@dataclass(frozen=True)
class Augment:
    """Augmentation settings (recorded in the run's manifest).

    Attributes:
        rotation: maximum rotation in degrees (either way).
        shift: maximum translation as a fraction of width/height.
        shear: maximum shear intensity (Keras ``RandomShear`` factor).
        zoom: maximum zoom in or out as a fraction.
        flip: "horizontal", "vertical", "horizontal_and_vertical" or "none".
        brightness: (low, high) multiplicative brightness range; (1, 1) is off.
        contrast: maximum contrast change as a fraction.
        fill_mode: how pixels moved in from outside the image are filled.
    """

    rotation: float = 40.0
    shift: float = 0.2
    shear: float = 0.2
    zoom: float = 0.2
    flip: str = "horizontal"
    brightness: tuple[float, float] = (0.4, 1.5)
    contrast: float = 0.0
    fill_mode: str = "reflect"

    def __post_init__(self) -> None:
        if not 0 <= self.rotation <= 180:
            raise EdgekitError(f"rotation {self.rotation} degrees, expected 0..180")
        for name in ("shift", "shear", "zoom", "contrast"):
            if not 0 <= getattr(self, name) < 1:
                raise EdgekitError(f"{name} {getattr(self, name)}, expected 0 <= value < 1")
        if self.flip not in FLIPS:
            raise EdgekitError(f"flip {self.flip!r}, expected one of {', '.join(FLIPS)}")
        lo, hi = self.brightness
        if not 0 < lo <= hi:
            raise EdgekitError(f"brightness range {lo},{hi}: expected 0 < low <= high")
        if self.fill_mode not in ("reflect", "wrap", "nearest", "constant"):
            raise EdgekitError(f"fill_mode {self.fill_mode!r}, expected reflect, wrap, "
                               "nearest or constant")

    def to_dict(self) -> dict:
        """JSON form."""
        return asdict(self) | {"brightness": list(self.brightness)}


def parse_brightness(text: str) -> tuple[float, float]:
    """``"0.4,1.5"`` -> (0.4, 1.5); ``"1"`` -> (1.0, 1.0) (off)."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise EdgekitError(f"brightness {text!r}: expected LOW,HIGH such as 0.4,1.5") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise EdgekitError(f"brightness {text!r}: expected LOW,HIGH such as 0.4,1.5")
    return parts[0], parts[1]


def build_augmenter(aug: Augment, seed: int):
    """A ``keras.Sequential`` of the enabled layers, for 0-255 float batches."""
    import keras

    layers = []
    if aug.flip != "none":
        layers.append(keras.layers.RandomFlip(aug.flip, seed=seed))
    if aug.rotation:
        layers.append(keras.layers.RandomRotation(aug.rotation / 360.0, fill_mode=aug.fill_mode,
                                                  seed=seed + 1))
    if aug.shift:
        layers.append(keras.layers.RandomTranslation(aug.shift, aug.shift,
                                                     fill_mode=aug.fill_mode, seed=seed + 2))
    if aug.shear:
        layers.append(keras.layers.RandomShear(aug.shear, aug.shear, fill_mode=aug.fill_mode,
                                               seed=seed + 3))
    if aug.zoom:
        layers.append(keras.layers.RandomZoom(aug.zoom, fill_mode=aug.fill_mode, seed=seed + 4))
    if aug.contrast:
        layers.append(keras.layers.RandomContrast(aug.contrast, seed=seed + 5))
    if aug.brightness != (1.0, 1.0):
        layers.append(_brightness_layer(aug.brightness, seed + 6))
    return keras.Sequential(layers, name="augment") if layers else None


def _brightness_layer(span: tuple[float, float], seed: int):
    import keras

    class RandomBrightnessScale(keras.layers.Layer):
        """Multiplies each image by a factor drawn from ``span`` (the classic recipe's
        ``brightness_range``; Keras' own RandomBrightness adds instead)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, x, training=True):
            if not training:
                return x
            n = keras.ops.shape(x)[0]
            f = keras.random.uniform((n, 1, 1, 1), span[0], span[1], seed=self.seed_generator)
            return keras.ops.clip(x * f, 0.0, 255.0)

    return RandomBrightnessScale(name="brightness")
