"""Models that check themselves: golden cases stored in the model, replayed on the device.

At convert time a few held-out images travel inside the ``.tflite`` file (a metadata entry
named ``edgekit_selftest``, beside the manifest): each as a small JPEG a little larger than
the model input (so the device's decoder *and* resizer are exercised), with the SHA-256 of
the exact model input the desktop's preprocessing made from it, and the top-k the desktop
got. :func:`run_selftest` replays them here, through the daemon's own path
(:class:`edge_runtime.infer.FrameClassifier`), and names every difference:

* ``input digest`` differs: this machine decodes or resizes differently (another OpenCV
  build, or the wrong interpolation) -- the model sees other pixels than in training;
* ``top-1`` differs, or a score moved by more than the tolerance (:data:`QUANT_STEPS`
  output quantization steps for a quantized output, :data:`FLOAT_TOLERANCE` otherwise):
  a backend, delegate or architecture difference, or a damaged model;
* ``label`` differs: the labels in use are not the ones the model was made with;
* ``sha256`` differs from the one recorded in the manifest beside the model: the file was
  changed or corrupted after conversion;
* the model's data does not match the digest stored in it (:mod:`edge_runtime.integrity`):
  the same, for a model deployed without its manifest.

The cases are the widest-margin held-out images (one per class first) *and* the
narrowest-margin ones still decisive within the tolerance: a saturated score (0.999) hardly
moves when a weight is damaged, a score near the decision boundary does.

A file that is not a model (text, an image, a truncated or zero-byte file, a Keras model) is
an error naming what it is. A genuine model without golden cases (Coral's, anything not
made by ``convert``) is *skipped*, not failed: there is nothing to compare with; with
``strict`` (``selftest --strict``) it fails.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgekitError
from .fileio import file_sha256

SELFTEST_NAME = "edgekit_selftest"
SELFTEST_VERSION = 1
FLOAT_TOLERANCE = 1e-3  # float32 kernels differ by ~1e-6 across CPUs; probabilities, not logits
# A quantized output differs by a few steps across architectures: up to 6 between x86 and
# emulated aarch64 (Cortex-A72) on Coral's models (`make test-arm64`). Top-1 is compared
# exactly; a damaged model or other pixels move scores by far more than this.
QUANT_STEPS = 8
GOLDEN_SCALE = 1.75  # golden images are stored this much larger than the input (exercise resize)
MAX_CASES = 3  # widest-margin cases
NARROW_CASES = 2  # narrowest-margin cases beside them (still above twice the tolerance)


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one golden case."""

    name: str
    ok: bool
    problems: tuple[str, ...] = ()
    expected_top1: int | None = None
    got_top1: int | None = None
    max_score_diff: float | None = None


@dataclass(frozen=True)
class SelftestReport:
    """What :func:`run_selftest` found.

    Attributes:
        model: the model file.
        status: "pass", "fail" or "skip" (no golden cases in the model).
        problems: model-level problems (hash mismatch, unreadable cases).
        cases: one result per golden case.
        tolerance: the score tolerance used.
        note: why it was skipped, when it was.
        digest: the tensor digest check ("ok", "absent", "compiled", "mismatch",
            "unreadable"; "" for ONNX) and its one-line message.
    """

    model: str
    status: str
    problems: tuple[str, ...] = ()
    cases: tuple[CaseResult, ...] = ()
    tolerance: float = 0.0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    digest_message: str = ""

    @property
    def ok(self) -> bool:
        """True when nothing failed (passed or skipped)."""
        return self.status != "fail"

    def failure_lines(self) -> list[str]:
        """One line per failure, naming the case."""
        lines = [f"{self.model}: {p}" for p in self.problems]
        for c in self.cases:
            lines.extend(f"{self.model}: case {c.name}: {p}" for p in c.problems)
        return lines

    def summary(self) -> str:
        """One line: the verdict and counts."""
        digest = {"ok": "; data digest ok", "absent": "; no digest (data not checked)",
                  "compiled": "; digest predates Edge TPU compilation (not checked)"
                  }.get(self.digest, "")
        if self.status == "skip":
            return f"selftest skipped: {self.note}{digest} [{self.model}]"
        if not self.cases and self.problems:  # refused before any case ran: say why
            more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return f"selftest FAILED: {self.problems[0]}{more} [{self.model}]"
        passed = sum(c.ok for c in self.cases)
        verdict = "passed" if self.ok else "FAILED"
        return (f"selftest {verdict}: {passed}/{len(self.cases)} golden cases"
                f"{'' if not self.problems else f', {len(self.problems)} model problem(s)'}"
                f" (score tolerance {self.tolerance:.4g}){digest} [{self.model}]")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "model": self.model, "status": self.status, "ok": self.ok,
            "tolerance": self.tolerance, "note": self.note,
            "digest": self.digest, "digest_message": self.digest_message,
            "problems": list(self.problems),
            "cases": [{"name": c.name, "ok": c.ok, "problems": list(c.problems),
                       "expected_top1": c.expected_top1, "got_top1": c.got_top1,
                       "max_score_diff": c.max_score_diff} for c in self.cases],
        }


