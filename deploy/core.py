"""Deploy a model to a device or a fleet over SSH, with self-test and rollback.

The desktop side: checks the model and profile, builds the edgekit wheel from this checkout,
packs a release bundle, and runs ``deploy/playbook.yml`` with ``ansible-playbook`` (a
generated one-host inventory for ``--host``, the user's for ``--inventory``). The playbook
uploads the bundle and runs ``deploy/remote.sh`` on each host, which holds all per-device
logic (lock, venv, release, self-test, atomic switch, service, health, rollback).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgekitError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PLAYBOOK = HERE / "playbook.yml"
REMOTE_SCRIPT = HERE / "remote.sh"
CURRENT = "@EDGEKIT_CURRENT@"  # remote.sh replaces it with ~/edgekit/current
_HOST = re.compile(r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9.:_-]+|\[[0-9a-fA-F:]+\])$")
OK_RESULTS = ("deployed", "unchanged", "rolled-back", "status")


@dataclass(frozen=True)
class Target:
    """Where to deploy: one ``user@host`` or an Ansible inventory file."""

    host: str | None = None
    inventory: Path | None = None
    port: int | None = None
    ssh_key: Path | None = None
    ssh_args: str = ""
    accept_new_host_key: bool = False  # ssh's StrictHostKeyChecking=accept-new


@dataclass(frozen=True)
class HostResult:
    """What ``remote.sh`` reported for one host (``result`` "not-run" when it did not run)."""

    host: str
    result: str
    release: str = ""
    previous: str = ""
    seconds: float | None = None
    reason: str = ""
    service: str = ""

    @property
    def ok(self) -> bool:
        """True for deployed, unchanged, rolled back."""
        return self.result in OK_RESULTS


def parse_host(text: str) -> tuple[str | None, str]:
    """``[user@]host`` -> (user or None, host).

    Raises:
        EdgekitError: not a user@host string.
    """
    m = _HOST.match(text or "")
    if not m:
        raise EdgekitError(f"host {text[:80]!r}, expected [USER@]HOST")
    return m.group("user"), m.group("host").strip("[]")


def check_model(path: Path) -> None:
    """Refuses a missing file or one that is not a TFLite model, before anything is shipped."""
    if not path.is_file():
        raise EdgekitError(f"model not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".zip" and head[:4] == b"PK\x03\x04":  # convert's IMX500 package
        return  # (export/imx500/packerOut.zip): remote.sh makes network.rpk on the Pi
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise EdgekitError(f"not a TFLite model (no TFL3 identifier): {path}")


def wheel_key(wheel: Path) -> str:
    """A hash of a wheel's contents (names and bytes, not zip timestamps): the device's
    venv is rebuilt only when this changes."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z:
            for name in sorted(z.namelist()):
                h.update(name.encode() + b"\0" + z.read(name) + b"\0")
    except (zipfile.BadZipFile, OSError) as e:
        raise EdgekitError(f"not a wheel: {wheel} ({e})") from None
    return h.hexdigest()[:16]


def build_wheel(out: Path) -> Path:
    """``pip wheel --no-deps`` of this checkout into ``out``; returns the wheel.

    Raises:
        EdgekitError: the build failed (its last lines are quoted).
    """
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
           "--disable-pip-version-check", str(ROOT), "-w", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheels = sorted(out.glob("edgekit_classify-*.whl"))  # the distribution name, normalised
    if p.returncode != 0 or not wheels:
        tail = " ".join((p.stderr or p.stdout).strip().splitlines()[-2:])
        raise EdgekitError(f"building the edgekit wheel failed: {tail[:300]}")
    return wheels[-1]


def _release_profile(profile: Path, model: Path) -> tuple[str, list[tuple[Path, str]]]:
    """The profile as deployed (model paths under ~/edgekit/current/model) and the extra
    model files it needs (the CPU fallback), as (local path, name in model/)."""
    import yaml

    from edge_runtime.config import load_config

    load_config(profile, environ={}, flags={"model": {"path": str(model)}})  # refuses a bad one
    data = yaml.safe_load(profile.read_text(encoding="utf-8")) or {}
    section = dict(data.get("model") or {})
    # An IMX500 package becomes network.rpk on the device (imx500-package, in remote.sh).
    section["path"] = f"{CURRENT}/model/" + ("network.rpk" if model.suffix == ".zip"
                                              else model.name)
    extra = []
    if section.get("fallback"):
        fb = Path(section["fallback"])
        if not fb.is_file():
            raise EdgekitError(f"model.fallback {fb} not found (paths are relative to the "
                               f"working directory) [{profile}]")
        section["fallback"] = f"{CURRENT}/model/fallback-{fb.name}"
        extra.append((fb, f"fallback-{fb.name}"))
    data["model"] = section
    text = (f"# deployed by edgekit from {profile.name}; model paths point into the release\n"
            + yaml.safe_dump(data, sort_keys=False))
    return text, extra


