"""A model checks its own data (the tensor digest in its metadata), and selftest names a file
that is not a model instead of skipping it."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import cv2
import pytest

from edge_runtime import integrity as ig
from edge_runtime import selftest as st
from edge_runtime.classify import Classifier
from edge_runtime.cli import main as runtime_main
from edge_runtime.metadata import embed_entry, read_entry
from tests.conftest import CORAL

MODEL = "mobilenet_v2_1.0_224_quant.tflite"
PHOTOS = ("cat.bmp", "parrot.jpg", "grace_hopper.bmp", "hot_dog.jpg")


def xor_middle(path: Path, size: int = 4096) -> None:
    """The issue's damage: ``size`` bytes XOR-ed in the middle of the file."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + size] = bytes(b ^ 0xFF for b in data[mid:mid + size])
    path.write_bytes(bytes(data))


def selftest(capsys, *args) -> tuple[int, str, list[str]]:
    """``python -m edge_runtime selftest ARGS`` in this process: (exit, stdout, stderr lines)."""
    capsys.readouterr()
    code = runtime_main(["selftest", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


@pytest.fixture(scope="module")
def with_digest(tmp_path_factory):
    """Coral's MobileNetV2 with golden cases and a digest; its labels."""
    coral = CORAL
    if not (coral / MODEL).is_file():
        pytest.skip("Coral reference data not found (run `make test-data`)")
    clf = Classifier(coral / MODEL, labels=coral / "imagenet_labels.txt")
    cases = st.make_cases(clf, [(p, cv2.imread(str(coral / p))) for p in PHOTOS])
    model = tmp_path_factory.mktemp("digest") / "model.tflite"
    model.write_bytes(ig.embed_digest(st.embed_cases((coral / MODEL).read_bytes(), cases)))
    return model, coral / "imagenet_labels.txt"


@pytest.mark.parametrize("data, what", [
    (b"", "empty (0 bytes)"), (b"hello model\nsecond line\n", "a text file"),
    (b"\xff\xd8\xff\xe0" + bytes(100), "a JPEG image"), (b"\x89PNG\r\n\x1a\n" + bytes(9), "PNG"),
    (b"PK\x03\x04" + bytes(30), "a zip archive (a .keras model?)"),
    (b"\x89HDF\r\n\x1a\n" + bytes(30), "HDF5"), (bytes(4) + b"TFL3" + bytes(8), None),
    (bytes(range(256)) * 4, None)])
def test_describe_non_model(data, what):
    got = ig.describe_non_model(data)
    assert got == what if what is None or what.startswith("empty") else what in got


def test_selftest_names_a_file_that_is_not_a_model(coral, tmp_path, capsys):
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes((coral / MODEL).read_bytes()[:1_000_000])
    keras = tmp_path / "model.keras"
    with zipfile.ZipFile(keras, "w") as z:
        z.writestr("config.json", "{}")
    files = {"notes.txt": ("text file", b"model: none\n"), "empty.tflite": ("empty", b""),
             "photo.tflite": ("a JPEG image", (coral / "hot_dog.jpg").read_bytes()),
             truncated.name: ("damaged or truncated", None), keras.name: (".keras", None)}
    for name, (what, data) in files.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        code, out, err = selftest(capsys, "--model", tmp_path / name)
        assert code == 1, (name, out, err)
        assert len(err) == 1 and err[0].startswith("error: ") and what in err[0], (name, err)
        assert str(tmp_path / name) in err[0] and "skipped" not in out


def test_xor_damage_fails_on_the_digest_without_a_manifest(with_digest, tmp_path, capsys):
    model, labels = with_digest
    code, out, _ = selftest(capsys, "--model", model, "--labels", labels)
    assert code == 0 and "passed: 4/4 golden cases" in out and "data digest ok" in out, out
    copy = tmp_path / "model.tflite"
    copy.write_bytes(model.read_bytes())
    xor_middle(copy)
    assert not (tmp_path / "manifest.json").exists()
    code, out, err = selftest(capsys, "--model", copy, "--labels", labels)
    assert code == 1 and out.startswith("selftest FAILED: the model's data does not match")
    assert len(err) == 1 and re.fullmatch(
        rf"selftest: {re.escape(str(copy))}: the model's data does not match its digest "
        r"\([0-9a-f]{12}… vs [0-9a-f]{12}… recorded at conversion\): the file was damaged "
        r"or changed after conversion", err[0]), err


def test_digest_survives_later_entries_and_old_models_still_pass(with_digest, coral, tmp_path):
    model, labels = with_digest
    later = tmp_path / "later.tflite"  # convert adds the drift baseline after the digest
    later.write_bytes(embed_entry(model.read_bytes(), "edgekit_drift", b'{"x": 1}'))
    report = st.run_selftest(later, labels=labels)
    assert report.status == "pass" and report.digest == "ok", report.failure_lines()
    old = tmp_path / "old.tflite"  # made before digests: still passes, says so
    old.write_bytes(st.embed_cases((coral / MODEL).read_bytes(), st.read_cases(model)))
    report = st.run_selftest(old, labels=labels)
    assert report.status == "pass" and report.digest == "absent"
    assert "no digest (data not checked)" in report.summary()


def test_replacing_an_entry_leaves_no_orphan_bytes(coral):
    data = (coral / MODEL).read_bytes()
    once = embed_entry(data, "edgekit_x", bytes(50_000))
    twice = embed_entry(once, "edgekit_x", b"small")
    assert read_entry(twice, "edgekit_x") == b"small"
    assert len(twice) < len(once) - 45_000


def test_a_changed_scale_or_shape_is_caught(coral):
    data = (coral / MODEL).read_bytes()
    parsed = ig.identify_model(coral / MODEL)
    want = ig.tensor_digest(parsed, data)
    q = parsed.subgraphs[0].tensors[5].quantization
    q.scale = q.scale * 1.01  # the weights' bytes unchanged, their meaning not
    scaled = ig.tensor_digest(parsed, data)
    assert scaled != want
    parsed.subgraphs[0].tensors[5].shape = list(parsed.subgraphs[0].tensors[5].shape) + [1]
    assert ig.tensor_digest(parsed, data) not in (want, scaled)


def test_strict_fails_a_model_without_golden_cases(coral, capsys):
    code, out, _ = selftest(capsys, "--model", coral / MODEL)
    assert code == 0 and out.startswith("selftest skipped: the model has no golden cases")
    assert "no digest" in out
    code, out, err = selftest(capsys, "--model", coral / MODEL, "--strict", "--json")
    assert code == 1 and json.loads(out)["status"] == "fail"
    assert any("--strict asks for them" in line for line in err)


def test_exported_models_carry_a_digest_and_narrow_cases(exported):
    for path in sorted(exported.glob("*.tflite")):
        report = st.run_selftest(path)
        assert report.status == "pass" and report.digest == "ok", (path, report.summary())
        kinds = [c.get("kind") for c in st.read_cases(path)["cases"]]
        assert kinds.count("wide") >= 2 and "narrow" in kinds, (path, kinds)


def scale_conv_weights(data: bytes, factor: float, conv: int = 0) -> bytes:
    """A subtly damaged float model: the weights of its ``conv``-th convolution scaled."""
    import flatbuffers
    import numpy as np

    from edge_runtime.tflite import IDENTIFIER, op_name, schema

    model = schema().ModelT.InitFromPackedBuf(data, 0)
    g = model.subgraphs[0]
    op = [op for op in g.operators
          if op_name(model.operatorCodes[op.opcodeIndex]) == "CONV_2D"][conv]
    buf = model.buffers[g.tensors[op.inputs[1]].buffer]
    weights = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), np.float32) * factor
    buf.data = np.frombuffer(weights.astype(np.float32).tobytes(), np.uint8)
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=IDENTIFIER)
    return bytes(builder.Output())


