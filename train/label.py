"""Label kept field frames into a training dataset: a local page, or a labels CSV.

Usage:
    python -m train.label FIELD --out DATASET [--port 0] [--host 127.0.0.1]
                          [--new-class NAME ...] [--strict]
    python -m train.label FIELD --out DATASET --apply labels.csv [--new-class NAME ...]

FIELD is what ``make collect`` brings home (``FIELD/<host>/<YYYY-MM-DD>/<stamp>_fN.jpg``
plus a JSON sidecar of the same stem). Each decision COPIES the image and its sidecar to
``DATASET/<label>/<host>_<stem>.jpg|.json`` (never overwriting a different file) and is
appended to ``DATASET/field_labels.jsonl``; a changed decision moves the copy, unknown and
skip are only logged. A label must be an existing DATASET class folder, a label the model
gave (a sidecar's ``top``) or a ``--new-class``. In labels.csv (header ``path,label``,
paths relative to FIELD) the label ``:unknown`` marks an unknown frame and ``:skip`` a
skipped one. Sidecars from another model than most are labelled with a warning naming
them; ``--strict`` refuses them instead.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
import sys
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edge_runtime.errors import EdgekitError, Parser, cli_main, int_at_least
from edge_runtime.fileio import atomic_path

LOG_NAME = "field_labels.jsonl"
DECISIONS = ("label", "unknown", "skip")
CSV_SPECIAL = {":unknown": "unknown", ":skip": "skip"}
MAX_LABEL = 100


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


@dataclass(frozen=True)
class Frame:
    """One kept frame in FIELD: the JPEG, its sidecar and what the model said."""

    path: str  # relative to FIELD, POSIX separators: the frame's identity everywhere
    jpg: Path
    sidecar: Path
    host: str
    device: str
    reason: str
    reasons: tuple[str, ...]
    score: float | None
    suggestion: str | None
    model_labels: tuple[str, ...]
    model_sha256: str
    time: str

    @property
    def copy_stem(self) -> str:
        return f"{self.host}_{self.jpg.stem}"


def label_key(text: str) -> str:
    """What two spellings of one label share: Unicode NFKC, case folded, spaces collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def check_label_name(label: str) -> str | None:
    """Why ``label`` cannot be a class folder name, or None when it can."""
    if not label or not label.strip():
        return "an empty label"
    if len(label) > MAX_LABEL:
        return f"a label longer than {MAX_LABEL} characters"
    if label != label.strip():
        return f"label {label!r} starts or ends with whitespace"
    if label in (".", "..") or label.startswith((".", ":")):
        return f"label {label!r} starts with '.' or ':'"
    if any(c in "/\\" or unicodedata.category(c).startswith("C") for c in label):
        return f"label {label!r} has a path separator or a control character"
    return None


def _read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's JSON object; EdgekitError naming the file when it is corrupt."""
    try:
        doc = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgekitError(f"{path}: corrupt sidecar (not JSON: {e})") from None
    if not isinstance(doc, dict):
        raise EdgekitError(f"{path}: corrupt sidecar (a JSON {type(doc).__name__}, "
                           "expected an object)")
    top = doc.get("top", [])
    if not isinstance(top, list) or not all(isinstance(t, dict) for t in top):
        raise EdgekitError(f"{path}: corrupt sidecar ('top' is not a list of objects)")
    return doc


def _reasons(doc: dict[str, Any]) -> tuple[str, ...]:
    """All the reasons the frame was kept for (the primary one when the list is missing)."""
    listed = doc.get("reasons")
    if isinstance(listed, list) and listed:
        return tuple(str(r) for r in listed)
    return (str(doc["reason"]),) if doc.get("reason") else ()


def _frame(field: Path, jpg: Path, sidecar: Path) -> Frame:
    doc = _read_sidecar(sidecar)
    rel = jpg.relative_to(field)
    top = doc.get("top") or []
    raw = doc.get("raw") if isinstance(doc.get("raw"), dict) else {}
    first = top[0] if top else raw
    score = first.get("score")
    labels = tuple(t["label"] for t in top if isinstance(t.get("label"), str))
    suggestion = next((s for s in (first.get("label"), doc.get("label"), raw.get("label"))
                       if isinstance(s, str) and s), None)
    return Frame(
        path=rel.as_posix(), jpg=jpg, sidecar=sidecar,
        host=rel.parts[0] if len(rel.parts) > 1 else "field",
        device=str(doc.get("device") or (rel.parts[0] if len(rel.parts) > 1 else "")),
        reason=str(doc.get("reason") or ""),
        reasons=_reasons(doc),
        score=float(score) if isinstance(score, (int, float)) else None,
        suggestion=suggestion, model_labels=labels,
        model_sha256=str(doc.get("model_sha256") or ""), time=str(doc.get("time") or ""))


