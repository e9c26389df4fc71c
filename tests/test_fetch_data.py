"""make test-data: downloads verified against pinned sha256, offline (file:// URLs)."""

from __future__ import annotations

import hashlib

import pytest

from tests import fetch_data
from tests.fetch_data import FetchError, fetch, main


def _source(tmp_path, files: dict[str, bytes]):
    src = tmp_path / "upstream"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    pins = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    return src.as_uri() + "/", pins


def test_fetch_verifies_and_keeps_good_files(tmp_path):
    url, pins = _source(tmp_path, {"a.tflite": b"model bytes", "b.txt": b"labels\n"})
    dest = tmp_path / "data" / "coral"
    paths = fetch(dest, url, pins)
    assert [p.name for p in paths] == ["a.tflite", "b.txt"]
    assert (dest / "a.tflite").read_bytes() == b"model bytes"
    # Present and right: no second download (the upstream copy is gone).
    (tmp_path / "upstream" / "a.tflite").unlink()
    assert fetch(dest, url, pins) == paths
    assert sorted(p.name for p in dest.iterdir()) == ["a.tflite", "b.txt"]  # no temp files


def test_a_changed_file_is_refused_and_not_kept(tmp_path):
    url, pins = _source(tmp_path, {"a.tflite": b"model bytes"})
    (tmp_path / "upstream" / "a.tflite").write_bytes(b"tampered")
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=r"a\.tflite: sha256 [0-9a-f]{64}, expected "
                       + pins["a.tflite"]):
        fetch(dest, url, pins)
    assert list(dest.iterdir()) == []


def test_a_corrupt_local_copy_is_fetched_again(tmp_path):
    url, pins = _source(tmp_path, {"a.tflite": b"model bytes"})
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.tflite").write_bytes(b"model by")  # an interrupted earlier copy
    fetch(dest, url, pins)
    assert (dest / "a.tflite").read_bytes() == b"model bytes"


def test_download_failure_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fetch_data, "FILES", {"missing.tflite": "0" * 64})
    dest = tmp_path / "dest"
    assert main(["--dest", str(dest), "--base-url", (tmp_path / "nowhere").as_uri()]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not download file://")
    assert "missing.tflite" in err[0]
    assert list(dest.iterdir()) == []


def test_pins_match_the_reference_copy(coral):
    # The pinned hashes are those of the files the reference tests were written against.
    for name, want in fetch_data.FILES.items():
        assert fetch_data.sha256(coral / name) == want, name
