"""What a benchmark ran on: CPU, governor, board, temperature, throttling, OS, packages, Coral.

Everything is read from ``/proc``, ``/sys`` and package metadata where readable, else
left ``None``; nothing here imports TensorFlow (package versions come from metadata).
"""

from __future__ import annotations

import ctypes.util
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Distributions whose versions are recorded with every result (absent ones are left out).
PACKAGES = ("ai-edge-litert", "tflite-runtime", "tensorflow", "tensorflow-cpu", "numpy",
            "opencv-python-headless", "opencv-python", "edgekit")
# Coral USB Accelerator: 1a6e:089a before its firmware is loaded, 18d1:9302 after.
CORAL_USB_IDS = {("1a6e", "089a"), ("18d1", "9302")}
# Raspberry Pi firmware throttling bits (vcgencmd get_throttled): now / since boot.
_PI_NOW = {0: "under-voltage", 1: "frequency capped", 2: "throttled", 3: "soft temperature limit"}

_SYS = Path("/sys")
_PROC = Path("/proc")


def _read(path: str | Path) -> str | None:
    """The stripped text of a small file, or None when it cannot be read."""
    try:
        text = Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None
    return text or None


def _int(text: str | None, base: int = 10) -> int | None:
    """``int(text, base)``, or None for missing or malformed text."""
    try:
        return int(text, base) if text is not None else None
    except ValueError:
        return None


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (``Model``/``Hardware`` on ARM boards)."""
    info = _read(_PROC / "cpuinfo") or ""
    for key in ("model name", "cpu model", "hardware", "model"):
        for line in info.splitlines():
            if line.lower().startswith(key) and ":" in line:
                return line.split(":", 1)[1].strip() or None
    return platform.processor() or None


def governors() -> dict[str, str]:
    """``{cpuN: governor}`` for every CPU whose cpufreq governor is readable."""
    out = {}
    for d in sorted((_SYS / "devices/system/cpu").glob("cpu[0-9]*")):
        g = _read(d / "cpufreq/scaling_governor")
        if g:
            out[d.name] = g
    return out


def board() -> str | None:
    """Board name: device-tree model (Pi, Jetson) or DMI product name (PCs), else None."""
    model = _read(_PROC / "device-tree/model") or _read(_SYS / "firmware/devicetree/base/model")
    if model:
        return model
    vendor = _read(_SYS / "class/dmi/id/sys_vendor")
    product = _read(_SYS / "class/dmi/id/product_name")
    return " ".join(p for p in (vendor, product) if p) or None


def temperatures() -> dict[str, float]:
    """``{zone type: degrees C}`` for every readable thermal zone."""
    out: dict[str, float] = {}
    for z in sorted((_SYS / "class/thermal").glob("thermal_zone*")):
        milli = _int(_read(z / "temp"))
        if milli is not None:
            name = _read(z / "type") or z.name
            out[name if name not in out else f"{name}.{z.name}"] = round(milli / 1000.0, 1)
    return out


def throttling() -> dict[str, Any] | None:
    """Throttling state where the platform exposes it, else None.

    Raspberry Pi: the firmware's ``get_throttled`` word (now / since boot). x86: the
    kernel's thermal-throttle event counters (compare two readings to see new events).
    """
    pi = _read(_SYS / "devices/platform/soc/soc:firmware/get_throttled")
    if pi is not None and _int(pi, 16) is not None:
        word = _int(pi, 16) or 0
        now = [name for bit, name in _PI_NOW.items() if word & (1 << bit)]
        since = [name for bit, name in _PI_NOW.items() if word & (1 << (bit + 16))]
        return {"source": "raspberrypi get_throttled", "value": f"0x{word:x}",
                "throttled_now": bool(now), "now": now, "since_boot": since}
    counts = {}
    for d in sorted((_SYS / "devices/system/cpu").glob("cpu[0-9]*")):
        for kind in ("core", "package"):
            c = _int(_read(d / f"thermal_throttle/{kind}_throttle_count"))
            if c is not None:
                counts[f"{d.name}.{kind}"] = c
    if counts:
        return {"source": "thermal_throttle counters", "events": sum(counts.values()),
                "throttled_now": None}
    return None


def thermal_snapshot() -> dict[str, Any]:
    """Temperature (hottest zone) and throttling now; taken before and after measuring."""
    temps = temperatures()
    return {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "temperature_c": max(temps.values()) if temps else None,
            "throttling": throttling()}


def packages() -> dict[str, str]:
    """Installed versions of the interpreter packages and friends (metadata only)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in PACKAGES:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def coral_usb() -> list[dict[str, Any]]:
    """Coral USB Accelerators on the bus with their negotiated link speed.

    ``speed_mbps`` is what the kernel reports: 480 is USB 2 (several times slower for the
    Edge TPU), 5000 or more is USB 3.
    """
    found = []
    for dev in sorted((_SYS / "bus/usb/devices").glob("*")):
        ids = (_read(dev / "idVendor"), _read(dev / "idProduct"))
        if ids in CORAL_USB_IDS:
            speed = _int(_read(dev / "speed"))
            found.append({"bus": dev.name, "id": ":".join(ids), "speed_mbps": speed,
                          "usb": None if speed is None else ("3" if speed >= 5000 else "2"),
                          "firmware_loaded": ids == ("18d1", "9302")})
    return found


