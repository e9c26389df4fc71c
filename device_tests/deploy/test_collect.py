"""`python -m deploy collect` against real OpenSSH servers on 127.0.0.1 (see conftest.py).

Kept frames are planted in a device user's keep dir as the daemon lays them out
(``<keep>/<date>/<stamp>_f<frame>.jpg`` + sidecar); each test collects them with the CLI
and checks the home copies byte for byte. Each prints the time it measured (pytest -s).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DAY = "2026-12-02"


def plant(dev, frames: range, keep: str = "kept", side: int = 96) -> list[str]:
    """Writes kept pairs (noise JPEG + contract sidecar) into ~/KEEP/DAY as the device user
    owns them; returns their stems relative to the keep dir."""
    pw = pwd.getpwnam(dev.user)
    folder = dev.home / keep / DAY
    folder.mkdir(parents=True, exist_ok=True)
    stems = []
    for n in frames:
        stamp = f"20261202T1200{n // 1000 % 60:02d}.{n % 1000:03d}Z"
        stem = f"{stamp}_f{n:08d}"
        img = np.random.default_rng(n).integers(0, 255, (side, side, 3), dtype=np.uint8)
        ok, jpg = cv2.imencode(".jpg", img)
        assert ok
        (folder / f"{stem}.jpg").write_bytes(jpg.tobytes())
        top = [{"index": 1, "label": "circle", "score": 0.41}]
        (folder / f"{stem}.json").write_text(json.dumps({
            "time": "2026-12-02T12:00:00.000Z", "source_time_s": n / 10, "device": dev.user,
            "model": "model.tflite", "model_sha256": "ab" * 32, "top": top,
            "label": None, "raw": top[0], "reason": "low_confidence",
            "reasons": ["low_confidence"], "frame": n, "source": "video.avi",
            "width": side, "height": side, "drift": None}))
        stems.append(f"{DAY}/{stem}")
    for p in [dev.home / keep, folder, *folder.iterdir()]:
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return stems


@pytest.fixture
def kept(devices):
    """devices[0] with an empty ~/kept; removed afterwards."""
    dev = devices[0]
    shutil.rmtree(dev.home / "kept", ignore_errors=True)
    yield dev
    shutil.rmtree(dev.home / "kept", ignore_errors=True)


def collect(dev, out: Path, ssh_args, *extra: str, keep: str | None = "kept",
            timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    argv = [sys.executable, "-m", "deploy", "collect", "--host", dev.host, "--port",
            str(dev.port), *ssh_args, "--out", str(out), "--quiet", *extra]
    if keep:
        argv += ["--keep-dir", keep]
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return p, time.monotonic() - t0


def host_line(p: subprocess.CompletedProcess, host: str) -> str:
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(f"{host}: ")
             and ("frames copied" in ln or "unreachable" in ln or "host key" in ln
                  or "not collected:" in ln)]
    assert len(lines) == 1, p.stdout + p.stderr
    return lines[0]


def same(dev, out: Path, stems: list[str], keep: str = "kept") -> None:
    """Every pair is home, byte for byte."""
    for stem in stems:
        for ext in (".jpg", ".json"):
            home = out / dev.host / f"{stem}{ext}"
            assert home.read_bytes() == (dev.home / keep / f"{stem}{ext}").read_bytes(), home


def finals(out: Path) -> list[Path]:
    """Files under their final names (no temp name, not in a temp folder)."""
    return [p for p in out.rglob("*") if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(out).parts)]


def _say(what: str, secs: float) -> None:
    print(f"\nMEASURE {what}: {secs:.1f} s")


def test_collect_copies_complete_pairs_then_nothing(kept, ssh_args, tmp_path):
    dev = kept
    stems = plant(dev, range(8))
    day = dev.home / "kept" / DAY
    (day / "20261202T130000.000Z_f00009999.jpg").write_bytes(b"\xff\xd8 being written")
    (day / ".20261202T130000.000Z_f00009999.json.tmp").write_text("{}")
    out = tmp_path / "field"
    p, secs = collect(dev, out, ssh_args)
    assert p.returncode == 0, p.stdout + p.stderr
    line = host_line(p, dev.host)
    assert line.startswith(f"{dev.host}: 8 frames copied (") and \
        line.endswith(", 0 failed, 0 already here, removed 0"), line
    same(dev, out, stems)
    assert len(finals(out)) == 16  # no lone JPEG, no temp file
    assert not (out / ".collect-tmp").exists()
    assert not list((dev.ek / "outgoing").iterdir())  # the batch was removed from the device
    _say("collect of 8 pairs from 1 device", secs)
    p, secs = collect(dev, out, ssh_args)
    assert p.returncode == 0, p.stdout + p.stderr
    assert host_line(p, dev.host).endswith(
        ": 0 frames copied (0.0 MB), 0 failed, 8 already here, removed 0"), p.stdout
    assert len(finals(out)) == 16
    _say("second collect, nothing new", secs)


def _until(cond, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def _batch_mb(dev, stems: list[str], keep: str = "kept") -> str:
    """--batch-mb that packs exactly these pairs in one round (a batch is filled in name
    order while the next pair fits)."""
    size = sum(_size(dev.home / keep / f"{s}{ext}") for s in stems for ext in (".jpg", ".json"))
    return f"{(size + 1) / 1e6:.6f}"


def _size(path: Path) -> int:
    return path.stat().st_size


def _start(dev, out: Path, ssh_args, *extra: str, **kw) -> subprocess.Popen:
    argv = [sys.executable, "-m", "deploy", "collect", "--host", dev.host, "--port",
            str(dev.port), *ssh_args, "--out", str(out), "--quiet", "--keep-dir", "kept",
            *extra]
    return subprocess.Popen(argv, cwd=ROOT, **kw)


def test_killed_collect_resumes_without_half_files(kept, ssh_args, tmp_path):
    dev = kept
    stems = plant(dev, range(6), side=160)
    out = tmp_path / "field"
    proc = _start(dev, out, ssh_args, "--batch-mb", _batch_mb(dev, stems[:2]),
                  start_new_session=True, stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)  # 3 rounds of 2 pairs
    _until(lambda: any(p.suffix == ".json" for p in finals(out)))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    home = finals(out)
    assert 2 <= len(home) < 12, len(home)
    for f in home:  # whatever has its final name is whole
        rel = f.relative_to(out / dev.host)
        assert f.read_bytes() == (dev.home / "kept" / rel).read_bytes(), rel
    # A partial download left under a temp name, as a kill mid-write would.
    part = out / dev.host / DAY / f".{Path(stems[-1]).name}.jpg.0a1b2c.part"
    part.write_bytes(b"\xff\xd8 half")
    p, secs = collect(dev, out, ssh_args)
    assert p.returncode == 0, p.stdout + p.stderr
    line = host_line(p, dev.host)
    copied = int(line.split(": ")[1].split()[0])
    already = int(line.split(", ")[2].split()[0])
    assert copied + already == 6 and already >= 1 and copied >= 1, line
    same(dev, out, stems)
    assert not part.exists() and not (out / ".collect-tmp").exists()
    print(f"\nkilled after {len(home)} files home; the rerun copied {copied}")
    _say(f"resumed collect of {copied} pairs", secs)


def test_truncated_and_deleted_frames_are_named_the_others_come_home(kept, ssh_args,
                                                                     tmp_path):
    dev = kept
    stems = plant(dev, range(6), side=160)
    keep = dev.home / "kept"
    bad = keep / f"{stems[1]}.jpg"  # truncated before the collect: not a whole JPEG
    bad.write_bytes(bad.read_bytes()[:500])
    out = tmp_path / "field"
    proc = _start(dev, out, ssh_args, "--batch-mb", _batch_mb(dev, stems[:3]),
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # 2 rounds
    _until(lambda: any(p.suffix == ".json" for p in finals(out)))
    # Mid-collect (listed, not yet packed): one deleted, one truncated.
    (keep / f"{stems[-1]}.jpg").unlink()
    late = keep / f"{stems[-2]}.jpg"
    late.write_bytes(late.read_bytes()[:700])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stdout + stderr
    p = subprocess.CompletedProcess(proc.args, 1, stdout, stderr)
    assert host_line(p, dev.host).startswith(f"{dev.host}: 3 frames copied ("), stdout
    assert ", 3 failed, 0 already here" in host_line(p, dev.host)
    assert f"{dev.host}: {stems[1]}.jpg: not a whole JPEG (truncated or damaged on the " \
           "device), not collected" in stdout
    assert f"{dev.host}: {stems[-1]}.jpg: deleted on the device after listing, not " \
           "collected" in stdout
    assert f"{dev.host}: {stems[-2]}.jpg: truncated on the device after listing (700 " \
           "bytes, listed" in stdout
    assert "Traceback" not in stderr
    same(dev, out, [stems[0], stems[2], stems[3]])
    assert len(finals(out)) == 6


def test_remove_deletes_only_pairs_verified_at_home(kept, ssh_args, tmp_path):
    dev = kept
    stems = plant(dev, range(6))
    out = tmp_path / "field"
    p, _ = collect(dev, out, ssh_args)
    assert p.returncode == 0, p.stdout + p.stderr
    new = plant(dev, range(6, 9))  # kept after the first collect: copied, then removed
    device = {f: f.read_bytes() for f in (dev.home / "kept").rglob("*") if f.is_file()}
    home = out / dev.host / f"{stems[1]}.jpg"  # a home copy damaged since (same size)
    data = bytearray(home.read_bytes())
    data[len(data) // 2] ^= 0xFF
    home.write_bytes(bytes(data))
    p, secs = collect(dev, out, ssh_args, "--remove")
    assert p.returncode == 1, p.stdout + p.stderr
    assert host_line(p, dev.host).endswith(
        ": 3 frames copied (" + host_line(p, dev.host).split(" (")[1].split(")")[0]
        + "), 1 failed, 6 already here, removed 8"), p.stdout
    assert f"{dev.host}: {stems[1]}.jpg: differs on the device from the copy verified at " \
           "home, not removed" in p.stdout
    left = sorted(f.relative_to(dev.home / "kept").as_posix()
                  for f in (dev.home / "kept").rglob("*") if f.is_file())
    assert left == [f"{stems[1]}.jpg", f"{stems[1]}.json"]
    for f, data in device.items():  # every pair removed is home, byte for byte
        rel = f.relative_to(dev.home / "kept").as_posix()
        if not rel.startswith(stems[1]):
            assert (out / dev.host / rel).read_bytes() == data, rel
    assert len(device) == 2 * len(stems + new)
    _say("collect of 3 pairs with --remove of 8", secs)


def test_unreachable_host_and_unknown_host_key(kept, devices, ssh_args, keys, tmp_path):
    dev = kept
    stems = plant(dev, range(2))
    closed = devices[1].port
    while closed in {d.port for d in devices}:
        closed += 1
    inv = tmp_path / "hosts.ini"
    inv.write_text("[edgekit]\n"
                   f"{dev.user} ansible_host=127.0.0.1 ansible_port={dev.port} "
                   f"ansible_user={dev.user}\n"
                   f"gone ansible_host=127.0.0.1 ansible_port={closed} ansible_user=nobody\n")
    out = tmp_path / "field"
    argv = [sys.executable, "-m", "deploy", "collect", "--inventory", str(inv), *ssh_args,
            "--out", str(out), "--quiet", "--keep-dir", "kept"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"gone: unreachable: connection refused at 127.0.0.1:{closed}" in p.stdout
    assert f"{dev.user}: 2 frames copied (" in p.stdout
    for stem in stems:
        assert (out / dev.user / f"{stem}.json").is_file()
    # First contact: the host key is in no known_hosts file.
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    strict = ["--ssh-key", str(keys / "client"), "--ssh-args",
              f"-o UserKnownHostsFile={empty} -o IdentitiesOnly=yes -o BatchMode=yes"]
    p, _ = collect(dev, tmp_path / "f2", strict)
    assert p.returncode == 1
    assert p.stdout.strip() == (
        f"{dev.host}: host key of 127.0.0.1:{dev.port} not known: add it with ssh-keyscan "
        f"-p {dev.port} 127.0.0.1 >> {empty} (or connect once with ssh), or accept it on "
        "first contact with --accept-new-host-key (make: ACCEPT_NEW_HOST_KEY=1)"), p.stdout
    assert not (tmp_path / "f2" / dev.host).exists()
    # deploy names it the same way (rollback: no wheel needed)
    r = subprocess.run([sys.executable, "-m", "deploy", "rollback", "--host", dev.host,
                        "--port", str(dev.port), *strict, "--quiet"], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 1
    assert f"not-run  -        -  host key of 127.0.0.1:{dev.port} not known" in r.stdout, \
        r.stdout
    p, _ = collect(dev, tmp_path / "f2", strict, "--accept-new-host-key")
    assert p.returncode == 0, p.stdout + p.stderr
    found = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{dev.port}", "-f", str(empty)],
                           capture_output=True, text=True, timeout=30)
    assert found.returncode == 0 and "ssh-ed25519" in found.stdout, empty.read_text()
    same(dev, tmp_path / "f2", stems)


def test_keep_dir_comes_from_the_active_release(devices, ssh_args, tmp_path):
    """keep.dir of ~/edgekit/current/profile.yaml, read by the device's edgekit."""
    dev = devices[1]
    dev.reset()
    out = tmp_path / "field"
    p, _ = collect(dev, out, ssh_args, keep=None)
    assert p.returncode == 1
    assert host_line(p, dev.host) == (
        f"{dev.host}: not collected: nothing deployed on this device (no "
        "~/edgekit/current/profile.yaml); pass --keep-dir")
    pw = pwd.getpwnam(dev.user)
    rel = dev.ek / "releases" / "r1"
    rel.mkdir(parents=True)
    (rel / "profile.yaml").write_text(
        f"name: t\nmodel:\n  path: model/m.tflite\nkeep:\n  dir: {dev.home}/field-keep\n")
    os.symlink("releases/r1", dev.ek / "current")
    # The release's venv: the system Python with this checkout's edge_runtime (this venv's
    # own interpreter may sit under a home the device user cannot read).
    py = dev.ek / "venvs" / "k" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec /usr/bin/python3 "$@"\n')
    py.chmod(0o755)
    os.symlink("venvs/k", dev.ek / "venv")
    for d in (dev.ek, dev.ek / "releases", rel):
        os.chown(d, pw.pw_uid, pw.pw_gid)
    try:
        stems = plant(dev, range(3), keep="field-keep")
        p, secs = collect(dev, out, ssh_args, keep=None)
        assert p.returncode == 0, p.stdout + p.stderr
        assert host_line(p, dev.host).startswith(f"{dev.host}: 3 frames copied ("), p.stdout
        same(dev, out, stems, keep="field-keep")
        _say("collect with the keep dir read from the release's profile", secs)
    finally:
        dev.reset()
        shutil.rmtree(dev.home / "field-keep", ignore_errors=True)


