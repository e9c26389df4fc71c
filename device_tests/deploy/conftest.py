"""Throwaway devices for the deploy tests: real OpenSSH servers on 127.0.0.1.

Each device is a local user ``edgekit-devN`` with its own home, reached through its own
``/usr/sbin/sshd -D -e`` on a free loopback port with a host key and an ed25519 client key
made for this session. Needs root (useradd, sshd); skips with the reason otherwise.
The edgekit wheel and a wheelhouse of its device dependencies are made once per session
(the wheelhouse cached under data/, keyed on the pinned versions), so devices install
from local wheels (WHEELHOUSE), as a device without internet would.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SSHD = Path("/usr/sbin/sshd")
CORAL_DIRS = (ROOT.parent / "shared" / "reference" / "coral", ROOT / "data" / "coral")
CORAL_MODEL = "mobilenet_v2_1.0_224_quant.tflite"
PHOTOS = ("cat.bmp", "parrot.jpg", "grace_hopper.bmp", "hot_dog.jpg")
USERS = ("edgekit-dev1", "edgekit-dev2", "edgekit-dev3")


@dataclass
class Device:
    """One SSH-reachable device."""

    user: str
    port: int
    home: Path
    proc: subprocess.Popen

    @property
    def host(self) -> str:
        return f"{self.user}@127.0.0.1"

    @property
    def ek(self) -> Path:
        return self.home / "edgekit"

    def current(self) -> str | None:
        """The release id ``current`` points to, or None."""
        try:
            return Path(os.readlink(self.ek / "current")).name
        except OSError:
            return None

    def releases(self) -> list[str]:
        d = self.ek / "releases"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def lock_free(self) -> bool:
        """True when no process holds ~/edgekit/.deploy.lock (read from /proc/locks: taking
        the lock to test it would make a deploy starting at that instant refuse)."""
        try:
            ino = (self.ek / ".deploy.lock").stat().st_ino
        except OSError:
            return True
        with open("/proc/locks") as f:
            return not any(ln.split()[1] == "FLOCK" and ln.split()[5].endswith(f":{ino}")
                           for ln in f if len(ln.split()) > 5)

    def reset(self) -> None:
        shutil.rmtree(self.ek, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "not root: the deploy tests add local users and run sshd"
    if not SSHD.is_file():
        return "no /usr/sbin/sshd (apt install openssh-server; make test-deploy does)"
    if shutil.which("useradd") is None:
        return "no useradd"
    return None


def coral_dir() -> Path | None:
    return next((d for d in CORAL_DIRS if (d / CORAL_MODEL).is_file()), None)


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Path:
    why = _why_not()
    if why:
        pytest.skip(why)
    d = tmp_path_factory.mktemp("ssh")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True, timeout=30)
    return d


def _add_user(user: str, pub: str) -> Path:
    try:
        home = Path(pwd.getpwnam(user).pw_dir)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", "-p", "*", user], check=True,
                       timeout=30)
        home = Path(pwd.getpwnam(user).pw_dir)
    subprocess.run(["usermod", "-p", "*", user], check=True, timeout=30)  # not locked
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(pub)
    pw = pwd.getpwnam(user)
    for p in (ssh, ssh / "authorized_keys"):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    (ssh / "authorized_keys").chmod(0o600)
    return home


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {port} within {timeout} s")


@pytest.fixture(scope="session")
def devices(keys, tmp_path_factory):
    """Three devices, each a user behind its own sshd; stopped at the end of the session."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    pub = (keys / "client.pub").read_text()
    hostpub = (keys / "host.pub").read_text().split()[:2]
    known = []
    devs = []
    try:
        for user in USERS:
            home = _add_user(user, pub)
            port = _free_port()
            conf = keys / f"sshd-{port}.conf"
            conf.write_text(
                f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
                f"PidFile {keys / f'sshd-{port}.pid'}\nAllowUsers {user}\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                "PermitRootLogin no\nStrictModes yes\nSubsystem sftp internal-sftp\n"
                "MaxStartups 50\nMaxSessions 50\nLogLevel ERROR\nPrintMotd no\n")
            proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(conf), "-p", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
            devs.append(Device(user, port, home, proc))
            _wait_port(port, proc)
            known.append(f"[127.0.0.1]:{port} {' '.join(hostpub)}\n")
        (keys / "known_hosts").write_text("".join(known))
        for d in devs:
            d.reset()
        yield devs
    finally:
        for d in devs:
            stop_sshd(d.proc)


