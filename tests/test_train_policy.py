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