def scan(field: Path, exclude: Path | None = None) -> tuple[list[Frame], dict[str, str]]:
    """Every complete kept frame under ``field`` (a JPEG with its sidecar), sorted.

    Returns the frames, and the frames left out (a corrupt sidecar) with the reason, by
    path. Temp files (names starting with '.') and anything under ``exclude`` are ignored.
    """
    frames, problems = [], {}
    for jpg in sorted(field.rglob("*.jpg")):
        rel = jpg.relative_to(field)
        if any(p.startswith(".") for p in rel.parts):
            continue
        if exclude is not None and jpg.is_relative_to(exclude):
            continue
        sidecar = jpg.with_suffix(".json")
        if not sidecar.is_file():
            continue  # the sidecar is written last: without it the pair is incomplete
        try:
            frames.append(_frame(field, jpg, sidecar))
        except EdgekitError as e:
            problems[rel.as_posix()] = str(e)
    return frames, problems


def model_mismatch(frames: list[Frame]) -> list[str]:
    """One line per model other than the most common one, naming its first frame."""
    counts = Counter(f.model_sha256 for f in frames)
    if len(counts) < 2:
        return []
    main, n_main = counts.most_common(1)[0]
    lines = []
    for sha, n in counts.items():
        if sha != main:
            first = next(f for f in frames if f.model_sha256 == sha)
            lines.append(f"{first.sidecar}: from another model (sha256 {sha[:12] or 'none'}, "
                         f"{n} frame(s)) than the other {n_main} (sha256 {main[:12]})")
    return lines


class Vocabulary:
    """The labels a decision may use, and the one spelling each must have."""

    def __init__(self, dataset: Path, frames: Iterable[Frame], new: Iterable[str] = ()):
        self.spelling: dict[str, tuple[str, str]] = {}  # key -> (label, where it came from)
        if dataset.is_dir():
            for d in sorted(dataset.iterdir()):
                if d.is_dir() and not d.name.startswith("."):
                    self._add(d.name, f"DATASET class folder {str(d)!r}")
        for f in frames:
            for label in f.model_labels:
                self._add(label, f"the model's label in {f.sidecar}")
        for label in new:
            problem = check_label_name(label)
            if problem:
                raise EdgekitError(f"--new-class: {problem}")
            self._add(label, "--new-class")

    def _add(self, label: str, where: str) -> None:
        key = label_key(label)
        have = self.spelling.get(key)
        if have is None:
            self.spelling[key] = (label, where)
        elif have[0] != label:
            raise EdgekitError(f"label {label!r} ({where}) collides with {have[0]!r} "
                               f"({have[1]}): they differ only in case, whitespace or "
                               "Unicode form; rename one")

    @property
    def labels(self) -> list[str]:
        return sorted(label for label, _ in self.spelling.values())

    def check(self, label: str, where: str) -> str:
        """``label`` if decisions may use it; EdgekitError naming ``where`` otherwise."""
        problem = check_label_name(label)
        if problem:
            raise EdgekitError(f"{where}: {problem}")
        have = self.spelling.get(label_key(label))
        if have is None:
            known = ", ".join(self.labels) or "none"
            raise EdgekitError(f"{where}: unknown label {label!r} (known: {known}; "
                               "--new-class NAME adds a class)")
        if have[0] != label:
            raise EdgekitError(f"{where}: label {label!r} collides with {have[0]!r} "
                               f"({have[1]}): they differ only in case, whitespace or "
                               "Unicode form")
        return label


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _copy(src: Path, dst: Path) -> None:
    if dst.exists():
        return  # checked identical beforehand
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


