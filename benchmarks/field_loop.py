"""Helpers of the field demo (:mod:`benchmarks.field_demo`): a loopback SSH server to
collect from, labels from the generator's truth, folders of held-out images, and drift
replayed from the daemon's JSON lines. numpy/stdlib and edge_runtime only (no train)."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edge_runtime.errors import EdgekitError
from edge_runtime.fileio import write_text

SSHD = Path("/usr/sbin/sshd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackSSH:
    """An OpenSSH server on 127.0.0.1 as the current user, with keys made for it: the
    "device" that ``deploy collect`` reaches, as in device_tests/deploy.

    ``with LoopbackSSH(folder) as ssh:`` gives ``host``, ``port``, ``key`` and
    ``ssh_args``; the server is stopped on exit.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()  # sshd re-executes itself: relative paths break
        self.user = getpass.getuser()
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def why_not() -> str | None:
        """Why no loopback sshd can run here, or None."""
        if not SSHD.is_file():
            return f"no {SSHD} (apt install openssh-server)"
        if shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
            return "no ssh or ssh-keygen on PATH"
        return None

    @property
    def host(self) -> str:
        return f"{self.user}@127.0.0.1"

    @property
    def key(self) -> Path:
        return self.folder / "client"

    @property
    def ssh_args(self) -> str:
        return (f"-o UserKnownHostsFile={self.folder / 'known_hosts'} "
                "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes")

    def inventory(self, name: str = "field-device") -> Path:
        """A one-host Ansible inventory for this server. It names the device's Python:
        interpreter discovery over a login shell can pick a version manager's shim (pyenv)
        that does not run there."""
        python = "/usr/bin/python3" if Path("/usr/bin/python3").is_file() else "auto_silent"
        path = self.folder / "hosts.ini"
        path.write_text(f"[edgekit]\n{name} ansible_host=127.0.0.1 ansible_port={self.port} "
                        f"ansible_user={self.user} ansible_python_interpreter={python}\n")
        return path

    def __enter__(self) -> LoopbackSSH:
        d = self.folder
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, mode=0o700)
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                           check=True, timeout=30, capture_output=True)
        shutil.copy(d / "client.pub", d / "authorized_keys")
        self.port = _free_port()
        root = "prohibit-password" if os.geteuid() == 0 else "no"
        conf = d / "sshd_config"
        # StrictModes off: the key files live under the demo's output folder, whose
        # parents this throwaway server has no business judging.
        conf.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
            f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
            f"AllowUsers {self.user}\nPermitRootLogin {root}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "Subsystem sftp internal-sftp\nMaxStartups 50\nMaxSessions 50\nLogLevel ERROR\n")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self._wait()
        hostpub = (d / "host.pub").read_text().split()[:2]
        (d / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {' '.join(hostpub)}\n")
        return self

    def _wait(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EdgekitError(f"sshd exited with {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().strip()[:300]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise EdgekitError(f"sshd did not listen on 127.0.0.1:{self.port} within {timeout} s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def kept_pairs(folder: Path) -> list[Path]:
    """Complete kept frames under ``folder`` (a JPEG with its sidecar; no temp files)."""
    return sorted(p for p in folder.rglob("*.jpg")
                  if not p.name.startswith(".") and p.with_suffix(".json").is_file())


def copy_pairs(keep: Path, out: Path) -> int:
    """Copies kept pairs from ``keep`` to ``out/local/`` (the demo's stand-in for collect
    where no sshd can run); returns how many."""
    pairs = kept_pairs(keep)
    for jpg in pairs:
        for src in (jpg, jpg.with_suffix(".json")):
            dest = out / "local" / src.relative_to(keep)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    return len(pairs)


def truth_labels(field: Path, video_labels: Path, out_csv: Path) -> dict[str, int]:
    """Writes ``labels.csv`` (``path,label``, paths relative to ``field``) for every
    collected frame from the generator's truth: line ``frame`` of ``video_labels``
    (the sidecar's ``frame``, counted from 0, wrapping when the video looped).

    Returns:
        frames per label.
    """
    truth = video_labels.read_text(encoding="utf-8").split()
    if not truth:
        raise EdgekitError(f"no labels in {video_labels}")
    rows, counts = ["path,label"], {}
    for jpg in kept_pairs(field):
        try:
            frame = int(json.loads(jpg.with_suffix(".json").read_text())["frame"])
        except (OSError, ValueError, KeyError, TypeError):
            raise EdgekitError(f"{jpg.with_suffix('.json')}: no frame number") from None
        label = truth[frame % len(truth)]
        rows.append(f"{jpg.relative_to(field).as_posix()},{label}")
        counts[label] = counts.get(label, 0) + 1
    write_text(out_csv, "\n".join(rows) + "\n")
    return counts


def materialize(root: Path, items: list, classes: list[str], out: Path) -> int:
    """Copies ``items`` ((path relative to ``root``, class index)) into ``out/<class>/``
    with their sidecars, for ``benchmarks compare --data``; returns the count."""
    shutil.rmtree(out, ignore_errors=True)
    for rel, ci in items:
        src = root / rel
        dest = out / classes[int(ci)] / Path(rel).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        if src.with_suffix(".json").is_file():
            shutil.copy2(src.with_suffix(".json"), dest.with_suffix(".json"))
    return len(items)


def video_inputs(model: Path, video: Path) -> list:
    """Every frame of ``video`` as ``model``'s input (the runtime's own preprocessing:
    :func:`edge_runtime.preprocess.fit_frame` with the size, crop, interpolation and colour
    order its manifest says), for the input component of a replay."""
    import cv2

    from edge_runtime.manifest import Manifest
    from edge_runtime.metadata import read_embedded_manifest
    from edge_runtime.preprocess import fit_frame

    embedded = read_embedded_manifest(model)
    if embedded is None:
        raise EdgekitError(f"{model}: no embedded manifest (input size unknown)")
    m = Manifest.from_dict(embedded, str(model))
    cap = cv2.VideoCapture(str(video))
    frames = []
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(fit_frame(bgr, m.input_size, m.resize, rgb=m.color_order != "BGR",
                                    interpolation=m.interpolation))
    finally:
        cap.release()
    if not frames:
        raise EdgekitError(f"no frames read from {video}")
    return frames


def model_answers(model: Path, inputs: list) -> list[dict]:
    """The model's raw top-1 on each prepared input, as the daemon's JSON lines carry it
    (``{"frame", "raw": {"index", "score"}}``), for a replay without a daemon run."""
    import numpy as np

    from edge_runtime.classify import Classifier
    from edge_runtime.infer import FrameClassifier

    frames = FrameClassifier(Classifier(model))
    out = []
    for i, img in enumerate(inputs):
        scores = frames.scores(img, prepared=img)
        top = int(np.argmax(scores))
        out.append({"frame": i, "raw": {"index": top, "score": float(scores[top])}})
    return out


def drift_replay(model: Path, jsonl: Path | None, window: int = 300,
                 video: Path | None = None, frames: int | None = None) -> dict | None:
    """The daemon's drift over a run, replayed from its JSON lines: each frame's raw
    top-1 into a :class:`edge_runtime.drift.DriftMonitor` from the model's own baseline
    (what the daemon's monitor computed, frame by frame; its default window). With the
    ``video`` the daemon read, each line's frame (its ``frame`` number, modulo the video's
    length for a looped run) also feeds the input component, as in the daemon. Without
    JSON lines (``jsonl`` None) the model itself runs on the video's frames, looped to
    ``frames`` (default: the video once).

    Returns:
        ``{"frames", "max", "final", "first_alert_frame", "max_components"}`` (the
        largest value each component reached), or None when the model carries no drift
        baseline.
    """
    from edge_runtime.drift import DriftMonitor
    from edge_runtime.metadata import read_embedded_manifest

    manifest = read_embedded_manifest(model)
    mon = DriftMonitor.from_manifest(manifest or {}, window=window, model=model.name)
    if mon is None:
        return None
    inputs = None if video is None else video_inputs(model, video)
    if jsonl is not None:
        lines = [json.loads(s) for s in jsonl.read_text(encoding="utf-8").splitlines()
                 if s.strip()]
    elif inputs is not None:
        once = model_answers(model, inputs)
        lines = [{**once[i % len(once)], "frame": i} for i in range(frames or len(once))]
    else:
        raise EdgekitError("drift replay: give the daemon's JSON lines or the video")
    frames, peak, first, state, parts = 0, 0.0, None, None, {}
    for d in lines:
        try:
            raw = d["raw"]
            image = None if inputs is None else inputs[int(d["frame"]) % len(inputs)]
            mon.update(int(raw["index"]), float(raw["score"]), image)
        except (ValueError, KeyError, TypeError):
            continue  # a status line or a frame without a raw answer
        frames += 1
        state = mon.snapshot()
        peak = max(peak, state.value)
        for k, v in state.components().items():
            parts[k] = max(parts.get(k, 0.0), v)
        if state.alert and first is None:
            first = frames
    return {"frames": frames, "max": round(peak, 3),
            "final": None if state is None else round(state.value, 3),
            "first_alert_frame": first,
            "max_components": {k: round(v, 3) for k, v in parts.items()}}
