"""``make test-arm64``: the device tests on an emulated Raspberry Pi 4 (aarch64, qemu-user).

Usage:
    python device_tests/arm64/run.py [--cache DIR] [--work DIR] [PYTEST ARGS...]

Builds (once, then reuses) an arm64 Debian bookworm userland with Python 3.11 (rootfs.sh),
runs it through qemu user-mode emulation registered with binfmt_misc, installs edgekit
there from a wheel built from this checkout (binary wheels only), and runs
test_device.py inside (chroot.sh: QEMU_CPU=cortex-a72 and a Pi 4's /proc). The x86
answers those tests compare with are computed here, on the host, in the same run.
Prints ``uname -m`` from inside, the x86 vs aarch64 table of Coral's reference models and
photos, and a summary line. Where emulation cannot be set up (not root, no binfmt_misc,
no mount namespaces) it prints one ``test-arm64: SKIPPED: why`` line and exits 0.

Environment: EDGEKIT_ARM64_CACHE (default /var/cache/edgekit-arm64) holds the userland,
the wheelhouse and the tiny daemon model; QEMU_CPU overrides cortex-a72 (cortex-a76: Pi 5).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# Where tests/conftest.py finds Coral's reference data (make test-data fetches the second).
CORAL_DIRS = ((ROOT / ".." / "shared" / "reference" / "coral").resolve(), ROOT / "data" / "coral")
CORAL = next((d for d in CORAL_DIRS if (d / "mobilenet_v2_1.0_224_quant.tflite").is_file()),
             CORAL_DIRS[0])
BINFMT = Path("/proc/sys/fs/binfmt_misc")
HOST_TOOLS = {"mmdebstrap": "mmdebstrap", "update-binfmts": "binfmt-support",
              "qemu-aarch64-static": "qemu-user-static", "unshare": "util-linux"}
# Coral's classifiers (the Edge TPU one cannot run without an Edge TPU) and their labels.
CORAL_MODELS = {"mobilenet_v2_1.0_224_quant.tflite": "imagenet_labels.txt",
                "tf2_mobilenet_v2_1.0_224_ptq.tflite": "imagenet_labels.txt",
                "mobilenet_v2_1.0_224_inat_bird_quant.tflite": "inat_bird_labels.txt"}
CORAL_PHOTOS = ("cat.bmp", "parrot.jpg", "bird.bmp", "grace_hopper.bmp", "hot_dog.jpg")
DAEMON_FRAMES = 300  # results the daemon must produce (the 150-frame video, looped)
# The daemon's model: a tiny untrained int8 CNN made with the repo's converter, so a few
# hundred frames take seconds under emulation (MobileNetV2 at 224 px takes ~1 s a frame).
TINY_MODEL = """
import sys, keras
keras.utils.set_random_seed(0)
inp = keras.Input((96, 96, 3))
x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
x = keras.layers.DepthwiseConv2D(3, strides=2, activation="relu")(x)
x = keras.layers.Conv2D(16, 1, activation="relu")(x)
x = keras.layers.GlobalAveragePooling2D()(x)
# Large output weights: decisive (peaky) scores, so convert finds golden self-test cases.
x = keras.layers.Dense(4, activation="softmax",
                       kernel_initializer=keras.initializers.RandomNormal(stddev=8.0))(x)