def edgetpu_runtime() -> dict[str, Any]:
    """Edge TPU library and devices visible here (no delegate is loaded)."""
    from edge_runtime.backend import EDGETPU_LIBRARY

    pkg = None
    status = _read("/var/lib/dpkg/status") or ""
    for block in status.split("\n\n"):
        if block.startswith(("Package: libedgetpu1-std", "Package: libedgetpu1-max")):
            fields = dict(ln.split(": ", 1) for ln in block.splitlines() if ": " in ln)
            if fields.get("Status", "").endswith("installed"):
                pkg = f"{fields['Package']} {fields.get('Version', '?')}"
    return {"library": EDGETPU_LIBRARY,
            "library_found": ctypes.util.find_library("edgetpu") is not None,
            "package": pkg, "usb": coral_usb(),
            "pcie": sorted(p.name for p in Path("/dev").glob("apex_*"))}


def emulation() -> str | None:
    """How this machine is emulated (QEMU), or None for real hardware as far as we can tell.

    ``EDGEKIT_EMULATED`` (bench-fleet sets it from the inventory's ``edgekit_emulated``)
    says so outright; else QEMU's firmware names (device tree ``linux,dummy-virt``, DMI
    vendor ``QEMU``), a qemu-user interpreter running our parent (binfmt_misc), or an ARM
    machine without a device-tree model (every real Pi, Jetson and Coral board has one).
    """
    flag = (os.environ.get("EDGEKIT_EMULATED") or "").strip().lower()
    if flag in ("1", "true", "yes", "on"):
        return "emulated (inventory flag)"
    if flag in ("0", "false", "no", "off"):
        return None
    model = _read(_PROC / "device-tree/model") or _read(_SYS / "firmware/devicetree/base/model")
    compat = _read(_PROC / "device-tree/compatible") or ""
    if "dummy-virt" in f"{model} {compat}" or "qemu" in f"{model}".lower():
        return f"qemu system emulation (device tree {model or compat!r})"
    if "qemu" in (_read(_SYS / "class/dmi/id/sys_vendor") or "").lower():
        return "qemu system emulation (DMI vendor QEMU)"
    try:
        parent = os.path.basename(os.readlink(f"/proc/{os.getppid()}/exe"))
    except OSError:
        parent = ""
    if parent.startswith("qemu-"):
        return f"qemu user-mode emulation ({parent})"
    if platform.machine().lower().startswith(("arm", "aarch64")) and not model:
        return "no device-tree model on an ARM machine (emulated, e.g. qemu-user)"
    return None


