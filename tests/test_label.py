"""train.label: --apply labels.csv and every bad input, the page's server (token, decide)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from train.label import LOG_NAME, main

LABELS = ("circle", "square", "triangle")
SHA = "ab" * 32
REPO = Path(__file__).resolve().parents[1]


def make_field(root: Path, n: int = 24, hosts: tuple[str, ...] = ("pi-1", "pi-2")) -> list[str]:
    """``n`` kept frames as make collect lays them out; returns their paths, FIELD-relative.

    Frame i's model top-1 is ``LABELS[i % 3]`` with score ``0.30 + 0.025 * i``; every fourth
    is a random-sample keep, the others low confidence (and disagreement too when i % 3 == 0).
    """
    out = []
    for i in range(n):
        host = hosts[i % len(hosts)]
        day = root / host / "2026-12-01"
        day.mkdir(parents=True, exist_ok=True)
        stem = f"20261201T12{i // 60:02d}{i % 60:02d}.000Z_f{i:08d}"
        img = np.zeros((48, 64, 3), np.uint8)
        img[:] = (40 + 8 * i, 200 - 6 * i, (97 * i) % 256)
        cv2.putText(img, str(i), (8, 36), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        assert cv2.imwrite(str(day / f"{stem}.jpg"), img)
        top = [{"index": (i + k) % 3, "label": LABELS[(i + k) % 3],
                "score": round(0.30 + 0.025 * i if k == 0 else 0.1, 3)} for k in range(3)]
        reasons = (["random"] if i % 4 == 0 else
                   ["low_confidence", "disagreement"] if i % 3 == 0 else ["low_confidence"])
        doc = {"time": f"2026-12-01T12:{i // 60:02d}:{i % 60:02d}.000Z", "source_time_s": i / 10,
               "device": host, "model": "model_int8.tflite", "model_sha256": SHA, "top": top,
               "label": top[0]["label"], "raw": top[0], "reason": reasons[0], "reasons": reasons,
               "frame": i, "source": "rtsp://cam/stream", "width": 64, "height": 48,
               "drift": None}
        (day / f"{stem}.json").write_text(json.dumps(doc))
        out.append(f"{host}/2026-12-01/{stem}.jpg")
    return out


def copy_of(dataset: Path, label: str, rel: str) -> Path:
    host, _, name = rel.split("/")
    return dataset / label / f"{host}_{name}"


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "path,label") -> Path:
    path.write_text("\n".join([header, *(f"{p},{lab}" for p, lab in rows)]) + "\n")
    return path


def log_lines(dataset: Path) -> list[dict]:
    return [json.loads(x) for x in (dataset / LOG_NAME).read_text().splitlines()]


@pytest.fixture
def field(tmp_path) -> tuple[Path, list[str]]:
    root = tmp_path / "field"
    return root, make_field(root, n=8)


def apply(field_root: Path, dataset: Path, csv_path: Path, *extra: str) -> int:
    return main([str(field_root), "--out", str(dataset), "--apply", str(csv_path), *extra])


def test_apply_copies_logs_and_is_idempotent(field, tmp_path, capsys):
    root, paths = field
    ds = tmp_path / "ds"
    (ds / "square").mkdir(parents=True)  # an existing training folder keeps its files
    (ds / "square" / "mine.jpg").write_bytes(b"user's own photo")
    rows = [(paths[0], "circle"), (paths[1], "square"), ("./" + paths[2], "square"),
            (paths[3], ":unknown"), (paths[4], ":skip")]
    csv_path = write_csv(tmp_path / "labels.csv", rows)
    assert apply(root, ds, csv_path) == 0
    assert "5 decision(s) applied, 0 unchanged; 3 labelled, 1 unknown, 1 skipped of 8" \
        in capsys.readouterr().out
    for rel, label in [(paths[0], "circle"), (paths[1], "square"), (paths[2], "square")]:
        dst = copy_of(ds, label, rel)
        assert dst.read_bytes() == (root / rel).read_bytes()
        assert dst.with_suffix(".json").read_bytes() == (root / rel).with_suffix(".json") \
            .read_bytes()
        assert (root / rel).is_file()  # copied, never moved
    assert (ds / "square" / "mine.jpg").read_bytes() == b"user's own photo"
    assert sorted(p.name for p in ds.iterdir()) == ["circle", LOG_NAME, "square"]
    log = log_lines(ds)
    assert [(r["path"], r["decision"], r["label"], r["who"]) for r in log] == [
        (paths[0], "label", "circle", "apply"), (paths[1], "label", "square", "apply"),
        (paths[2], "label", "square", "apply"), (paths[3], "unknown", None, "apply"),
        (paths[4], "skip", None, "apply")]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in log)
    assert apply(root, ds, csv_path) == 0  # a second run changes nothing
    assert "0 decision(s) applied, 5 unchanged" in capsys.readouterr().out
    assert len(log_lines(ds)) == 5
    copy_of(ds, "circle", paths[0]).with_suffix(".json").unlink()  # removed by hand
    assert apply(root, ds, csv_path) == 0
    assert "1 decision(s) applied, 4 unchanged" in capsys.readouterr().out
    assert copy_of(ds, "circle", paths[0]).with_suffix(".json").is_file()
    assert len(log_lines(ds)) == 6


def test_changed_decision_moves_the_copy_and_the_log_keeps_both(field, tmp_path):
    root, paths = field
    ds = tmp_path / "ds"
    assert apply(root, ds, write_csv(tmp_path / "a.csv", [(paths[5], "circle")])) == 0
    assert copy_of(ds, "circle", paths[5]).is_file()
    assert apply(root, ds, write_csv(tmp_path / "b.csv", [(paths[5], "triangle")])) == 0
    assert not copy_of(ds, "circle", paths[5]).exists()
    assert not copy_of(ds, "circle", paths[5]).with_suffix(".json").exists()
    assert copy_of(ds, "triangle", paths[5]).read_bytes() == (root / paths[5]).read_bytes()
    assert apply(root, ds, write_csv(tmp_path / "c.csv", [(paths[5], ":unknown")])) == 0
    assert not copy_of(ds, "triangle", paths[5]).exists()
    assert [(r["decision"], r["label"]) for r in log_lines(ds)] == [
        ("label", "circle"), ("label", "triangle"), ("unknown", None)]


def test_labels_from_folders_new_classes_and_identical_duplicates(field, tmp_path, capsys):
    root, paths = field
    ds = tmp_path / "ds"
    (ds / "hexagon").mkdir(parents=True)
    rows = [(paths[0], "hexagon"), (paths[1], "star"), (paths[0], "hexagon")]
    csv_path = write_csv(tmp_path / "labels.csv", rows)
    assert apply(root, ds, csv_path) == 1
    assert "row 3: unknown label 'star' (known: circle, hexagon, square, triangle;" \
        in capsys.readouterr().err
    assert apply(root, ds, csv_path, "--new-class", "star") == 0
    assert copy_of(ds, "hexagon", paths[0]).is_file() and copy_of(ds, "star", paths[1]).is_file()
    assert len(log_lines(ds)) == 2  # the identical duplicate row counted once


def _bad_cases(paths: list[str], ds: Path, root: Path) -> dict[str, tuple]:
    nfd = unicodedata.normalize("NFD", "café")
    return {  # name: (rows, set-up, the error line expected)
        "unknown label": ([(paths[0], "circel")], None,
                          r"labels\.csv row 2: unknown label 'circel' \(known: circle, "),
        "missing file": ([(paths[0], "circle"), ("pi-1/2026-12-01/gone.jpg", "circle")], None,
                         r"labels\.csv row 3: no kept frame 'pi-1/2026-12-01/gone\.jpg'"),
        "outside FIELD": ([("../x.jpg", "circle")], None,
                          r"row 2: path '\.\./x\.jpg' must be relative to FIELD"),
        "conflicting duplicates": ([(paths[1], "circle"), (paths[2], "square"),
                                    (paths[1], "square")], None,
                                   rf"labels\.csv rows 2 and 4 give '{paths[1]}' two labels "
                                   r"\('circle' and 'square'\)"),
        "case collision": ([(paths[0], "HEXAGON")], lambda: (ds / "hexagon").mkdir(),
                           r"row 2: label 'HEXAGON' collides with 'hexagon' \(DATASET class "
                           r"folder .*hexagon'\): they differ only in case"),
        "unicode collision": ([(paths[0], nfd)], lambda: (ds / "café").mkdir(),
                              r"row 2: label 'cafe\u0301' collides with 'café'"),
        "folder vs model label": ([(paths[0], "circle")], lambda: (ds / "Circle").mkdir(),
                                  r"label 'circle' \(the model's label in .*\.json\) collides "
                                  r"with 'Circle' \(DATASET class folder"),
        "corrupt sidecar": ([(paths[3], "circle")],
                            lambda: (root / paths[3]).with_suffix(".json").write_text("{\"top"),
                            r"row 2: .*f00000003\.json: corrupt sidecar \(not JSON"),
        "copy place taken": ([(paths[0], "circle")],
                             lambda: (copy_of(ds, "circle", paths[0]).parent.mkdir(),
                                      copy_of(ds, "circle", paths[0]).write_bytes(b"other")),
                             r"circle/pi-1_.*f00000000\.jpg exists and differs from .*: "
                             r"not overwritten"),
        "bad header": ([(paths[0], "circle")], "file,class",
                       r"labels\.csv: header 'file,class', expected 'path,label'"),
    }


@pytest.mark.parametrize("case", ["unknown label", "missing file", "outside FIELD",
                                  "conflicting duplicates", "case collision",
                                  "unicode collision", "folder vs model label",
                                  "corrupt sidecar", "copy place taken", "bad header"])
def test_bad_csv_is_one_line_and_loses_nothing(field, tmp_path, capsys, case):
    root, paths = field
    ds = tmp_path / "ds"
    # Already labelled before the bad file comes: none of it may be lost or changed.
    assert apply(root, ds, write_csv(tmp_path / "ok.csv", [(paths[6], "square")])) == 0
    before = {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()}
    capsys.readouterr()
    rows, setup, expected = _bad_cases(paths, ds, root)[case]
    header = setup if isinstance(setup, str) else "path,label"
    if callable(setup):
        setup()
        before = {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()}
    rows = [*rows, (paths[7], "triangle")]  # a bad file applies none of its good rows
    status = apply(root, ds, write_csv(tmp_path / "labels.csv", rows, header))
    err = capsys.readouterr().err
    assert status == 1, err
    assert re.search(expected, err), err
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()} == before
    assert not copy_of(ds, "triangle", paths[7]).exists()


def test_every_bad_row_named_once(field, tmp_path, capsys):
    root, paths = field
    rows = [(paths[0], "nope"), ("missing.jpg", "circle"), (paths[1], "circle")]
    assert apply(root, tmp_path / "ds", write_csv(tmp_path / "labels.csv", rows)) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[0] for line in err[:2]] == ["error", "error"]
    assert "row 2: unknown label 'nope'" in err[0] and "row 3: no kept frame" in err[1]
    assert err[2].endswith("labels.csv: 2 bad row(s); nothing applied")
    assert not (tmp_path / "ds" / LOG_NAME).exists()


def test_another_model_warns_by_name_and_strict_refuses(field, tmp_path, capsys):
    root, paths = field
    side = (root / paths[2]).with_suffix(".json")
    doc = json.loads(side.read_text())
    side.write_text(json.dumps({**doc, "model_sha256": "cd" * 32}))
    csv_path = write_csv(tmp_path / "labels.csv", [(paths[2], "circle")])
    assert apply(root, tmp_path / "ds", csv_path, "--strict") == 1
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: {re.escape(str(side))}: from another model \(sha256 "
                        r"cdcdcdcdcdcd, 1 frame\(s\)\) than the other 7 \(sha256 ababababab"
                        r"ab\) \(--strict\)\n", err), err
    assert not (tmp_path / "ds").exists()
    assert apply(root, tmp_path / "ds", csv_path) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {side}: from another model") and "--strict refuses" in err
    assert copy_of(tmp_path / "ds", "circle", paths[2]).is_file()


def test_damaged_log_line_is_named_and_later_decisions_still_append(field, tmp_path, capsys):
    root, paths = field
    ds = tmp_path / "ds"
    assert apply(root, ds, write_csv(tmp_path / "a.csv", [(paths[0], "circle")])) == 0
    with open(ds / LOG_NAME, "a") as fh:
        fh.write('{"time": "2026-')  # a crash mid-line
    assert apply(root, ds, write_csv(tmp_path / "b.csv", [(paths[1], "square")])) == 0
    assert f"warning: {ds / LOG_NAME}: line 2 is damaged; ignored" in capsys.readouterr().err
    lines = (ds / LOG_NAME).read_text().splitlines()
    assert json.loads(lines[0])["label"] == "circle" and json.loads(lines[2])["label"] == "square"


def test_cli_errors_are_one_line(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "train.label", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    r = run(str(tmp_path / "nowhere"), "--out", str(tmp_path / "ds"))
    assert (r.returncode, r.stderr) == (1, f"error: {tmp_path / 'nowhere'}: no such folder "
                                           "(FIELD: what make collect brought home)\n")
    make_field(tmp_path / "f", n=2)
    r = run(str(tmp_path / "f"), "--out", str(tmp_path / "ds"), "--host", "0.0.0.0")
    assert r.returncode == 1 and r.stderr.startswith("error: --host 0.0.0.0: the labelling "
                                                     "page serves this machine only")
    r = run(str(tmp_path / "f"), "--out", str(tmp_path / "ds"), "--apply", "x.csv")
    assert (r.returncode, r.stderr) == (1, "error: x.csv: no such file (--apply)\n")
    (tmp_path / "split" / "train").mkdir(parents=True)
    (tmp_path / "split" / "val").mkdir()
    r = run(str(tmp_path / "f"), "--out", str(tmp_path / "split"), "--apply", "x.csv")
    assert (r.returncode, r.stderr) == (1, f"error: {tmp_path / 'split'}: has train/ and val/ "
                                           "split folders; --out takes one folder per class "
                                           f"(e.g. {tmp_path / 'split' / 'train'})\n")
    r = run(str(tmp_path / "f"), "--out", str(tmp_path / "ds"), "--ap", "x.csv")
    assert r.returncode == 2 and "unrecognized arguments: --ap" in r.stderr


@contextlib.contextmanager
def label_server(field_root: Path, dataset: Path, *extra: str) -> Iterator[str]:
    """``python -m train.label`` serving on a free port; yields the printed URL."""
    proc = subprocess.Popen([sys.executable, "-m", "train.label", str(field_root), "--out",
                             str(dataset), "--port", "0", *extra], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stdout:
            m = re.match(r"open (http://127\.0\.0\.1:\d+/\?token=\S+)", line)
            if m:
                url = m.group(1)
                break
        assert url, proc.stderr.read()
        yield url
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM is a requested stop


def _get(url: str, data: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                                 method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_server_needs_the_token_and_applies_decisions(field, tmp_path):
    root, paths = field
    ds = tmp_path / "ds"
    with label_server(root, ds) as url:
        base, token = url.split("/?token=")
        for path in ("/", "/api/frames", "/thumb/0", "/img/0", "/?token=wrong"):
            assert _get(base + path)[0] == 403, path
        assert _get(f"{base}/api/decide", {"paths": [paths[0]]})[0] == 403
        status, page = _get(url)
        assert status == 200 and b"<title>edgekit - label field frames</title>" in page
        status, doc = _get(f"{base}/api/frames?token={token}")
        doc = json.loads(doc)
        assert [f["path"] for f in doc["frames"]] == sorted(paths)
        assert doc["classes"] == list(LABELS) and doc["progress"]["total"] == 8
        first = doc["frames"][0]
        assert (first["suggestion"], first["score"], first["reason"]) == ("circle", 0.3, "random")
        status, thumb = _get(f"{base}/thumb/0?token={token}")
        img = cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR)
        assert status == 200 and img.shape == (48, 64, 3)
        assert _get(f"{base}/thumb/99?token={token}")[0] == 404
        status, body = _get(f"{base}/api/decide?token={token}",
                            {"paths": [paths[0]], "decision": "label", "label": "Circle"})
        assert status == 409 and b"collides with 'circle'" in body
        status, body = _get(f"{base}/api/decide?token={token}",
                            {"paths": [paths[0], paths[1]], "decision": "label",
                             "label": "square"})
        assert status == 200 and json.loads(body)["progress"]["label"] == 2
    assert copy_of(ds, "square", paths[1]).read_bytes() == (root / paths[1]).read_bytes()
    assert [(r["path"], r["who"]) for r in log_lines(ds)] == [(paths[0], "page"),
                                                               (paths[1], "page")]


def test_imports_no_tensorflow_nor_numpy():
    # --apply runs on a laptop without TensorFlow, and starts at once: OpenCV loads only
    # when the page asks for its first thumbnail.
    code = ("import sys; sys.modules['tensorflow'] = sys.modules['keras'] = None; "
            "import train.label, train.label_server; "
            "print([m for m in ('tensorflow', 'keras', 'cv2', 'numpy') if sys.modules.get(m)])")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert (r.returncode, r.stdout) == (0, "[]\n"), r.stderr