def input_digest(prepared: np.ndarray) -> str:
    """SHA-256 of a prepared model input (its shape and dtype included)."""
    h = hashlib.sha256()
    h.update(f"{prepared.dtype.str}{list(prepared.shape)}".encode())
    h.update(np.ascontiguousarray(prepared).tobytes())
    return h.hexdigest()


def score_tolerance(frame_classifier: Any) -> float:
    """:data:`QUANT_STEPS` output quantization steps for a quantized output, else
    :data:`FLOAT_TOLERANCE`."""
    scale = float(getattr(frame_classifier, "_out_scale", 0.0) or 0.0)
    return max(QUANT_STEPS * scale, FLOAT_TOLERANCE) if scale > 0 else FLOAT_TOLERANCE


def golden_image(bgr: np.ndarray, input_size: tuple[int, int], quality: int = 85) -> bytes:
    """A JPEG of ``bgr`` about :data:`GOLDEN_SCALE` times the model input (never enlarged)."""
    import cv2

    h, w = bgr.shape[:2]
    ih, iw = input_size
    f = min(1.0, max(GOLDEN_SCALE * ih / h, GOLDEN_SCALE * iw / w))
    if f < 1.0:
        bgr = cv2.resize(bgr, (max(1, round(w * f)), max(1, round(h * f))),
                         interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise EdgekitError("could not encode a golden image as JPEG")
    return bytes(buf)


def _decode(jpeg: bytes) -> np.ndarray:
    """The golden image as BGR, through the same size-checked reader as every image (a
    crafted model must not smuggle in a decompression bomb)."""
    from .imageio import decode

    try:
        return decode(jpeg, "golden image", bgr=True)
    except EdgekitError as e:
        raise ValueError(str(e)) from None


def _frame_classifier(classifier: Any) -> Any:
    from .infer import FrameClassifier

    return classifier if isinstance(classifier, FrameClassifier) else FrameClassifier(classifier)


def choose_cases(margins: list[tuple[float, int]], max_cases: int = MAX_CASES,
                 narrow: int = NARROW_CASES) -> list[tuple[int, str]]:
    """Which candidates become golden cases, and of which kind.

    Args:
        margins: (top-1 margin, top-1 class) per decisive candidate, in candidate order.
        max_cases: how many widest-margin cases (one per class first, then the widest).
        narrow: how many narrowest-margin cases beside them, from the rest.

    Returns:
        (candidate index, "wide" or "narrow") pairs, wide first.
    """
    order = sorted(range(len(margins)), key=lambda i: -margins[i][0])
    wide, seen = [], set()
    for i in order:  # one per class first, then the widest margins
        if margins[i][1] not in seen:
            wide.append(i)
            seen.add(margins[i][1])
    wide = (wide + [i for i in order if i not in wide])[:max_cases]
    rest = [i for i in reversed(order) if i not in wide][:narrow]
    return [(i, "wide") for i in wide] + [(i, "narrow") for i in rest]


def make_cases(classifier: Any, images: list[tuple[str, np.ndarray]], k: int = 3,
               max_cases: int = MAX_CASES, narrow: int = NARROW_CASES) -> dict[str, Any]:
    """Builds the golden cases of a model from BGR images, running it on this machine.

    Each image is stored as :func:`golden_image`, then decoded again and classified
    exactly as the device will, so the recorded digest and scores are those of the
    stored JPEG. Images whose top-1 margin is within the tolerance are left out (another
    machine could legitimately flip them); the ``max_cases`` with the widest margins are
    kept, at most one per predicted class while others remain, and the ``narrow`` with
    the narrowest (see :func:`choose_cases`).

    Args:
        classifier: an :class:`edge_runtime.classify.Classifier` (or FrameClassifier).
        images: (name, BGR image) pairs, e.g. from the held-out split.
        k: how many top classes to record per case.
        max_cases: how many widest-margin cases to keep.
        narrow: how many narrowest-margin cases to keep beside them.

    Returns:
        The JSON-ready object to embed with :func:`embed_cases`.
    """
    fc = _frame_classifier(classifier)
    tol = score_tolerance(fc)
    labels = getattr(fc.classifier, "labels", {}) or {}
    candidates = []
    for name, bgr in images:
        jpeg = golden_image(bgr, fc.size)
        img = _decode(jpeg)
        prepared = fc.prepare(img)
        scores = np.asarray(fc.scores(img, prepared), np.float64)
        order = np.argsort(-scores, kind="stable")[:max(2, k)]
        margin = float(scores[order[0]] - scores[order[1]]) if scores.size > 1 else 1.0
        if margin <= 2 * tol:
            continue
        top = [{"index": int(i), "label": labels.get(int(i), str(int(i))),
                "score": float(scores[i])} for i in order[:k]]
        candidates.append((margin, name, jpeg, input_digest(prepared), top))
    chosen = choose_cases([(c[0], c[4][0]["index"]) for c in candidates], max_cases, narrow)
    cases = [{"name": name, "image_jpeg": base64.b64encode(jpeg).decode("ascii"),
              "input_sha256": digest, "top": top, "kind": kind, "margin": round(margin, 6)}
             for (margin, name, jpeg, digest, top), kind in
             ((candidates[i], kind) for i, kind in chosen)]
    return {"version": SELFTEST_VERSION, "tolerance": tol,
            "interpolation": fc.classifier.interpolation, "cases": cases,
            "labels_sha256": labels_digest(labels) if labels else None}


def labels_digest(labels: dict[int, str]) -> str:
    """SHA-256 of a label map, in index order."""
    return hashlib.sha256("\n".join(f"{i}\t{labels[i]}" for i in sorted(labels))
                          .encode("utf-8")).hexdigest()


def embed_cases(model: bytes, cases: dict[str, Any]) -> bytes:
    """Returns ``model`` with the golden cases stored in its metadata."""
    from .metadata import embed_entry

    return embed_entry(model, SELFTEST_NAME, json.dumps(cases, sort_keys=True).encode())


def read_cases(model: str | Path | bytes) -> dict[str, Any] | None:
    """The golden cases stored in a model, or None when it has none."""
    if not isinstance(model, (bytes, bytearray)) and Path(model).suffix.lower() == ".onnx":
        from .onnx_backend import SELFTEST_KEY, read_metadata

        text = read_metadata(model, SELFTEST_KEY)
        raw = None if text is None else text.encode("utf-8")
    else:
        from .metadata import read_entry

        raw = read_entry(model, SELFTEST_NAME)
    if raw is None:
        return None
    try:
        cases = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EdgekitError("the model's self-test entry is not valid JSON") from None
    if not isinstance(cases, dict) or not isinstance(cases.get("cases"), list):
        raise EdgekitError("the model's self-test entry has no case list")
    return cases


def recorded_sha256(model_path: Path) -> str | None:
    """The sha256 the manifest beside a model records for it (``convert`` writes one per
    variant), or None."""
    side = model_path.parent / "manifest.json"
    try:
        d = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(d, dict):
        return None
    variants = d.get("variants")
    if isinstance(variants, dict):
        for v in variants.values():
            if isinstance(v, dict) and v.get("file") == model_path.name:
                return v.get("sha256")
    flat = d.get("model_sha256")
    return flat.get(model_path.name) if isinstance(flat, dict) else None


def _check_hash(model_path: Path) -> list[str]:
    want = recorded_sha256(model_path)
    if not want:
        return []
    got = file_sha256(model_path)
    if got != want:
        return [f"sha256 {got[:16]}… differs from the manifest's {want[:16]}… "
                "(the file changed after conversion: corrupted or replaced)"]
    return []


def check_case(fc: Any, case: dict[str, Any], tol: float) -> CaseResult:
    """Replays one golden case on ``fc`` (a FrameClassifier)."""
    name = str(case.get("name", "?"))
    try:
        img = _decode(base64.b64decode(case["image_jpeg"]))
        want = case["top"]
        want_digest = case["input_sha256"]
    except (KeyError, TypeError, ValueError) as e:
        return CaseResult(name, False, (f"unreadable golden case ({e})",))
    problems = []
    prepared = fc.prepare(img)
    digest = input_digest(prepared)
    if digest != want_digest:
        problems.append("input digest differs: this machine decodes or resizes the image "
                        f"differently (interpolation {fc.classifier.interpolation!r})")
    scores = np.asarray(fc.scores(img, prepared), np.float64)
    got_top1 = int(np.argmax(scores))
    want_top1 = int(want[0]["index"])
    if got_top1 != want_top1:
        problems.append(f"top-1 is {got_top1} ({scores[got_top1]:.4f}), expected "
                        f"{want_top1} ({want[0]['score']:.4f})")
    diffs = [abs(float(scores[int(t["index"])]) - float(t["score"]))
             for t in want if 0 <= int(t["index"]) < scores.size]
    worst = max(diffs) if diffs else None
    if worst is not None and worst > tol:
        problems.append(f"scores moved by up to {worst:.4f} (tolerance {tol:.4g})")
    labels = getattr(fc.classifier, "labels", {}) or {}
    for t in want:
        have = labels.get(int(t["index"]))
        if have is not None and have != t["label"]:
            problems.append(f"label of class {t['index']} is {have!r}, the model was made "
                            f"with {t['label']!r} (labels swapped?)")
            break
    return CaseResult(name, not problems, tuple(problems), want_top1, got_top1, worst)


def _check_data(model_path: Path) -> tuple[list[str], str, str]:
    """(problems, digest status, digest message) of the file itself, before any loading.

    Raises:
        EdgekitError: not a model at all (text, image, empty, truncated, Keras).
    """
    from .integrity import check_digest, identify_model, refuse_non_model

    try:
        data = model_path.read_bytes()
    except OSError as e:
        raise EdgekitError(f"cannot read {model_path}: {e.strerror or e}") from None
    refuse_non_model(data, model_path)
    problems = _check_hash(model_path)  # before parsing: the clearest word on a changed file
    parsed = None if problems else identify_model(model_path, data)
    if parsed is None:
        return problems, "", ""
    digest = check_digest(parsed, data)
    return [digest.message] if digest.failed else [], digest.status, digest.message


def run_selftest(model_path: str | Path, classifier: Any = None, strict: bool = False,
                 **classifier_args: Any) -> SelftestReport:
    """Replays the golden cases stored in a model on this machine.

    Args:
        model_path: the ``.tflite`` file.
        classifier: an already loaded Classifier of that model (else one is made with
            ``classifier_args``: labels, threads, edgetpu, interpolation).
        strict: a model without golden cases fails instead of being skipped.

    Returns:
        The report; ``status`` "skip" when the model has no golden cases (unless strict).

    Raises:
        EdgekitError: the file is not a model (one line saying what it is), or the model
            cannot be loaded.
    """
    from .tflite import require_model_file

    model_path = require_model_file(model_path)
    problems, digest, digest_message = _check_data(model_path)
    checked = {"digest": digest, "digest_message": digest_message}
    if problems:  # a damaged file is not loaded: it could take the interpreter down with it
        return SelftestReport(str(model_path), "fail", tuple(problems), **checked)
    try:
        cases = read_cases(model_path)
    except EdgekitError as e:
        return SelftestReport(str(model_path), "fail", tuple(problems) + (str(e),), **checked)
    if cases is None:
        note = ("the model has no golden cases (not made by edgekit convert, or made before "
                "self-tests)")
        if strict:
            return SelftestReport(str(model_path), "fail", (note + "; --strict asks for "
                                                            "them",), note=note, **checked)
        return SelftestReport(str(model_path), "skip", note=note, **checked)
    if classifier is None:
        from .classify import Classifier

        classifier = Classifier(model_path, **classifier_args)
    fc = _frame_classifier(classifier)
    tol = max(float(cases.get("tolerance") or 0.0), score_tolerance(fc))
    results = tuple(check_case(fc, c, tol) for c in cases["cases"] if isinstance(c, dict))
    labels = getattr(fc.classifier, "labels", {}) or {}
    want_labels = cases.get("labels_sha256")
    if want_labels and labels and labels_digest(labels) != want_labels:
        problems.append(f"the labels in use ({len(labels)} classes) are not the ones the model "
                        "was made with (swapped or edited labels file?)")
    if not results:  # nothing decisive to compare: not a failure of this machine
        note = "the model's self-test entry holds no cases"
        status = "fail" if problems or strict else "skip"
        return SelftestReport(str(model_path), status, tuple(problems) + (
            (note + "; --strict asks for them",) if strict and not problems else ()),
            tolerance=tol, note=note, **checked)
    ok = not problems and all(r.ok for r in results)
    return SelftestReport(str(model_path), "pass" if ok else "fail", tuple(problems), results,
                          tol, **checked)