def test_narrow_cases_catch_a_subtly_damaged_model(exported, tmp_path):
    """Scaled by 5 %, the first convolution moves no saturated (widest-margin) score: the
    old case set passed; a narrow-margin case's score moves far past the tolerance."""
    from edge_runtime.infer import FrameClassifier

    source = exported / "model_float32.tflite"
    cases = st.read_cases(source)
    damaged = tmp_path / "damaged.tflite"
    damaged.write_bytes(scale_conv_weights(source.read_bytes(), 1.05))
    report = st.run_selftest(damaged)  # the digest alone catches it, before any case
    assert report.status == "fail" and report.digest == "mismatch" and report.cases == ()
    fc = FrameClassifier(Classifier(damaged))
    results = {c["kind"]: [] for c in cases["cases"]}
    for case in cases["cases"]:  # the cases alone: as if the digest had not been there
        results[case["kind"]].append(st.check_case(fc, case, cases["tolerance"]))
    assert all(r.ok for r in results["wide"]), [r.problems for r in results["wide"]]
    assert not all(r.ok for r in results["narrow"]), [r.max_score_diff for r in
                                                       results["narrow"]]


def test_edgetpu_compiled_models_get_their_own_digest(coral):
    """The compiler rewrites the tensors: a digest carried over from the int8 model is not
    comparable (said, not failed); the one convert embeds after compiling is checked."""
    path = coral / "mobilenet_v1_1.0_224_quant_embedding_extractor_edgetpu.tflite"
    compiled = ig.embed_digest(path.read_bytes())
    assert json.loads(read_entry(compiled, ig.DIGEST_NAME))["edgetpu"] is True
    assert ig.check_digest(ig.identify_model(path, compiled), compiled).status == "ok"
    for edgetpu, status in ((False, "compiled"), (True, "mismatch")):
        entry = json.dumps({"version": 1, "sha256": "0" * 64, "edgetpu": edgetpu}).encode()
        carried = embed_entry(compiled, ig.DIGEST_NAME, entry)
        assert ig.check_digest(ig.identify_model(path, carried), carried).status == status