class Labeller:
    """Decisions on FIELD's frames, copied into DATASET and logged; thread-safe."""

    def __init__(self, field: Path, dataset: Path, new_classes: Iterable[str] = (),
                 strict: bool = False):
        self.field, self.dataset = field, dataset
        exclude = dataset if dataset.resolve().is_relative_to(field.resolve()) else None
        frames, self.left_out = scan(field, exclude)
        for line in self.left_out.values():
            _warn(f"{line}; frame left out")
        for line in model_mismatch(frames):
            if strict:
                raise EdgekitError(f"{line} (--strict)")
            _warn(f"{line}; labelled all the same (--strict refuses)")
        self.frames = frames
        self.by_path = {f.path: f for f in frames}
        self.vocab = Vocabulary(dataset, frames, new_classes)
        self.log = dataset / LOG_NAME
        self.lock = threading.Lock()
        self.state: dict[str, dict[str, Any]] = self._replay()

    def _replay(self) -> dict[str, dict[str, Any]]:
        """The latest decision per frame, from the log (a damaged line is named, skipped)."""
        state: dict[str, dict[str, Any]] = {}
        if not self.log.is_file():
            return state
        with open(self.log, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                try:
                    rec = json.loads(line)
                    state[rec["path"]] = {k: rec.get(k) for k in ("decision", "label", "copy")}
                except (json.JSONDecodeError, KeyError, TypeError):
                    if line.strip():
                        _warn(f"{self.log}: line {n} is damaged; ignored")
        return state

    def progress(self) -> dict[str, int]:
        done = Counter(self.state[f.path]["decision"] for f in self.frames
                       if f.path in self.state)
        return {"total": len(self.frames), "decided": sum(done.values()),
                **{d: done.get(d, 0) for d in DECISIONS}}

    def target(self, frame: Frame, label: str | None) -> Path | None:
        return None if label is None else self.dataset / label / f"{frame.copy_stem}.jpg"

    def check_free(self, frame: Frame, label: str | None) -> None:
        """EdgekitError when the copy's place holds a different file."""
        jpg = self.target(frame, label)
        if jpg is None:
            return
        for src, dst in ((frame.jpg, jpg), (frame.sidecar, jpg.with_suffix(".json"))):
            if dst.exists() and not (dst.is_file() and _same_bytes(src, dst)):
                raise EdgekitError(f"{dst} exists and differs from {src}: not overwritten "
                                   "(remove or rename it)")

    def decide(self, decisions: list[tuple[str, str, str | None]], who: str) -> dict[str, int]:
        """Applies ``(path, decision, label)`` triples, all checked before any is applied.

        Returns counts: ``applied`` and ``unchanged`` (the frame already had it).
        Raises:
            EdgekitError: an unknown frame, decision or label, or a copy's place taken.
        """
        with self.lock:
            todo = []
            for path, decision, label in decisions:
                frame = self.by_path.get(path)
                if frame is None:
                    raise EdgekitError(f"no kept frame {path!r} in {self.field}")
                if decision not in DECISIONS:
                    raise EdgekitError(f"decision {decision!r}, expected one of {DECISIONS}")
                label = (self.vocab.check(label or "", f"frame {path}")
                         if decision == "label" else None)
                self.check_free(frame, label)
                todo.append((frame, decision, label))
            counts = Counter()
            for frame, decision, label in todo:
                counts[self._apply(frame, decision, label, who)] += 1
            return {"applied": counts["applied"], "unchanged": counts["unchanged"]}

    def _apply(self, frame: Frame, decision: str, label: str | None, who: str) -> str:
        prev = self.state.get(frame.path)
        jpg = self.target(frame, label)
        copy = jpg.relative_to(self.dataset).as_posix() if jpg else None
        if prev and (prev["decision"], prev["label"], prev["copy"]) == (decision, label, copy) \
                and (jpg is None or jpg.with_suffix(".json").is_file()):
            return "unchanged"  # (a copy removed by hand since is made again)
        if jpg is not None:
            _copy(frame.jpg, jpg)  # the JPEG first, the sidecar last: a sidecar means complete
            _copy(frame.sidecar, jpg.with_suffix(".json"))
        if prev and prev.get("copy") and prev["copy"] != copy:
            self._remove_copy(frame, self.dataset / prev["copy"])
        rec = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
               .replace("+00:00", "Z"), "path": frame.path, "decision": decision,
               "label": label, "who": who, "copy": copy}
        self._append(rec)
        self.state[frame.path] = {"decision": decision, "label": label, "copy": copy}
        return "applied"

    def _remove_copy(self, frame: Frame, jpg: Path) -> None:
        """Removes an earlier copy of ``frame``, sidecar first; a changed file is kept."""
        for src, dst in ((frame.sidecar, jpg.with_suffix(".json")), (frame.jpg, jpg)):
            if dst.is_file() and not dst.is_symlink():
                if _same_bytes(src, dst):
                    dst.unlink()
                else:
                    _warn(f"{dst} was changed since it was copied; left in place")

    def _append(self, rec: dict[str, Any]) -> None:
        self.dataset.mkdir(parents=True, exist_ok=True)
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # A line cut short by a crash must not swallow the next record.
            if os.fstat(fd).st_size and not self._ends_with_newline():
                line = "\n" + line
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _ends_with_newline(self) -> bool:
        with open(self.log, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def frames_doc(self) -> list[dict[str, Any]]:
        """The frames as the page shows them, with their current decision."""
        out = []
        for i, f in enumerate(self.frames):
            st = self.state.get(f.path) or {}
            out.append({"id": i, "path": f.path, "host": f.host, "device": f.device,
                        "reason": f.reason, "reasons": list(f.reasons), "score": f.score,
                        "suggestion": f.suggestion, "time": f.time,
                        "decision": st.get("decision"),
                        "label": st.get("label")})
        return out


def read_labels_csv(path: Path, labeller: Labeller) -> list[tuple[str, str, str | None]]:
    """The decisions in a ``path,label`` CSV, checked row by row.

    Raises:
        EdgekitError: one line per bad row (all of them), naming the file and the row.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise EdgekitError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    rows = list(csv.reader(text.splitlines()))
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if header != ["path", "label"]:
        raise EdgekitError(f"{path}: header {','.join(header) or '(empty file)'!r}, "
                           "expected 'path,label'")
    errors, seen, out = [], {}, []
    for n, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        where = f"{path} row {n}"
        try:
            if len(row) != 2:
                raise EdgekitError(f"{where}: {len(row)} fields, expected 2 (path,label)")
            rel, label = _row_path(row[0], where), row[1].strip()
            if rel in seen:
                first_n, first_label = seen[rel]
                if first_label != label:
                    raise EdgekitError(f"{path} rows {first_n} and {n} give {rel!r} two "
                                       f"labels ({first_label!r} and {label!r})")
                continue
            seen[rel] = (n, label)
            frame = labeller.by_path.get(rel)
            if rel in labeller.left_out:
                raise EdgekitError(f"{where}: {labeller.left_out[rel]}")
            if frame is None:
                raise EdgekitError(f"{where}: no kept frame {rel!r} (a JPEG with its "
                                   f"sidecar) in {labeller.field}")
            decision = CSV_SPECIAL.get(label, "label")
            if decision == "label":
                labeller.vocab.check(label, where)
            labeller.check_free(frame, label if decision == "label" else None)
            out.append((rel, decision, label if decision == "label" else None))
        except EdgekitError as e:
            errors.append(str(e))
    if errors:
        for line in errors[:-1]:
            print(f"error: {line}", file=sys.stderr)
        raise EdgekitError(f"{errors[-1]}\n{path}: {len(errors)} bad row(s); nothing applied")
    return out


def _row_path(text: str, where: str) -> str:
    p = PurePosixPath(text.strip().replace("\\", "/"))
    if not text.strip() or p.is_absolute() or ".." in p.parts:
        raise EdgekitError(f"{where}: path {text!r} must be relative to FIELD, inside it")
    return p.as_posix()


def _parser() -> Parser:
    p = Parser(prog="python -m train.label", allow_abbrev=False,
               description="Label kept field frames into DATASET's class folders: a local "
                           "page (default) or --apply labels.csv.")
    p.add_argument("field", type=Path, metavar="FIELD", help="folder make collect filled")
    p.add_argument("--out", type=Path, required=True, metavar="DATASET",
                   help="dataset with one folder per class (created when missing)")
    p.add_argument("--apply", type=Path, metavar="CSV",
                   help="apply a path,label CSV (paths relative to FIELD; the label :unknown "
                        "or :skip for those decisions) instead of serving the page")
    p.add_argument("--new-class", action="append", default=[], metavar="NAME",
                   help="allow a class that is neither a DATASET folder nor a model label")
    p.add_argument("--strict", action="store_true",
                   help="refuse frames whose sidecar names another model than most")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to serve on")
    p.add_argument("--port", type=int_at_least(0), default=0, help="port (0: any free one)")
    return p


@cli_main(interrupted="every decision made is saved")
def main(argv: list[str] | None = None) -> int:
    """Runs the labelling page, or applies a CSV; returns the exit status."""
    args = _parser().parse_args(argv)
    field, dataset = args.field, args.out
    if not field.is_dir():
        raise EdgekitError(f"{field}: no such folder (FIELD: what make collect brought home)")
    if dataset.exists() and not dataset.is_dir():
        raise EdgekitError(f"{dataset}: not a folder (--out DATASET)")
    if (dataset / "train").is_dir() and (dataset / "val").is_dir():
        raise EdgekitError(f"{dataset}: has train/ and val/ split folders; --out takes one "
                           f"folder per class (e.g. {dataset / 'train'})")
    if dataset.resolve() == field.resolve():
        raise EdgekitError(f"{dataset}: --out must not be FIELD itself")
    if args.apply is not None and not args.apply.is_file():
        raise EdgekitError(f"{args.apply}: no such file (--apply)")
    labeller = Labeller(field, dataset, args.new_class, strict=args.strict)
    if not labeller.frames:
        raise EdgekitError(f"{field}: no kept frames (JPEGs with a JSON sidecar)")
    if args.apply is not None:
        counts = labeller.decide(read_labels_csv(args.apply, labeller), who="apply")
        p = labeller.progress()
        print(f"{args.apply}: {counts['applied']} decision(s) applied, {counts['unchanged']} "
              f"unchanged; {p['label']} labelled, {p['unknown']} unknown, {p['skip']} skipped "
              f"of {p['total']} frames -> {dataset}")
        return 0
    from .label_server import serve

    return serve(labeller, args.host, args.port)


if __name__ == "__main__":
    from edge_runtime.errors import exit_with, install_signal_handlers

    install_signal_handlers()
    exit_with(main)