def os_name() -> str:
    """Distribution name (``/etc/os-release``) and kernel, else ``platform.platform()``."""
    release = _read("/etc/os-release") or ""
    pretty = next((ln.split("=", 1)[1].strip('"') for ln in release.splitlines()
                   if ln.startswith("PRETTY_NAME=")), None)
    return f"{pretty}, kernel {platform.release()}" if pretty else platform.platform()


def environment() -> dict[str, Any]:
    """Everything recorded with a result; see ``benchmarks/SCHEMA.md`` for the keys."""
    from edge_runtime.backend import backend

    b = backend()
    govs = governors()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    snap = thermal_snapshot()
    max_khz = _int(_read(_SYS / "devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))
    return {
        "machine": platform.machine(), "os": os_name(), "platform": platform.platform(),
        "python": platform.python_version(), "cpu": cpu_model(), "cores": os.cpu_count(),
        "cores_usable": usable,
        "cpu_max_mhz": round(max_khz / 1000) if max_khz else None,
        "governor": govs.get("cpu0") or (next(iter(govs.values())) if govs else None),
        "governors": sorted(set(govs.values())),
        "board": board(), "emulated": emulation(), "temperature_c": snap["temperature_c"],
        "temperatures_c": temperatures(), "throttling": snap["throttling"],
        "load_average": load,
        "interpreter": f"{b.name} {b.version}", "packages": packages(),
        # ai-edge-litert and TF >= 2.x apply XNNPACK by default (AUTO op resolver); the
        # interpreter logs "Created TensorFlow Lite XNNPACK delegate for CPU".
        "cpu_delegate": "default (AUTO op resolver; XNNPACK where the package applies it)",
        "edgetpu": edgetpu_runtime(),
        "captured": snap["time"],
    }


def device_label(env: dict[str, Any]) -> str:
    """A short name for the machine: its board, else CPU, architecture and cores; an
    emulated machine's ends in ``(emulated)``."""
    if env.get("board"):
        return mark_emulated(str(env["board"]), env)
    return mark_emulated(f"{env.get('cpu') or 'unknown CPU'} ({env.get('machine')}, "
                         f"{env.get('cores')} cores)", env)


def mark_emulated(name: str, env: dict[str, Any]) -> str:
    """``name`` with `` (emulated)`` appended when ``env`` says the machine is emulated (so
    every table and plot that names the device says so)."""
    if env.get("emulated") and "emulated" not in name:
        return f"{name} (emulated)"
    return name


def environment_warnings(env: dict[str, Any], end: dict[str, Any] | None = None) -> list[str]:
    """Warnings about conditions that make latency numbers unreliable.

    Args:
        env: :func:`environment` taken before measuring.
        end: :func:`thermal_snapshot` taken after measuring (optional).
    """
    out = []
    govs = env.get("governors") or []
    if govs and govs != ["performance"]:
        out.append(f"CPU governor is {'/'.join(govs)}, not 'performance': latency varies with "
                   "frequency scaling (set it with `cpupower frequency-set -g performance`)")
    for when, snap in (("before", env), ("after", end or {})):
        t = snap.get("throttling") or {}
        if t.get("throttled_now"):
            out.append(f"CPU throttling seen {when} measuring ({', '.join(t.get('now', []))}; "
                       f"{t.get('source')} {t.get('value')}): latencies are pessimistic")
    t0, t1 = env.get("throttling") or {}, (end or {}).get("throttling") or {}
    if t0.get("events") is not None and t1.get("events") is not None \
            and t1["events"] > t0["events"]:
        out.append(f"{t1['events'] - t0['events']} thermal throttling event(s) while measuring")
    load, cores = env.get("load_average"), env.get("cores_usable") or env.get("cores") or 1
    if load and load[0] > 0.5 * cores:
        out.append(f"system load was {load[0]} on {cores} core(s) when measuring started: other "
                   "processes compete for the CPU and inflate latency")
    for dev in (env.get("edgetpu") or {}).get("usb") or []:
        if dev.get("usb") == "2":
            out.append(f"Coral USB Accelerator {dev['bus']} is on a USB 2 link "
                       f"({dev['speed_mbps']} Mbit/s): use a USB 3 port")
    return out