keras.Model(inp, x).save(sys.argv[1])
"""


def log(msg: str) -> None:
    print(f"test-arm64: {msg}", flush=True)


def _sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def prerequisites() -> str | None:
    """Sets up binfmt_misc for qemu-aarch64; returns why it cannot, or None."""
    if platform.system() != "Linux":
        return f"needs Linux (this is {platform.system()})"
    if platform.machine() == "aarch64":
        return "the host is aarch64 itself: run pytest device_tests/arm64 in a device venv"
    if os.geteuid() != 0:
        return "not root: registering qemu-aarch64 with binfmt_misc and chroot need root"
    missing = [pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None]
    if missing and shutil.which("apt-get"):
        log(f"installing {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        r = _sh(["apt-get", "install", "-y", "-qq", *missing], env=env)
        if r.returncode != 0:
            _sh(["apt-get", "update", "-qq"], env=env)
            _sh(["apt-get", "install", "-y", "-qq", *missing], env=env)
        missing = [pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        return f"missing host packages: {' '.join(missing)} (apt-get install them)"
    if not (BINFMT / "register").exists():
        r = _sh(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
        if r.returncode != 0:
            return f"binfmt_misc cannot be mounted: {r.stderr.strip() or 'no kernel support'}"
    _sh(["update-binfmts", "--enable", "qemu-aarch64"])
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        return "qemu-aarch64 could not be registered with binfmt_misc (update-binfmts " \
               "--enable qemu-aarch64 failed)"
    flags = next((ln.split(":", 1)[1].strip() for ln in entry.read_text().splitlines()
                  if ln.startswith("flags:")), "")
    if "F" not in flags:
        return f"qemu-aarch64 is registered without the F flag ({flags!r}): it cannot run " \
               "inside a chroot (install qemu-user-static, which registers it with F)"
    r = _sh(["unshare", "--mount", "--propagation", "private", "true"])
    if r.returncode != 0:
        return f"no mount namespaces (unshare -m: {r.stderr.strip()})"
    return None


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


def build_wheel(work: Path) -> Path:
    dist = work / "dist"
    r = _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)])
    if r.returncode != 0:
        raise SystemExit(f"test-arm64: the wheel did not build:\n{r.stdout}{r.stderr}")
    wheels = sorted(dist.glob("edgekit_classify-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"test-arm64: expected one wheel in {dist}, found {wheels}")
    return wheels[0]


def _input_tensor(clf, rgb):
    from edge_runtime.classify import set_input

    set_input(clf.interpreter, clf.spec, rgb, clf.normalization, clf.resize, clf.interpolation)
    return clf.interpreter.get_tensor(clf.spec.index).copy()


def coral_reference(work: Path) -> dict:
    """x86 answers for every Coral classifier x photo (the full score vector and input
    tensor each), and the digests of "linear" preprocessing of each photo."""
    import numpy as np

    from edge_runtime import Classifier, load_image

    if not (CORAL / next(iter(CORAL_MODELS))).is_file():
        log(f"Coral reference data not found at {CORAL}: those device tests will skip")
        return {"coral": [], "linear_inputs": {}, "linear_model": ["", ""], "decoded": {}}
    rows, inputs = [], {}
    for model, labels in CORAL_MODELS.items():
        clf = Classifier(CORAL / model, labels=CORAL / labels)
        step = float(clf.interpreter.get_output_details()[0]["quantization"][0])
        for photo in CORAL_PHOTOS:
            rgb = load_image(CORAL / photo)
            inputs[f"{model}/{photo}"] = _input_tensor(clf, rgb)
            s = clf.scores(rgb)
            top = int(np.argmax(s))
            rows.append({"model": model, "labels": labels, "photo": photo, "index": top,
                         "label": clf.labels.get(top, str(top)), "score": float(s[top]),
                         "step": step, "scores": [float(v) for v in s]})
    first = next(iter(CORAL_MODELS.items()))
    clf = Classifier(CORAL / first[0], labels=CORAL / first[1], interpolation="linear")
    linear, decoded = {}, {}
    for photo in CORAL_PHOTOS:
        rgb = load_image(CORAL / photo)
        decoded[photo] = hashlib.sha256(rgb).hexdigest()
        inputs[f"linear/{photo}"] = _input_tensor(clf, rgb)
        linear[photo] = hashlib.sha256(inputs[f"linear/{photo}"]).hexdigest()
    np.savez(work / "x86_inputs.npz", **inputs)
    return {"coral": rows, "linear_inputs": linear, "linear_model": list(first),
            "decoded": decoded}


def daemon_inputs(cache: Path, work: Path) -> dict:
    """The tiny model and sample video (cached), and x86's results on every frame."""
    # Remade when the converter or the runtime changes: the golden self-test cases it
    # embeds are made by the runtime's preprocessing and interpreter.
    key = _digest(TINY_MODEL.encode(), (ROOT / "train" / "sample_data.py").read_bytes(),
                  *(p.read_bytes() for d in ("convert", "edge_runtime")
                    for p in sorted((ROOT / d).glob("*.py"))))
    src = cache / f"daemon-{key}"
    if not (src / "model_int8.tflite").is_file():
        log("making the daemon's tiny model and video (once)")
        tmp = cache / f"daemon-{key}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
        steps = [
            [sys.executable, "-m", "train.sample_data", "--out", str(tmp / "sample"),
             "--per-class", "10", "--frames", "150"],
            [sys.executable, "-c", TINY_MODEL, str(tmp / "tiny.keras")],
            [sys.executable, "-m", "convert", str(tmp / "tiny.keras"), "--labels",
             str(tmp / "labels.txt"), "--img-size", "96", "--data",
             str(tmp / "sample" / "images"), "--variants", "int8", "--calib", "40",
             "--max-drop", "100"],
        ]
        (tmp / "labels.txt").write_text("circle\nsquare\nstar\ntriangle\n")
        for cmd in steps:
            r = _sh(cmd, env=env, cwd=ROOT)
            if r.returncode != 0:
                raise SystemExit(f"test-arm64: {' '.join(cmd[:3])} failed:\n{r.stderr[-3000:]}")
        (tmp / "daemon").mkdir()
        for f in (tmp / "export").iterdir():  # the model and whatever sidecars convert writes
            if f.is_file() and not f.name.startswith("convert_report"):
                shutil.copy(f, tmp / "daemon" / f.name)
        shutil.copy(tmp / "sample" / "video.avi", tmp / "daemon" / "video.avi")
        shutil.rmtree(src, ignore_errors=True)
        (tmp / "daemon").rename(src)
        shutil.rmtree(tmp)
    dest = work / "daemon"
    shutil.copytree(src, dest)
    # The daemon replays the model's golden cases before serving (model.selftest: fail).
    args = ["--set", "camera.realtime=true", "--set", "camera.fps=30",
            "--set", "output.details=true", "--set", "classify.top_k=4"]
    x86 = dest / "x86.jsonl"
    r = _sh([sys.executable, "-m", "edge_runtime", "run", "--model",
             str(dest / "model_int8.tflite"), "--source", str(dest / "video.avi"),
             "--output", str(x86), "--set", "output.details=true", "--set",
             "classify.top_k=4"], cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if r.returncode != 0:
        raise SystemExit(f"test-arm64: the x86 daemon run failed:\n{r.stderr[-3000:]}")
    n = sum(1 for _ in x86.open())
    from edge_runtime import Classifier

    clf = Classifier(dest / "model_int8.tflite")
    step = float(clf.interpreter.get_output_details()[0]["quantization"][0])
    return {"model": "daemon/model_int8.tflite", "video": "daemon/video.avi",
            "x86_jsonl": "daemon/x86.jsonl", "video_frames": n, "frames": DAEMON_FRAMES,
            "labels": sorted(clf.labels.values()), "step": step, "args": args}


def table(reference: list[dict], work: Path) -> str:
    path = work / "arm64_coral.jsonl"
    arm = {(r["model"], r["photo"]): r for r in map(json.loads, path.read_text().splitlines())} \
        if path.exists() else {}
    out = ["| model | photo | x86 index | x86 score | aarch64 index | aarch64 score | "
           "max diff (steps) | input values differing |", "|---|---|---|---|---|---|---|---|"]
    for ref in reference:
        a = arm.get((ref["model"], ref["photo"]))
        got = (f"{a['index']} | {a['score']:.5f} | {a['max_diff'] / a['step']:.0f} | "
               f"{a['input_values_differing']}" if a else "- | - | not run | -")
        out.append(f"| {ref['model'].removesuffix('.tflite')} | {ref['photo']} | "
                   f"{ref['index']} ({ref['label']}) | {ref['score']:.5f} | {got} |")
    return "\n".join(out)


def verify_unit(rootfs: Path, work: Path) -> str:
    """systemd-analyze verify of the unit rendered on the device, against the userland's
    own systemd units and files (--root), so ExecStart's venv python is checked too."""
    unit = work / "edgekit.service"
    if not unit.is_file():
        return "not rendered"
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze not available here: unit not verified"
    dest = rootfs / "etc" / "systemd" / "system" / "edgekit.service"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(unit, dest)
    try:
        r = _sh(["systemd-analyze", "verify", f"--root={rootfs}",
                 "/etc/systemd/system/edgekit.service"])
    finally:
        dest.unlink()
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    return "systemd-analyze verify: " + ("ok" if r.returncode == 0 and not problems
                                         else "FAILED: " + "; ".join(problems))


def _summarize(rootfs: Path, work: Path, reference: dict, output: str, returncode: int,
               times: dict[str, float], t0: float) -> int:
    """Prints the x86-vs-aarch64 table, the daemon and linear-resize rows, the timings and
    the verdict; returns the exit status."""
    unit = verify_unit(rootfs, work)
    report = table(reference["coral"], work)
    (work / "report.md").write_text(report + "\n")
    print("\nx86 vs aarch64, Coral reference models x photos (top-1 index and score):")
    print(report)
    for name, fmt in (("daemon", "daemon: {frames} results over HTTP-served video, scores vs "
                       "x86 on the same frames within {diff:.0f} steps"),
                      ("linear", "linear resize of {photo}: {values_differing} of {of} input "
                       "values differ from x86 (max {max_diff})")):
        path = work / f"arm64_{name}.jsonl"
        for row in map(json.loads, path.read_text().splitlines() if path.exists() else []):
            print(fmt.format(**row, diff=row.get("max_diff", 0) / row.get("step", 1)))
    machine = next((ln.split(":", 1)[1].strip() for ln in output.splitlines()
                    if ln.startswith("uname -m:")), "?")
    tail = next((ln.strip() for ln in reversed(output.splitlines())
                 if " in " in ln and ("passed" in ln or "failed" in ln or "error" in ln)),
                "no pytest summary")
    print()
    log(f"uname -m inside: {machine}; systemd unit {unit}")
    log("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items())
        + f"; total {time.monotonic() - t0:.0f}s")
    ok = returncode == 0 and machine == "aarch64" and "FAILED" not in unit
    log(("PASSED: " if ok else "FAILED: ") + tail.strip("= "))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python device_tests/arm64/run.py",
                                description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "EDGEKIT_ARM64_CACHE", "/var/cache/edgekit-arm64")), help="userland and wheel cache")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "arm64",
                   help="this run's inputs and results (replaced)")
    args, pytest_args = p.parse_known_args(argv)
    t0 = time.monotonic()
    why = prerequisites()
    if why:
        log(f"SKIPPED: {why}")
        return 0
    times = {}
    import fcntl

    args.cache.mkdir(parents=True, exist_ok=True)
    lock = open(args.cache / "lock", "w")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"another test-arm64 is using {args.cache}; waiting for it")
        fcntl.flock(lock, fcntl.LOCK_EX)

    def lap(name: str, since: float) -> float:
        times[name] = time.monotonic() - since
        return time.monotonic()

    t = time.monotonic()
    cached = any(args.cache.glob("rootfs-*/.edgekit-complete"))
    r = subprocess.run([str(HERE / "rootfs.sh"), str(args.cache)], stdout=subprocess.PIPE,
                       text=True)
    if r.returncode != 0:
        log("FAILED: the arm64 userland did not build (see above)")
        return 1
    rootfs = Path(r.stdout.strip().splitlines()[-1])
    t = lap("userland" + (" (cached)" if cached else " (built)"), t)

    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    wheel = build_wheel(work)
    t = lap("wheel", t)

    from importlib.metadata import version

    import edge_runtime  # noqa: F401 - the checkout's, for the x86 side

    reference = {"edgekit_version": version("edgekit-classify"), **coral_reference(work),
                 "daemon": daemon_inputs(args.cache, work)}
    (work / "x86_reference.json").write_text(json.dumps(reference))
    shutil.copy(ROOT / "device_configs" / "raspberry-pi-4.yaml", work)
    demo = ROOT / "runs" / "demo" / "export"
    if (demo / "model_int8.tflite").is_file():
        shutil.copytree(demo, work / "demo")
    t = lap("x86 side", t)

    venv_key = _digest(rootfs.name.encode(), (ROOT / "pyproject.toml").read_bytes())
    env = {**os.environ, "CORAL_DIR": str(CORAL), "ARM64_CACHE": str(args.cache)}
    cmd = [str(HERE / "chroot.sh"), str(rootfs), str(work), "/bin/sh", "/tests/inside.sh",
           venv_key, f"/work/dist/{wheel.name}", "--junitxml=/work/junit.xml", *pytest_args]
    log(f"running the device tests under qemu-aarch64 (QEMU_CPU="
        f"{os.environ.get('QEMU_CPU', 'cortex-a72')}); CPU is shared, so this is slow")
    lines = []
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as inside:
        for line in inside.stdout:  # streamed: CI shows progress
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    output = "".join(lines)
    t = lap("arm64 install + tests", t)

    return _summarize(rootfs, work, reference, output, inside.returncode, times, t0)


if __name__ == "__main__":
    sys.exit(main())
