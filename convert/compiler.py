"""Runs ``edgetpu_compiler`` on a full-integer model, atomically, and reads its log."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import EdgekitError

from .compiler_log import parse_compiler_log
from .workdir import work_dir

INSTALL_HINT = (
    "edgetpu_compiler not found on PATH: it runs only on x86-64 Linux; add Coral's apt "
    "repository (https://coral.ai/docs/edgetpu/compiler/) and 'sudo apt install edgetpu-compiler'"
    " (there is no build for ARM boards such as the Raspberry Pi or Jetson, nor for macOS)")


@dataclass(frozen=True)
class CompileResult:
    """What :func:`compile_edgetpu` did. ``available``: edgetpu_compiler is on PATH (else
    nothing ran and ``message`` says how to install it); ``output_path``/``log_path``: the
    ``<name>_edgetpu.tflite`` and its operation log; ``log``: the compiler's stdout and
    stderr; ``info``: :func:`parse_compiler_log` of it; ``command``: what was run."""

    available: bool
    message: str
    output_path: Path | None = None
    log_path: Path | None = None
    log: str = ""
    info: dict = field(default_factory=dict)
    command: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-serialisable: the parsed log's keys, ``cpu_ops`` and ``summary`` (the log)."""
        paths = {k: str(v) if v else None for k, v in (("output_path", self.output_path),
                                                        ("log_path", self.log_path))}
        return {"available": self.available, "message": self.message, **paths,
                "command": list(self.command), **self.info,
                "cpu_ops": int(self.info.get("cpu_ops") or 0), "summary": self.log.strip()}



def compile_edgetpu(model_path: str | Path, out_dir: str | Path,
                    timeout: float = 180) -> CompileResult:
    """Runs ``edgetpu_compiler -s -o OUT_DIR MODEL``; without the compiler, returns
    ``available=False`` and an install hint. The compiler writes into a temporary folder in
    ``out_dir``, then its model and log are renamed into ``out_dir``, so a failed or
    interrupted compile leaves no partial file.

    Args:
        model_path: a full-integer .tflite model.
        out_dir: where ``<name>_edgetpu.tflite`` and ``<name>_edgetpu.log`` go.
        timeout: seconds before the compiler is stopped.

    Raises:
        EdgekitError: missing model, or the compiler failed or timed out.
    """
    exe = shutil.which("edgetpu_compiler")
    if exe is None:
        return CompileResult(False, f"{INSTALL_HINT} [this machine: {platform.system()} "
                             f"{platform.machine()}]")
    model_path, out_dir = Path(model_path), Path(out_dir)
    if not model_path.is_file():
        raise EdgekitError(f"model not found: {model_path}")
    with work_dir(out_dir, ".edgetpu-") as work:
        cmd = (exe, "-s", "-o", str(work), str(model_path))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgekitError(f"edgetpu_compiler did not finish {model_path.name} in "
                               f"{timeout:g} s") from None
        log = (proc.stdout + proc.stderr).replace(str(work), str(out_dir))
        made = sorted(work.glob("*_edgetpu.tflite"))
        if proc.returncode != 0 or not made:
            lines = [ln.strip() for ln in log.splitlines() if ln.strip()] or ["no output"]
            why = next((ln for ln in lines if re.search(r"fail|error", ln, re.I)), lines[-1])
            raise EdgekitError(f"edgetpu_compiler failed on {model_path.name} "
                               f"(exit {proc.returncode}): {why}")
        for f in sorted(work.glob("*_edgetpu.*"), key=lambda f: f.suffix != ".log"):
            os.replace(f, out_dir / f.name)  # the model last: its presence means complete
    info = parse_compiler_log(log)
    output = out_dir / made[0].name
    log_path = output.with_suffix(".log")
    info["output_model"] = str(output)
    message = (f"compiled {output.name} with edgetpu_compiler {info['compiler_version']}: "
               f"{info['tpu_ops']} op(s) on the Edge TPU, {info['cpu_ops'] or 0} on the CPU")
    return CompileResult(True, message, output, log_path if log_path.is_file() else None, log,
                         info, cmd)


__all__ = ["INSTALL_HINT", "CompileResult", "compile_edgetpu"]
