"""Training features: run folders never overwritten, settings, augmentation, the file
pipeline, interrupt + --resume keeping the best score, and --tune (tiny, 32 px models)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import EdgekitError
from tests.conftest import error_lines, run_cli
from train.augment import Augment, parse_brightness
from train.config import TrainConfig
from train.core import prepare_out


def test_an_existing_run_is_never_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    out, created = prepare_out(run, force=False, resume=False)
    assert out == tmp_path / "run-2" and created and (run / "manifest.json").is_file()
    assert "writing a new run to" in capsys.readouterr().err
    out.joinpath("x").write_text("1")
    assert prepare_out(run, force=False, resume=False)[0] == tmp_path / "run-3"
    assert prepare_out(run, force=True, resume=False)[0] == run
    assert not (run / "manifest.json").exists()  # --force replaced it
    assert prepare_out(run, force=False, resume=True) == (run, False)


def test_force_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "me.jpg").write_bytes(b"precious")
    with pytest.raises(EdgekitError, match="not a run folder"):
        prepare_out(tmp_path / "photos", force=True, resume=False)
    assert (tmp_path / "photos" / "me.jpg").read_bytes() == b"precious"


def test_resume_without_checkpoints_is_one_clear_error(tmp_path):
    (tmp_path / "run").mkdir()
    r = run_cli("train", "--out", str(tmp_path / "run"), "--resume")
    lines = error_lines(r.stderr)
    assert r.returncode == 1 and len(lines) == 1 and "nothing to resume" in lines[0], r.stderr


def test_settings_validate_and_round_trip(tmp_path):
    cfg = TrainConfig(data="d", out="o", alpha=0.5, img_size=100, label_smoothing=0.1,
                      augment=Augment(rotation=10, brightness=(0.8, 1.2)))
    assert any("no ImageNet weights exist for 100 px" in w for w in cfg.warnings())
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    for bad in ({"alpha": 0.6}, {"lr_schedule": "step"}, {"cache": "ram"},
                {"label_smoothing": 1.0}, {"learning_rate": 0}):
        with pytest.raises(EdgekitError):
            TrainConfig(data="d", out="o", **bad)
    with pytest.raises(EdgekitError, match="brightness"):
        Augment(brightness=(1.5, 0.4))
    with pytest.raises(EdgekitError, match="flip"):
        Augment(flip="sideways")
    assert parse_brightness("0.4,1.5") == (0.4, 1.5) and parse_brightness("1") == (1.0, 1.0)
    d = json.loads((tmp_path / "c.json").read_text())
    d["epochz"] = 3
    (tmp_path / "c.json").write_text(json.dumps(d))
    with pytest.raises(EdgekitError, match="epochz"):
        TrainConfig.load(tmp_path / "c.json")


def test_classic_augmentation_defaults_and_training_only():
    from train.augment import build_augmenter

    aug = build_augmenter(Augment(), seed=0)
    names = [type(layer).__name__ for layer in aug.layers]
    assert names == ["RandomFlip", "RandomRotation", "RandomTranslation", "RandomShear",
                     "RandomZoom", "RandomBrightnessScale"]
    x = np.full((2, 32, 32, 3), 100.0, np.float32)
    assert np.array_equal(np.asarray(aug(x, training=False)), x)  # inference: untouched
    y = np.asarray(aug(x, training=True))
    assert not np.array_equal(y, x) and y.min() >= 0 and y.max() <= 255
    assert build_augmenter(Augment(rotation=0, shift=0, shear=0, zoom=0, flip="none",
                                   brightness=(1, 1)), seed=0) is None


def test_file_pipeline_matches_runtime_preprocessing_and_drops_a_broken_file(sample, tmp_path):
    from edge_runtime.preprocess import load_for_model
    from train.pipeline import file_dataset

    root = tmp_path / "data"
    shutil.copytree(sample / "images" / "circle", root / "circle")
    files = sorted(p.name for p in (root / "circle").iterdir())[:6]
    items = [(f"circle/{f}", 0) for f in files]
    (root / "circle" / files[2]).write_bytes(b"\xff\xd8 broken after the pre-scan")
    good = [f for i, f in enumerate(files) if i != 2]
    got = {}
    for interp in ("linear", "area"):
        ds = file_dataset(root, items, (48, 48), "center_crop", 4, 0, train=False,
                          cache="none", interpolation=interp)
        xs = np.concatenate([x.numpy() for x, _ in ds])
        assert xs.shape == (5, 48, 48, 3)  # the broken file is dropped, not fatal
        expect = np.stack([load_for_model(root / "circle" / f, (48, 48), "center_crop", interp)
                           for f in good]).astype(np.float32)
        assert np.array_equal(xs, expect)
        got[interp] = xs
    assert not np.array_equal(got["linear"], got["area"])  # the setting reaches the files


TINY = dict(weights="none", alpha=0.35, img_size=32, batch_size=16, patience=50,
            learning_rate=3e-3, label_smoothing=0.1, l2=1e-4, lr_schedule="plateau")


def _small_data(sample: Path, tmp_path: Path, per_class: int = 16) -> Path:
    data = tmp_path / "data"
    for c in sorted(p.name for p in (sample / "images").iterdir()):
        (data / c).mkdir(parents=True)
        for f in sorted((sample / "images" / c).iterdir())[:per_class]:
            shutil.copy(f, data / c / f.name)
    return data


@pytest.mark.slow  # two trainings of its own (interrupted, resumed): make test-slow
def test_interrupted_run_resumes_and_keeps_the_best_checkpoint(sample, tmp_path, monkeypatch):
    import train.checkpoint as ckpt
    from train.core import fine_tune

    data, out = _small_data(sample, tmp_path), tmp_path / "run"
    cfg = TrainConfig(data=str(data), out=str(out), epochs=4, **TINY)
    real = ckpt.callback

    def interrupting(out_, state):
        cb = real(out_, state)
        inner = cb.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            inner(epoch, logs)
            if state.epoch == 2:
                raise KeyboardInterrupt  # Ctrl-C right after epoch 2 was saved
        cb.on_epoch_end = on_epoch_end
        return cb

    monkeypatch.setattr(ckpt, "callback", interrupting)
    with pytest.raises(KeyboardInterrupt):
        fine_tune(cfg)
    monkeypatch.setattr(ckpt, "callback", real)
    state = ckpt.load_state(out)
    assert (state.phase, state.epoch, state.phase_done) == ("head", 2, False)
    assert not (out / "model.keras").exists()
    # Pretend epoch 2 scored higher than any later epoch can: the resumed run must keep
    # that best checkpoint rather than overwrite it with a worse one.
    best = out / "checkpoints" / "best.keras"
    best_bytes = best.read_bytes()
    state.best = 2.0  # above any reachable val_score (at most 1 + 1/(n_val + 1))
    ckpt.save_state(out, state)
    assert fine_tune(TrainConfig(data="ignored", out=str(out)), resume=True) == out
    state = ckpt.load_state(out)
    assert (state.epoch, state.phase_done, state.best) == (4, True, 2.0)
    assert best.read_bytes() == best_bytes
    assert len(state.history["loss"]) == 4
    assert len((out / "history.csv").read_text().splitlines()) == 1 + 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["resumed"] is True
    assert manifest["training"]["label_smoothing"] == 0.1  # the run's settings, not the CLI's


@pytest.mark.slow  # three trainings of its own (two trials, the winner): make test-slow
def test_tune_searches_then_trains_the_best(sample, tmp_path):
    pytest.importorskip("keras_tuner")
    from train.tune import tune_then_train

    data, out = _small_data(sample, tmp_path, per_class=12), tmp_path / "tuned"
    cfg = TrainConfig(data=str(data), out=str(out), epochs=1, **TINY)
    assert tune_then_train(cfg, max_trials=2, tune_epochs=1) == out
    found = json.loads((out / "tuning" / "best_hyperparameters.json").read_text())
    assert len(found["trials"]) == 2
    best = found["best"]
    assert set(best) == {"learning_rate", "dropout", "alpha"}  # no fine-tuning from scratch
    training = json.loads((out / "manifest.json").read_text())["training"]
    assert training["alpha"] == best["alpha"] and training["dropout"] == best["dropout"]
    assert training["learning_rate"] == pytest.approx(best["learning_rate"])
    assert (out / "model.keras").is_file() and (out / "metrics.json").is_file()


def test_training_context_leaves_no_process_wide_setting_behind(monkeypatch):
    import warnings

    import keras
    from tensorflow.python.framework import config as tf_config

    from train import core

    monkeypatch.setattr(core.shutil, "which", lambda name: None)  # no GPU hint here
    filters, policy = list(warnings.filters), keras.mixed_precision.global_policy().name
    deterministic = tf_config.is_op_determinism_enabled()
    with core.training_context(TrainConfig(data="d", out="o")):
        assert tf_config.is_op_determinism_enabled()
        assert any("shuffle=True" in str(f[1]) for f in warnings.filters)
    assert list(warnings.filters) == filters
    assert keras.mixed_precision.global_policy().name == policy
    assert tf_config.is_op_determinism_enabled() == deterministic


def test_gpu_hint_only_when_an_nvidia_gpu_seems_present(monkeypatch, capsys):
    from train import core

    devices = {"/dev/nvidia0": False}  # core's view of the paths it asks about

    class FakePath:  # replaces core's Path only, never pathlib.Path for the whole process
        def __init__(self, path):
            self.path = str(path)

        def exists(self):
            return devices[self.path]

    monkeypatch.setattr(core, "Path", FakePath)
    monkeypatch.setattr(core.shutil, "which", lambda name: None)
    assert core.gpu_hint() is None and capsys.readouterr().err == ""
    monkeypatch.setattr(core.shutil, "which",
                        lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    line = core.gpu_hint()
    assert "pip install -e '.[gpu]'" in line
    assert capsys.readouterr().err == line + "\n"
    monkeypatch.setattr(core.shutil, "which", lambda name: None)
    devices["/dev/nvidia0"] = True  # a device node without nvidia-smi (a container)
    assert core.gpu_hint() == line


def test_quiet_filter_drops_only_tensorflow_noise(tmp_path):
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from edge_runtime.quiet import quiet_tensorflow\n"
        "with quiet_tensorflow(verbose=len(sys.argv) > 1):\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called"
        " are written to STDERR\\n')\n"
        "    os.write(2, b'I0000 00:00:1796001786.690917    2302 port.cc:153] oneDNN custom"
        " operations are on.\\n')\n"
        "    os.write(2, b'E0000 00:00:1796001800.216172    2302 node_def_util.cc:682] NodeDef"
        " mentions attribute use_unbounded_threadpool which is not in the op definition\\n')\n"
        "    os.write(2, b'E0000 00:00:1796001800.216172    2302 other.cc:1] a real error\\n')\n"
        "    print('error: kept', file=sys.stderr)\n"
        "print('after', file=sys.stderr)\n")
    root = Path(__file__).resolve().parents[1]
    quiet = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                           text=True, timeout=60)
    assert quiet.stderr.splitlines() == [
        "E0000 00:00:1796001800.216172    2302 other.cc:1] a real error", "error: kept",
        "after"]
    loud = subprocess.run([sys.executable, "-c", code, "-v"], cwd=root, capture_output=True,
                          text=True, timeout=60)
    assert len(loud.stderr.splitlines()) == 6


def test_a_flat_folder_of_images_asks_for_one_subfolder_per_class(tmp_path):
    import cv2

    from train.prepare import prepare

    data = tmp_path / "flat"
    data.mkdir()
    for i in range(3):
        cv2.imwrite(str(data / f"{i}.jpg"), np.zeros((20, 20, 3), np.uint8))
    (tmp_path / "run").mkdir()
    with pytest.raises(EdgekitError, match=r"expected one subfolder per class \(at least 2, "
                       r"e\.g\. .*/flat/cat/, .*/flat/dog/\) in .*flat, found 0; its 3 loose "
                       r"images need sorting into them"):
        prepare(data, tmp_path / "run", 5, 0.15, 0.15, seed=0)


def test_the_sample_folder_given_for_its_images_folder_gets_the_right_path(tmp_path):
    import cv2

    from train.prepare import prepare

    data = tmp_path / "sample"  # as train.sample_data writes it: images/<class>/, video.avi
    for c in ("circle", "square"):
        (data / "images" / c).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(data / "images" / c / f"{i}.jpg"), np.zeros((20, 20, 3), np.uint8))
    (data / "video.avi").write_bytes(b"")
    (tmp_path / "run").mkdir()
    with pytest.raises(EdgekitError, match=r"found 1 \(images\); did you mean --data "
                       + str(data / "images").replace(".", r"\.") + r"\?$"):
        prepare(data, tmp_path / "run", 2, 0.15, 0.15, seed=0)


def test_gpu_extra_is_the_train_extra_with_cuda_tensorflow():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml")
                           .read_text())["project"]["optional-dependencies"]
    train, gpu = set(extras["train"]), set(extras["gpu"])
    assert train - gpu == {"tensorflow-cpu>=2.18,<2.22; sys_platform == 'linux' and "
                           "platform_machine == 'x86_64'"}
    assert gpu - train == {"tensorflow[and-cuda]>=2.18,<2.22; sys_platform == 'linux' and "
                           "platform_machine == 'x86_64'"}
