"""The virtual Raspberry Pi for the VM tests: arm64 Debian with systemd under qemu.

``make test-vm`` (run.py) builds the disk image, the wheelhouse, the tiny model and the
wheel, then runs these tests with their locations in the environment:
EDGEKIT_VM_IMAGE (image.sh's folder) and EDGEKIT_VM_INPUTS (model/, video.avi,
wheelhouse/, the edgekit wheel). One VM boots per session (boot.sh, a free 127.0.0.1 port
forwarded to its sshd) and is powered off at the end; its disk is a throwaway overlay.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
USER = "pi"
HTTP_PORT = 8080
VIDEO = "/srv/edgekit/video.avi"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float, every: float = 1.0):
    """Calls ``check()`` until it returns something truthy; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (subprocess.TimeoutExpired, OSError, ValueError) as e:
            last = None
            why = e
        else:
            why = None
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {why or last!r})")


@dataclass
class VM:
    """One booted virtual Pi, reached as pi@127.0.0.1:port with this session's files."""

    image: Path
    port: int
    work: Path
    proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"{USER}@127.0.0.1"

    @property
    def key(self) -> Path:
        return self.image / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.work / "known_hosts"

    @property
    def console(self) -> Path:
        return self.work / "console.log"

    def ssh_options(self) -> list[str]:
        return ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o",
                "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5", "-o",
                "ServerAliveCountMax=3"]

    def ssh(self, command: str, timeout: float = 120, check: bool = True, tries: int = 3
            ) -> subprocess.CompletedProcess:
        """Runs a shell command on the VM as pi; retried when ssh itself fails (255: an
        emulated sshd on a loaded host sometimes drops a connection in the handshake)."""
        for _ in range(tries):
            p = subprocess.run(["ssh", "-i", str(self.key), "-p", str(self.port),
                                *self.ssh_options(), self.host, command],
                               capture_output=True, text=True, timeout=timeout)
            if p.returncode != 255:
                break
            time.sleep(2)
        if check and p.returncode != 0:
            raise AssertionError(f"on the VM: {command!r} exited {p.returncode}: "
                                 f"{p.stdout[-2000:]}{p.stderr[-2000:]}")
        return p

    def up(self) -> bool:
        try:
            return self.ssh("true", timeout=20, check=False, tries=1).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def healthz(self) -> dict:
        """The daemon's /healthz document (curl inside the VM); {} when it does not answer."""
        p = self.ssh(f"curl -s -m 5 http://127.0.0.1:{HTTP_PORT}/healthz", check=False,
                     timeout=30)
        try:
            return json.loads(p.stdout) if p.returncode == 0 else {}
        except ValueError:
            return {}

    def fresh(self, after: int = 0) -> dict:
        """/healthz once it is ok with more than ``after`` frames, else {}."""
        doc = self.healthz()
        return doc if doc.get("status") == "ok" and doc.get("frames_total", 0) > after else {}

    def show(self, *props: str) -> dict[str, str]:
        """``systemctl show edgekit`` properties."""
        out = self.ssh("systemctl show edgekit.service -p " + ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def current(self) -> str:
        """The release ~/edgekit/current points to ('' for none)."""
        p = self.ssh("readlink ~/edgekit/current || true")
        return Path(p.stdout.strip()).name

    def boot(self, timeout: float = 420) -> float:
        """Starts qemu and waits for sshd; returns the seconds it took."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen([str(HERE / "boot.sh"), str(self.image), str(self.port),
                                      str(self.console)], stdout=subprocess.DEVNULL,
                                     stderr=(self.work / "qemu.log").open("w"))
        wait_for("the VM's sshd", lambda: self.proc.poll() is None and self.up()
                 or self._exited(), timeout, every=2)
        return time.monotonic() - t0

    def _exited(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"qemu exited with {self.proc.returncode}: "
                        f"{(self.work / 'qemu.log').read_text()[-2000:]}")
        return False

    def reboot(self, timeout: float = 420) -> float:
        """Reboots the guest (qemu resets, same overlay); returns seconds until sshd is back."""
        t0 = time.monotonic()
        self.ssh("sudo systemctl reboot", check=False, timeout=30)
        wait_for("the VM going down", lambda: not self.up(), 120, every=1)
        wait_for("the VM's sshd after reboot", lambda: self.up() or self._exited(),
                 timeout, every=2)
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.ssh("sudo systemctl poweroff", check=False, timeout=30)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own qemu, by its process
            self.proc.wait(10)


@pytest.fixture(scope="session")
def inputs() -> Path:
    d = os.environ.get("EDGEKIT_VM_INPUTS")
    if not d or not os.environ.get("EDGEKIT_VM_IMAGE"):
        pytest.skip("run through `make test-vm` (device_tests/vm/run.py), which builds the "
                    "image and the inputs")
    return Path(d)


@pytest.fixture(scope="session")
def vm(inputs, tmp_path_factory):
    """The booted VM with the test video at /srv/edgekit/video.avi; powered off at the end."""
    image = Path(os.environ["EDGEKIT_VM_IMAGE"])
    work = tmp_path_factory.mktemp("vm")
    machine = VM(image, _free_port(), work)
    pub = (image / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    machine.known_hosts.write_text(f"[127.0.0.1]:{machine.port} {' '.join(pub)}\n")
    try:
        secs = machine.boot()
        print(f"\nMEASURE boot to sshd: {secs:.1f} s")
        subprocess.run(["scp", "-q", "-i", str(machine.key), "-P", str(machine.port),
                        *machine.ssh_options(), str(inputs / "video.avi"),
                        f"{machine.host}:/tmp/video.avi"], check=True, timeout=120)
        machine.ssh(f"sudo install -D -m 644 /tmp/video.avi {VIDEO}")
        yield machine
    finally:
        machine.stop()
        log = machine.console
        if log.is_file():  # kept beside the results for a failure's post-mortem
            (inputs / "console.log").write_bytes(log.read_bytes())


@pytest.fixture(scope="session")
def deploy(vm, inputs):
    """Runs the real ``make deploy`` (or ``make rollback``) against the VM."""

    def run(target: str, profile: Path | None = None, *extra: str, timeout: float = 900
            ) -> tuple[subprocess.CompletedProcess, float, list[str]]:
        ssh_args = f"-o UserKnownHostsFile={vm.known_hosts} -o StrictHostKeyChecking=yes " \
                   "-o IdentitiesOnly=yes -o BatchMode=yes"
        args = [f"--ssh-args={ssh_args}", *extra]
        if target == "deploy":
            args += ["--wheel", str(next(inputs.glob("edgekit_classify-*.whl")))]
        cmd = ["make", "-s", "--no-print-directory", target, f"HOST={vm.host}",
               f"PORT={vm.port}", f"SSH_KEY={vm.key}", "ARGS=" + shlex.join(args)]
        if target == "deploy":
            cmd += [f"CONFIG={profile}", f"MODEL={inputs / 'model' / 'model_int8.tflite'}",
                    f"WHEELHOUSE={(inputs / 'wheelhouse').resolve()}"]
        t0 = time.monotonic()
        # Not the outer make's variables (make test-vm ARGS=... would reach this make).
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS",
                                                                 "MAKELEVEL")}
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           env=env)
        secs = time.monotonic() - t0
        lines = p.stdout.splitlines()
        start = next((i for i, ln in enumerate(lines) if ln.startswith("host ")), None)
        row = lines[start + 1].split(None, 4)[1:] if start is not None and \
            len(lines) > start + 1 else []
        return p, secs, row

    return run
