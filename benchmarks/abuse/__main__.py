"""Abuse benchmark: hostile models, images, profiles, signals and HTTP load, counted.

Usage:
    python -m benchmarks.abuse --model MODEL.tflite [--labels L] [--out runs/abuse.json]
        [--only mutants,images,yaml,signals,http] [--signals 100] [--jobs 2] [--seed 0]

Everything is generated here (``benchmarks/abuse/gen.py``; nothing is downloaded) and run
through the real CLIs as subprocesses; servers bind 127.0.0.1 only. Measured:

* mutants: the full malformed-model set (a few hundred) through ``edge_runtime classify``
  and ``convert lint``: tried / clear errors (exit 1, one ``error:`` line) / ran (exit 0) /
  crashes (killed by a signal) / tracebacks / unclear (other stderr) / timeouts, and lint
  PASSes of models the interpreter cannot load;
* images and profiles: image bombs and odd formats through ``classify``, YAML bombs,
  duplicate keys and huge numbers through ``run --config`` (outcome, seconds, longest
  stderr line);
* signals: ``--signals`` SIGTERMs at seeded random moments 0-5 s after ``run`` starts on a
  video: clean exits (status 0, one stop line, no traceback), the slowest exit, and when
  the process starts catching SIGTERM (before that, the interpreter's own start-up);
* http: ``benchmarks.abuse.http_load`` (50 loopback clients x 20 requests of /latest while the
  daemon classifies: timeouts, p50/p99, fps loaded vs quiet; 20 non-reading stream clients
  then a viewer: time to its first frame).

Writes one JSON document atomically (``--out``) and prints a summary. Exit status: 0
measured, 1 error, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from edge_runtime.errors import EXIT_ERROR, EXIT_OK, EdgekitError, Parser
from edge_runtime.fileio import atomic_path

from .runs import bench_http, bench_images, bench_mutants, bench_yaml
from .signals import bench_signals

SECTIONS = ("mutants", "images", "yaml", "signals", "http")


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``python -m benchmarks.abuse``."""
    p = Parser(prog="python -m benchmarks.abuse", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a real .tflite classifier")
    p.add_argument("--labels", default=None, help="its label file (when no manifest)")
    p.add_argument("--out", type=Path, default=Path("runs/abuse.json"), help="JSON results")
    p.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
    p.add_argument("--signals", type=int, default=100, help="SIGTERMs to send")
    p.add_argument("--jobs", type=int, default=2, help="subprocesses at a time")
    p.add_argument("--scale", type=int, default=1, help="multiplies the random mutants")
    p.add_argument("--seed", type=int, default=0, help="seed of every generator")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    try:
        if unknown:
            raise EdgekitError(f"--only {sorted(unknown)}, expected some of {list(SECTIONS)}")
        if not args.model.is_file():
            raise EdgekitError(f"model not found: {args.model}")
        if not 1 <= args.jobs <= 16 or not 1 <= args.signals <= 1000:
            raise EdgekitError("--jobs must be 1..16 and --signals 1..1000")
        doc: dict = {"model": str(args.model), "seed": args.seed, "cpus": os.cpu_count(),
                     "machine": platform.machine(), "python": platform.python_version(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with tempfile.TemporaryDirectory(prefix="edgekit-abuse-") as tmp:
            work = Path(tmp)
            video = Path(work / "clip.avi")
            from .http_load import write_video

            write_video(video, frames=90)
            for section in only:
                t0 = time.monotonic()
                print(f"abuse: {section} ...", file=sys.stderr, flush=True)
                if section == "mutants":
                    doc[section] = bench_mutants(args.model, work, args.labels, args.seed,
                                                 args.jobs, args.scale)
                elif section == "images":
                    doc[section] = bench_images(args.model, work, args.labels, args.seed)
                elif section == "yaml":
                    doc[section] = bench_yaml(args.model, work, video)
                elif section == "signals":
                    doc[section] = bench_signals(args.model, video, args.signals, args.seed,
                                                 args.jobs)
                else:
                    doc[section] = bench_http(args.model, video, args.labels)
                doc.setdefault("seconds", {})[section] = round(time.monotonic() - t0, 1)
        with atomic_path(args.out) as tmp_out:
            tmp_out.write_text(json.dumps(doc, indent=2) + "\n")
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(summary(doc), indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return EXIT_OK


def summary(doc: dict) -> dict:
    """The headline numbers of a results document."""
    s: dict = {}
    if "mutants" in doc:
        m = doc["mutants"]
        s["mutants"] = {k: m[k] for k in ("classify", "lint", "lint_false_pass")}
    for name in ("images", "yaml"):
        if name in doc:
            s[name] = {"cases": len(doc[name]),
                       "as_expected": sum(v["as_expected"] for v in doc[name].values()),
                       "not": {k: v["verdict"] for k, v in doc[name].items()
                               if not v["as_expected"]}}
    if "signals" in doc:
        g = doc["signals"]
        s["signals"] = {k: g[k] for k in ("sent", "clean", "unclean_before_guard", "max_exit_s",
                                          "rc_counts", "guard_s")}
    if "http" in doc:
        h = doc["http"]
        s["http"] = {"quiet_fps": h["quiet_fps"], "loaded_fps": h["loaded_fps"],
                     "timeouts": h["latest"]["timeouts"], "errors": h["latest"]["errors"],
                     "p50_ms": h["latest"]["p50_ms"], "p99_ms": h["latest"]["p99_ms"],
                     "viewer_first_frame_s": h["stream"]["first_frame_s"],
                     "viewer_status": h["stream"]["status"]}
    return s


if __name__ == "__main__":
    sys.exit(main())