def stop_sshd(proc: subprocess.Popen) -> None:
    """Ends a device's sshd: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="session")
def ssh_args(keys) -> list[str]:
    """The deploy CLI's SSH options: this session's key and known_hosts, strict checking."""
    return ["--ssh-key", str(keys / "client"), "--ssh-args",
            f"-o UserKnownHostsFile={keys / 'known_hosts'} -o StrictHostKeyChecking=yes "
            "-o IdentitiesOnly=yes -o BatchMode=yes"]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The edgekit wheel of this checkout, built once."""
    out = tmp_path_factory.mktemp("wheel")
    for _ in range(2):  # once more: a concurrent build in the same checkout's build/ folder
        p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "--disable-pip-version-check", str(ROOT), "-w", str(out)],
                           timeout=600, capture_output=True, text=True)
        if p.returncode == 0:
            return next(out.glob("edgekit_classify-*.whl"))
    raise RuntimeError(f"building the wheel failed: {p.stderr[-2000:]}")


@pytest.fixture(scope="session")
def wheelhouse(wheel) -> Path:
    """edgekit[device]'s dependencies at this venv's versions, cached under data/."""
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True,
                            text=True, check=True, timeout=120).stdout
    pins = "".join(line + "\n" for line in freeze.splitlines()
                   if "==" in line and not line.startswith("-e") and "@" not in line)
    key = hashlib.sha256(pins.encode()).hexdigest()[:12]
    house = ROOT / "data" / f"wheelhouse-{key}"
    if not (house / ".complete").is_file():
        shutil.rmtree(house, ignore_errors=True)
        house.mkdir(parents=True)
        (house.parent / f"constraints-{key}.txt").write_text(pins)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q",
                        "--disable-pip-version-check", "-d", str(house), "-c",
                        str(house.parent / f"constraints-{key}.txt"), f"{wheel}[device]"],
                       check=True, timeout=600, capture_output=True)
        for w in house.glob("edgekit_classify-*.whl"):
            w.unlink()  # the bundle carries this checkout's own wheel
        (house / ".complete").touch()
    return house


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Coral's MobileNetV2 (no golden cases: self-test skips), the same with golden cases
    and a manifest (passes), and a copy of that one with bytes flipped (fails)."""
    coral = coral_dir()
    if coral is None:
        pytest.skip("Coral reference data not found (run `make test-data`)")
    import json

    import cv2

    from edge_runtime import selftest as st
    from edge_runtime.classify import Classifier

    out = tmp_path_factory.mktemp("models")
    plain = out / "plain" / CORAL_MODEL
    plain.parent.mkdir()
    shutil.copyfile(coral / CORAL_MODEL, plain)
    shutil.copyfile(coral / "imagenet_labels.txt", plain.parent / "labels.txt")
    clf = Classifier(coral / CORAL_MODEL, labels=coral / "imagenet_labels.txt")
    cases = st.make_cases(clf, [(p, cv2.imread(str(coral / p))) for p in PHOTOS])
    golden = out / "golden" / "model.tflite"
    golden.parent.mkdir()
    golden.write_bytes(st.embed_cases((coral / CORAL_MODEL).read_bytes(), cases))
    norm = clf.normalization
    (golden.parent / "manifest.json").write_text(json.dumps(
        {"labels": (coral / "imagenet_labels.txt").read_text().splitlines(),
         "input_size": {"height": 224, "width": 224}, "interpolation": "area",
         "normalization": {"mean": norm.mean, "std": norm.std},
         "model_sha256": {"model.tflite": st.file_sha256(golden)}}))
    bad = out / "corrupt" / "model.tflite"
    bad.parent.mkdir()
    data = bytearray(golden.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4096] = bytes(b ^ 0xFF for b in data[mid:mid + 4096])  # weights flipped
    bad.write_bytes(bytes(data))
    shutil.copyfile(golden.parent / "manifest.json", bad.parent / "manifest.json")
    return {"plain": plain, "golden": golden, "corrupt": bad}