def _needs_system_site(profile: Path) -> bool:
    """True when the profile's camera is read through picamera2 (source picamera2[:N] or
    imx500), which Raspberry Pi OS ships only as an apt package."""
    import yaml

    data = yaml.safe_load(profile.read_text(encoding="utf-8")) or {}
    source = str((data.get("camera") or {}).get("source", "")).strip().lower()
    return source == "imx500" or source.startswith("imx500:") or source.startswith("picamera2")


def make_bundle(out: Path, model: Path, profile: Path, wheel: Path,
                release_id: str | None = None, heldout: Path | None = None) -> dict[str, str]:
    """Writes the upload bundle to ``out``: ``release/`` (model with its manifest and labels,
    profile.yaml, the held-out images (deploy/heldout.py), bundle.sha256), the wheel,
    bundle.env. Returns bundle.env's values."""
    from . import heldout as held

    check_model(model)
    if not profile.is_file():
        raise EdgekitError(f"profile not found: {profile}")
    text, extra = _release_profile(profile, model)
    rel = out / "release"
    (rel / "model").mkdir(parents=True)
    files = [(model, model.name)] + extra
    for name in ("manifest.json", "labels.txt"):
        if (model.parent / name).is_file():
            files.append((model.parent / name, name))
    h = hashlib.sha256()
    for src, name in files:
        shutil.copyfile(src, rel / "model" / name)
        h.update(name.encode() + b"\0" + (rel / "model" / name).read_bytes())
    for path, name in held.write(rel, model, heldout):  # a new set is a new release
        h.update(name.encode() + b"\0" + path.read_bytes())
    (rel / "profile.yaml").write_text(text, encoding="utf-8")
    (rel / "profile.source.yaml").write_bytes(profile.read_bytes())
    vkey = wheel_key(wheel)
    h.update(text.encode() + vkey.encode())
    digest = h.hexdigest()
    (rel / "bundle.sha256").write_text(digest + "\n")
    shutil.copyfile(wheel, out / wheel.name)
    rid = release_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + digest[:8]
    env = {"RELEASE_ID": rid, "BUNDLE_SHA256": digest, "VENV_KEY": vkey,
           "WHEEL": wheel.name, "MODEL_NAME": model.name}
    if _needs_system_site(profile):
        env["SYSTEM_SITE"] = "1"  # picamera2 comes from apt: remote.sh's venv must see it
    (out / "bundle.env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
    (rel / "release.json").write_text(json.dumps(
        {**env, "model_source": str(model.resolve()), "profile_source": str(profile.resolve()),
         "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n")
    return env


def _inventory(target: Target, work: Path) -> Path:
    if target.inventory is not None:
        if not target.inventory.is_file():
            raise EdgekitError(f"inventory not found: {target.inventory}")
        return target.inventory
    user, host = parse_host(target.host or "")
    line = [target.host, f"ansible_host={host}"]
    if user:
        line.append(f"ansible_user={user}")
    if target.port:
        line.append(f"ansible_port={target.port}")
    path = work / "hosts.ini"
    path.write_text("[edgekit]\n" + " ".join(line) + "\n")
    return path


def ansible_playbook() -> str:
    """The ansible-playbook beside this Python (the venv), else on PATH."""
    here = Path(sys.executable).parent / "ansible-playbook"
    found = str(here) if here.is_file() else shutil.which("ansible-playbook")
    if not found:
        raise EdgekitError("ansible-playbook not found: pip install -e '.[deploy]' "
                           "(or make deploy, which installs it)")
    return found


def ansible_env(target: Target, home: Path) -> dict[str, str]:
    """The environment ansible-playbook runs with: its state under ``home`` (nothing in the
    user's ~/.ansible), SSH connections reused, no colours."""
    ssh = "-o ControlMaster=auto -o ControlPersist=10s"
    if target.accept_new_host_key:
        # In ANSIBLE_SSH_ARGS, which comes first on ssh's command line: ssh takes the first
        # value of an option, so this wins over a StrictHostKeyChecking in --ssh-args.
        ssh = "-o StrictHostKeyChecking=accept-new " + ssh
    return {**os.environ, "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"), "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PYTHON_INTERPRETER": "auto_silent", "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "ANSIBLE_SSH_ARGS": ssh}


def ansible(target: Target, playbook: Path, work: Path, variables: dict[str, Any],
            forks: int = 10, log=None, timeout_s: float = 3600,
            env: dict[str, str] | None = None) -> int:
    """Runs ``playbook`` on ``target``'s hosts with ``variables`` (passed as a file) and
    ``env`` added to its environment; returns ansible-playbook's exit status."""
    if target.ssh_key is not None and not target.ssh_key.is_file():
        raise EdgekitError(f"SSH key not found: {target.ssh_key}")
    inventory = _inventory(target, work)
    extra = work / f"vars-{uuid.uuid4().hex[:8]}.json"
    extra.write_text(json.dumps(variables))
    cmd = [ansible_playbook(), "-i", str(inventory), str(playbook), "-e", f"@{extra}",
           "--forks", str(forks)]
    if target.ssh_key is not None:
        cmd += ["--private-key", str(target.ssh_key)]
    if target.ssh_args:
        cmd += ["--ssh-common-args", target.ssh_args]
    p = subprocess.run(cmd, env={**ansible_env(target, work / "ansible"), **(env or {})},
                       stdout=log,
                       stderr=subprocess.STDOUT if log else None, timeout=timeout_s)
    return p.returncode


def known_hosts_file(ssh_args: str) -> str:
    """The known_hosts file ssh uses with these options (for the fix we print)."""
    m = re.search(r"UserKnownHostsFile[= ]\s*(\S+)", ssh_args or "")
    return m.group(1) if m else "~/.ssh/known_hosts"


def describe_unreachable(msg: str, addr: str, port: int | str | None,
                         ssh_args: str = "") -> str:
    """One line naming why SSH could not reach a host, with the fix where there is one."""
    port = int(port or 22)
    text = " ".join((msg or "").split())
    where = f"{addr}:{port}"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "Host key for" in text \
            and "has changed" in text:
        return (f"host key of {where} changed (the device was reinstalled, or someone is in "
                f"between): if expected, ssh-keygen -R '[{addr}]:{port}' -f "
                f"{known_hosts_file(ssh_args)}, then add the new key")
    if "Host key verification failed" in text or "host key is known" in text:
        return (f"host key of {where} not known: add it with ssh-keyscan -p {port} {addr} "
                f">> {known_hosts_file(ssh_args)} (or connect once with ssh), or accept it "
                "on first contact with --accept-new-host-key (make: ACCEPT_NEW_HOST_KEY=1)")
    if "Connection refused" in text:
        return f"unreachable: connection refused at {where} (no sshd there, or another port)"
    if "Permission denied" in text:
        return (f"unreachable: SSH login to {where} refused (Permission denied): check the "
                "user and --ssh-key")
    if "Could not resolve hostname" in text:
        return f"unreachable: cannot resolve the host name {addr}"
    if "timed out" in text or "No route to host" in text:
        return f"unreachable: {where} did not answer (timed out or no route)"
    cut = text.replace("Failed to connect to the host via ssh: ", "")
    return f"unreachable: {cut[:200] or 'ssh failed'}"


def run_playbook(target: Target, action: str, work: Path, extra: dict[str, Any],
                 serial: str = "100%", max_fail_percent: int = 0, forks: int = 10,
                 log=None, timeout_s: float = 3600) -> list[HostResult]:
    """Runs deploy/playbook.yml; returns one result per host that reported."""
    summary = work / "summary"
    summary.mkdir(exist_ok=True)
    variables = {"edgekit_action": action, "edgekit_summary_dir": str(summary),
                 "edgekit_serial": serial, "edgekit_max_fail_percent": max_fail_percent,
                 "edgekit_remote_script": str(REMOTE_SCRIPT), **extra}
    rc = ansible(target, PLAYBOOK, work, variables, forks, log, timeout_s)
    results = []
    for f in sorted(summary.glob("*.json")):
        try:
            doc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        reason = doc.get("reason") or ""
        if doc.get("unreachable"):
            reason = describe_unreachable(doc["unreachable"], str(doc.get("addr") or ""),
                                          doc.get("port"), target.ssh_args)
        results.append(HostResult(doc.get("host", f.stem), str(doc.get("result", "failed")),
                                  doc.get("release") or "", doc.get("previous") or "",
                                  doc.get("seconds"), reason, doc.get("service") or ""))
    if rc not in (0, 2, 4) and not results:
        raise EdgekitError(f"ansible-playbook failed (status {rc}) before any host "
                           "ran the deploy step; see its output above")
    return results


def inventory_hosts(target: Target, work: Path) -> set[str]:
    """The host names an INI inventory lists (or the one ``--host``)."""
    listed = set()
    for line in _inventory(target, work).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("[", "#", ";")) and "=" not in line.split()[0]:
            listed.add(line.split()[0])
    return listed


def _hosts_missing(results: list[HostResult], target: Target, work: Path) -> list[HostResult]:
    """Hosts in the inventory that left no summary: unreachable or failed before remote.sh."""
    listed = inventory_hosts(target, work)
    seen = {r.host for r in results}
    return [HostResult(h, "not-run", reason="the deploy step did not run there: unreachable, "
                       "the upload failed, or the rolling update stopped at "
                       "max_fail_percentage (see ansible's output)") for h in sorted(listed - seen)]


def _tar(src: Path, out: Path) -> Path:
    """An uncompressed tar of ``src``'s contents (one file to upload: one SSH round trip,
    where a folder costs a round trip per file)."""
    with tarfile.open(out, "w") as t:
        for p in sorted(src.iterdir()):
            t.add(p, arcname=p.name)
    return out


def deploy(target: Target, model: Path, profile: Path, wheel: Path | None = None,
           wheelhouse: Path | None = None, keep: int = 3, health_timeout: int = 60,
           python: str = "python3", serial: str = "100%", max_fail_percent: int = 0,
           no_service: bool = False, log=None,
           heldout: Path | None = None) -> list[HostResult]:
    """Deploys ``model`` with ``profile`` to ``target``; returns one result per host
    (``heldout``: the held-out images' folder, default the model's run's test split).

    Raises:
        EdgekitError: bad model, profile, wheel or target; ansible could not run.
    """
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise EdgekitError(f"wheelhouse is not a folder: {wheelhouse}")
    with tempfile.TemporaryDirectory(prefix="edgekit-deploy-") as tmp:
        work = Path(tmp)
        if wheel is None:
            wheel = build_wheel(work / "wheel")
        elif not wheel.is_file():
            raise EdgekitError(f"wheel not found: {wheel}")
        env = make_bundle(work / "bundle", model, profile, wheel, heldout=heldout)
        stage = f"{env['RELEASE_ID']}-{uuid.uuid4().hex[:6]}"
        bundle = _tar(work / "bundle", work / f"{stage}.tar")
        args = ["--keep", str(keep), "--health-timeout", str(health_timeout),
                "--python", python] + (["--no-service"] if no_service else [])
        house = ""
        if wheelhouse is not None:
            # Kept on the device as ~/edgekit/wheelhouse.tar: unchanged, it is not sent again.
            house = str(_tar(wheelhouse, work / "wheelhouse.tar"))
            args += ["--wheelhouse", "wheelhouse.tar"]
        results = run_playbook(
            target, "deploy", work,
            {"edgekit_bundle": str(bundle), "edgekit_stage": stage,
             "edgekit_wheelhouse": house,
             "edgekit_args": " ".join(shlex.quote(a) for a in args)},
            serial, max_fail_percent, log=log)
        return results + _hosts_missing(results, target, work)


def rollback(target: Target, health_timeout: int = 60, serial: str = "100%",
             max_fail_percent: int = 0, no_service: bool = False,
             log=None) -> list[HostResult]:
    """Returns each host to its previous release; one result per host."""
    with tempfile.TemporaryDirectory(prefix="edgekit-rollback-") as tmp:
        work = Path(tmp)
        results = run_playbook(target, "rollback", work,
                               {"edgekit_args": f"--health-timeout {int(health_timeout)}"
                                                + (" --no-service" if no_service else "")},
                               serial, max_fail_percent, log=log)
        return results + _hosts_missing(results, target, work)


def summary_table(results: list[HostResult]) -> str:
    """One line per host: host, result, release, seconds, reason."""
    rows = [("host", "result", "release", "s", "reason")]
    for r in results:
        rows.append((r.host, r.result, r.release or "-",
                     "-" if r.seconds is None else str(r.seconds), r.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4]
                     for row in rows)