def test_unreachable_causes_are_named_with_the_fix():
    """ssh's messages as ansible reports them, without a device."""
    from deploy.core import describe_unreachable

    changed = ("Failed to connect to the host via ssh: @@@@ WARNING: REMOTE HOST "
               "IDENTIFICATION HAS CHANGED! @@@@\r\nHost key verification failed.")
    assert describe_unreachable(changed, "10.0.0.7", 2222) == (
        "host key of 10.0.0.7:2222 changed (the device was reinstalled, or someone is in "
        "between): if expected, ssh-keygen -R '[10.0.0.7]:2222' -f ~/.ssh/known_hosts, then "
        "add the new key")
    unknown = "Failed to connect to the host via ssh: Host key verification failed."
    assert describe_unreachable(unknown, "pi.local", None,
                                "-o UserKnownHostsFile=/tmp/kh -o BatchMode=yes") == (
        "host key of pi.local:22 not known: add it with ssh-keyscan -p 22 pi.local >> "
        "/tmp/kh (or connect once with ssh), or accept it on first contact with "
        "--accept-new-host-key (make: ACCEPT_NEW_HOST_KEY=1)")
    assert describe_unreachable("ssh: connect to host 10.0.0.7 port 22: Connection refused",
                                "10.0.0.7", "22") == (
        "unreachable: connection refused at 10.0.0.7:22 (no sshd there, or another port)")
    assert describe_unreachable("pi@10.0.0.7: Permission denied (publickey).", "10.0.0.7",
                                22).startswith("unreachable: SSH login to 10.0.0.7:22 refused")
