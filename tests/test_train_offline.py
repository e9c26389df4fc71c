"""Training with ImageNet weights on an offline machine fails at once, with the reason and
the fix, before the data scan (it used to fail after it, saying only "(Exception)")."""

import socket
import urllib.error
import urllib.request

import pytest

from edge_runtime.errors import EdgekitError


def _offline(monkeypatch):
    asked = []

    def urlopen(request, timeout=None):
        asked.append((request.full_url, request.get_method(), timeout))
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


def test_offline_imagenet_weights_name_the_file_the_reason_and_the_fix(tmp_path, monkeypatch):
    from train.model import WEIGHTS_URL, check_imagenet_weights

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    asked = _offline(monkeypatch)
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    with pytest.raises(EdgekitError) as e:
        check_imagenet_weights(0.35, 96)
    assert str(e.value) == (f"cannot download the ImageNet weights {name} ([Errno -2] Name or "
                            "service not known); offline, pass --weights PATH to that no-top "
                            ".h5 file, or --weights none")
    assert asked == [(WEIGHTS_URL + name, "HEAD", 10.0)]


def test_cached_imagenet_weights_need_no_network(tmp_path, monkeypatch):
    from train.model import check_imagenet_weights

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    asked = _offline(monkeypatch)
    # 100 px has no weights of its own: Keras takes the 224 px file, the one looked for.
    cached = (tmp_path / "models" /
              "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
    cached.parent.mkdir()
    cached.write_bytes(b"h5")
    check_imagenet_weights(1.0, 100)
    assert asked == []


def test_train_cli_refuses_before_scanning_the_data(tmp_path, monkeypatch, capsys):
    import train.core
    from train.__main__ import main

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    _offline(monkeypatch)
    scanned = []
    monkeypatch.setattr(train.core, "train_into", lambda *a: scanned.append(a))
    (tmp_path / "data").mkdir()
    rc = main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
               "--alpha", "0.35", "--img-size", "96"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and scanned == [] and not (tmp_path / "run").exists()
    assert err[-1].startswith("error: cannot download the ImageNet weights ") \
        and "Name or service not known" in err[-1] and len(err) == 1, err
