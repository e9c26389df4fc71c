"""``make test-vm``: real ``make deploy`` into a virtual Raspberry Pi with systemd.

Usage:
    python device_tests/vm/run.py [--cache DIR] [--work DIR] [PYTEST ARGS...]

Builds (once, then reuses) a bootable arm64 Debian bookworm disk (image.sh: systemd,
openssh-server, python3-venv, linux-image-arm64 and its initramfs, the device user `pi`
with a key and passwordless sudo), an aarch64 wheelhouse of edgekit[device]'s
dependencies (pip download --platform ...) and the tiny int8 model of test-arm64 (the
repo's converter, golden cases inside), builds the edgekit wheel of this checkout, then
runs test_vm.py: one VM booted under qemu-system-aarch64 (TCG, boot.sh) and driven over
SSH. Where it cannot run (not root, no qemu and no apt-get, not x86-64 Linux) it prints one
``test-vm: SKIPPED: why`` line and exits 0.

Environment: EDGEKIT_VM_CACHE (default /var/cache/edgekit-vm) holds the image, the
wheelhouse and the model.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# Tools on the host and their Debian packages. qemu-user/binfmt only build the image.
BOOT_TOOLS = {"qemu-system-aarch64": "qemu-system-arm", "ssh": "openssh-client",
              "scp": "openssh-client", "ssh-keygen": "openssh-client"}
BUILD_TOOLS = {"mmdebstrap": "mmdebstrap", "arch-test": "arch-test", "mkfs.ext4": "e2fsprogs",
               "qemu-aarch64-static": "qemu-user-static", "update-binfmts": "binfmt-support"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
# Bookworm's Python is 3.11 and its glibc 2.36: the wheels a Pi 4 on Debian 12 installs.
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64",
             "manylinux_2_31_aarch64", "manylinux_2_34_aarch64", "linux_aarch64", "any")


def log(msg: str) -> None:
    print(f"test-vm: {msg}", flush=True)


def _sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


def image_dir(cache: Path) -> Path:
    """Where image.sh puts (or has put) the image for its current content."""
    return cache / f"image-{hashlib.sha256((HERE / 'image.sh').read_bytes()).hexdigest()[:16]}"


def _install(tools: dict[str, str]) -> list[str]:
    """apt-get installs the packages of missing tools; returns those still missing."""
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if missing and shutil.which("apt-get"):
        log(f"installing {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
        if _sh(cmd, env=env).returncode != 0:
            _sh(["apt-get", "update", "-qq"], env=env)
            _sh(cmd, env=env)
    return sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})


def prerequisites(cache: Path) -> str | None:
    """Installs what the host needs; returns why the VM cannot run here, or None."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        return f"needs Linux on x86-64 or aarch64 (this is {platform.system()} " \
               f"{platform.machine()})"
    if os.geteuid() != 0:
        return "not root: installing qemu and building the disk image (mmdebstrap) need root"
    build = not (image_dir(cache) / ".edgekit-complete").is_file()
    missing = _install({**BOOT_TOOLS, **(BUILD_TOOLS if build else {})})
    if missing:
        return f"missing host packages: {' '.join(missing)} (apt-get install them)"
    if not build or platform.machine() == "aarch64":
        return None
    if not (BINFMT / "register").exists():
        r = _sh(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
        if r.returncode != 0:
            return f"binfmt_misc cannot be mounted: {r.stderr.strip() or 'no kernel support'}"
    _sh(["update-binfmts", "--enable", "qemu-aarch64"])
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        return "qemu-aarch64 could not be registered with binfmt_misc: the image's " \
               "packages cannot be configured"
    return None


def wheelhouse(cache: Path) -> Path:
    """aarch64 / CPython 3.11 wheels of edgekit[device]'s dependencies (cached)."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["device"]
    key = _digest("\n".join(deps).encode(), "\n".join(PLATFORMS).encode())
    house = cache / f"wheelhouse-{key}"
    if (house / ".complete").is_file():
        return house
    log("downloading the aarch64 wheelhouse (once)")
    shutil.rmtree(house, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
           "-d", str(house), "--only-binary=:all:", "--python-version", "3.11",
           "--implementation", "cp", "--abi", "cp311",
           *(a for p in PLATFORMS for a in ("--platform", p)), *deps]
    r = _sh(cmd, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"test-vm: FAILED: pip download of the aarch64 wheels:\n"
                         f"{r.stderr[-3000:]}")
    (house / ".complete").touch()
    for old in cache.glob("wheelhouse-*"):
        if old != house:
            shutil.rmtree(old, ignore_errors=True)
    return house


def tiny_model(cache: Path) -> Path:
    """test-arm64's tiny int8 model (golden cases inside) and the sample video, cached."""
    spec = importlib.util.spec_from_file_location("arm64_run", ROOT / "device_tests" /
                                                  "arm64" / "run.py")
    arm64 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(arm64)
    # Remade when the converter or the runtime changes (they make the golden cases).
    key = _digest(arm64.TINY_MODEL.encode(), (ROOT / "train" / "sample_data.py").read_bytes(),
                  *(p.read_bytes() for d in ("convert", "edge_runtime")
                    for p in sorted((ROOT / d).glob("*.py"))))
    out = cache / f"model-{key}"
    if (out / "model_int8.tflite").is_file():
        return out
    log("making the tiny model and the video (once per converter/runtime change)")
    tmp = cache / f"model-{key}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    (tmp / "labels.txt").write_text("circle\nsquare\nstar\ntriangle\n")
    for cmd in ([sys.executable, "-m", "train.sample_data", "--out", str(tmp / "sample"),
                 "--per-class", "10", "--frames", "150"],
                [sys.executable, "-c", arm64.TINY_MODEL, str(tmp / "tiny.keras")],
                [sys.executable, "-m", "convert", str(tmp / "tiny.keras"), "--labels",
                 str(tmp / "labels.txt"), "--img-size", "96", "--data",
                 str(tmp / "sample" / "images"), "--variants", "int8", "--calib", "40",
                 "--max-drop", "100"]):
        r = _sh(cmd, env=env, cwd=ROOT, timeout=1200)
        if r.returncode != 0:
            raise SystemExit(f"test-vm: FAILED: {' '.join(cmd[:3])}:\n{r.stderr[-3000:]}")
    (tmp / "model").mkdir()
    for f in (tmp / "export").iterdir():  # the model, its manifest and labels
        if f.is_file() and not f.name.startswith("convert_report"):
            shutil.copy(f, tmp / "model" / f.name)
    shutil.copy(tmp / "sample" / "video.avi", tmp / "model" / "video.avi")
    shutil.rmtree(out, ignore_errors=True)
    (tmp / "model").rename(out)
    shutil.rmtree(tmp)
    for old in cache.glob("model-*"):
        if old != out:
            shutil.rmtree(old, ignore_errors=True)
    return out


def inputs(cache: Path, work: Path) -> Path:
    """The test inputs in ``work``: model/, video.avi, wheelhouse/, the wheel."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = tiny_model(cache)
    shutil.copytree(model, work / "model", ignore=shutil.ignore_patterns("video.avi"))
    shutil.copy(model / "video.avi", work / "video.avi")
    (work / "wheelhouse").symlink_to(wheelhouse(cache))
    r = _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
             "--disable-pip-version-check", "-w", str(work), str(ROOT)], timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"test-vm: FAILED: the wheel did not build:\n{r.stderr[-3000:]}")
    return work


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python device_tests/vm/run.py", allow_abbrev=False,
                                description=__doc__.split("\n")[0])
    p.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "EDGEKIT_VM_CACHE", "/var/cache/edgekit-vm")), help="image, wheelhouse, model cache")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "vm",
                   help="this run's inputs and console log (replaced)")
    args, pytest_args = p.parse_known_args(argv)
    t0 = time.monotonic()
    why = prerequisites(args.cache)
    if why:
        log(f"SKIPPED: {why}")
        return 0
    args.cache.mkdir(parents=True, exist_ok=True)
    lock = open(args.cache / "lock", "w")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"another test-vm is using {args.cache}; waiting for it")
        fcntl.flock(lock, fcntl.LOCK_EX)
    times = {}
    t = time.monotonic()
    cached = (image_dir(args.cache) / ".edgekit-complete").is_file()
    r = subprocess.run([str(HERE / "image.sh"), str(args.cache)], stdout=subprocess.PIPE,
                       text=True)
    if r.returncode != 0:
        log("FAILED: the disk image did not build (see above)")
        return 1
    image = Path(r.stdout.strip().splitlines()[-1])
    times["image" + (" (cached)" if cached else " (built)")] = time.monotonic() - t
    t = time.monotonic()
    work = inputs(args.cache, args.work.resolve())
    times["inputs"] = time.monotonic() - t
    t = time.monotonic()
    env = {**os.environ, "EDGEKIT_VM_IMAGE": str(image), "EDGEKIT_VM_INPUTS": str(work)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-rs", "--tb=short", "-p",
           "no:cacheprovider", str(HERE), *pytest_args]
    tests = subprocess.run(cmd, env=env, cwd=ROOT)
    times["boot + tests"] = time.monotonic() - t
    log("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items())
        + f"; total {time.monotonic() - t0:.0f}s")
    log(("PASSED" if tests.returncode == 0 else "FAILED") + f" (pytest exit {tests.returncode};"
        f" console log: {work / 'console.log'})")
    return 0 if tests.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
