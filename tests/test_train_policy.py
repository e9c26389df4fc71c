"""--augment: the CLI's policies and overrides, the presets, the underfitting note."""

from __future__ import annotations

import pytest

from train.__main__ import build_parser, config_from_args
from train.policy import diagnose, pilot_epochs, preset


def _cfg(*flags):
    return config_from_args(build_parser().parse_args(["--data", "d", "--out", "o", *flags]))


def test_auto_is_the_default_and_each_flag_still_overrides():
    auto = _cfg()
    assert auto.augment_policy == "auto"
    light = _cfg("--augment", "light")
    assert (light.augment_policy, light.augment) == ("light", preset("light"))
    assert light.augment.flip == "none"  # flips only when asked: wrong for text, digits
    assert _cfg("--augment", "none").augment is None
    assert _cfg("--no-augment", "--rotation", "10").augment is None
    custom = _cfg("--augment", "classic", "--flip", "horizontal", "--rotation", "10")
    assert custom.augment_policy == "custom"
    assert (custom.augment.flip, custom.augment.rotation, custom.augment.zoom) == \
        ("horizontal", 10, 0.2)
    # A single flag under auto starts from the classic values its --help documents.
    assert _cfg("--zoom", "0.05").augment == preset("classic").__class__(
        rotation=40, shift=0.2, shear=0.2, zoom=0.05, flip="none", brightness=(0.4, 1.5))


def test_pilot_is_short():
    assert [pilot_epochs(e) for e in (1, 2, 10, 15, 60)] == [1, 2, 2, 2, 5]
    # Tiny datasets (2 steps an epoch) still get enough steps to tell candidates apart.
    assert [pilot_epochs(e, 2) for e in (10, 60)] == [10, 15]


def test_underfitting_under_augmentation_is_named_with_its_fix():
    hist = {"accuracy": [0.3, 0.4, 0.45, 0.47], "val_accuracy": [0.4, 0.5, 0.58, 0.6]}
    note = diagnose(hist, augmented=True, patience=5)
    assert note and "0.47" in note and "0.60" in note and "--augment light or none" in note
    assert diagnose(hist, augmented=False, patience=5) is None
    stalled = {"accuracy": [0.3, 0.5, 0.55, 0.56, 0.57, 0.57, 0.58],
               "val_accuracy": [0.4, 0.62, 0.6, 0.61, 0.6, 0.6, 0.61]}
    note = diagnose(stalled, augmented=False, patience=3)
    assert note and "stopped improving at epoch 2" in note and "underfits" in note
    fitted = {"accuracy": [0.6, 0.9, 0.99], "val_accuracy": [0.7, 0.95, 0.97]}
    assert diagnose(fitted, augmented=True, patience=5) is None


def test_bad_policy_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--data", "d", "--out", "o", "--augment", "heavy"])
    assert e.value.code == 2 and "invalid choice: 'heavy'" in capsys.readouterr().err


def _tiny_model(cfg, num_classes, weights, steps_per_epoch=1):
    """A stand-in for MobileNetV2 with the same head layer names (seconds, not minutes)."""
    import keras

    inp = keras.Input((cfg.img_size, cfg.img_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, model


@pytest.mark.slow  # trains five small models
def test_auto_pilot_is_scored_on_validation_recorded_and_run(sample, tmp_path, monkeypatch):
    import json

    import train.core
    import train.model
    from train.config import TrainConfig

    monkeypatch.setattr(train.model, "build_and_compile", _tiny_model)
    cfg = TrainConfig(data=str(sample / "images"), out=str(tmp_path / "run"), weights="none",
                      img_size=32, epochs=2, batch_size=32, augment_policy="auto", seed=0)
    out = train.core.fine_tune(cfg)
    pilot = json.loads((out / "augment_pilot.json").read_text())
    assert pilot["scored_on"] == "validation split" and pilot["epochs_per_candidate"] == 2
    names = [c["policy"] for c in pilot["candidates"]]
    assert names[:3] == ["none", "light", "classic"]
    best = [max(c["val_accuracy"]) for c in pilot["candidates"]]
    first_best = names[best[:3].index(max(best[:3]))]  # ties go to the lighter policy
    assert len(names) == 3 if first_best == "none" else names[3] == first_best + "+flip"
    assert pilot["winner"] == (names[3] if len(names) == 4 and best[3] > max(best[:3])
                               else first_best)
    won = next(c for c in pilot["candidates"] if c["policy"] == pilot["winner"])
    recorded = json.loads((out / "train_config.json").read_text())
    assert recorded["augment_policy"] == "auto" and recorded["augment"] == won["augment"]
    assert (out / "augment_preview.png").stat().st_size > 1000
    split = json.loads((out / "checkpoints" / "data.json").read_text())["split"]
    assert len(pilot["candidates"][0]["val_accuracy"]) == 1  # from scratch: scored once
    assert split["test"]  # held out, and never passed to the pilot (only data.x_va is)
