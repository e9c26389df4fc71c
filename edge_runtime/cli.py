"""Command line of the on-device runtime.

Usage:
    python -m edge_runtime classify --model M.tflite [--labels L] [--top-k K] [--json] IMAGE...
    python -m edge_runtime run --model M.tflite --source SRC [--output FILE] [--max-frames N]
                               [--realtime] [--http [HOST:]PORT]
                               [--keep-dir DIR [--keep-max-per-minute N]]
    python -m edge_runtime run --config device_configs/NAME.yaml [--set section.key=value ...]
    python -m edge_runtime doctor [--config device_configs/NAME.yaml]
    python -m edge_runtime unit --config device_configs/NAME.yaml [--user USER]
    python -m edge_runtime selftest --model M.tflite [--labels L] [--json] [--strict]

``classify`` prints the top-k classes of each image; with ``--json``, one object per line:
``{"image": path, "top": [{"index": int, "label": str, "score": float}, ...]}``.
``run`` is the camera daemon (:mod:`edge_runtime.run_command`): it reads frames from SRC
(camera index, /dev/video*, video file, URL, GStreamer pipeline, picamera2) on a capture
thread, classifies the newest one and writes one JSON line per result; optionally it serves
HTTP (live page, MJPEG, /latest, /healthz, /metrics) and publishes label changes over MQTT.
It stops at the end of a file. With ``--keep-dir`` (or ``keep.dir``) it keeps the frames
worth labelling (low confidence, near the threshold, disagreement, chosen classes, a random
sample) as JPEG + JSON sidecar pairs, on a writer thread that never slows inference. With
``--config``, settings come from a device profile; precedence: flags > ``--set`` >
``EDGEKIT_<SECTION>_<KEY>`` environment variables > the profile > defaults.
``doctor`` checks the machine (and what a profile needs, and lists the cameras);
``unit`` prints the systemd unit for a profile. ``selftest`` replays the golden cases
stored in a model by ``convert`` on this machine (decoder, resizer, interpreter) and checks
the file against the sha256 in the manifest beside it: exit 0 when they pass (or the model
has none: skipped, said in one line), 1 with one line per failed case.

Exit status: 0 done (and after SIGTERM, at any moment, start-up included: a requested
stop); 1 an error, said in one line on stderr; 2 bad usage; 130 after SIGINT (Ctrl-C).
A signal always ends in one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import (
    EXIT_ERROR,
    EXIT_OK,
    EdgekitError,
    Parser,
    cli_main,
    float_in,
    int_at_least,
)
from .settings import INTERPOLATIONS, check_threads

_positive_int = int_at_least(1)


def threads_arg(text: str) -> int:
    """An argparse type: an interpreter thread count within 1..4 x CPU cores."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
    try:
        return check_threads(n)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_unit_float = float_in(0.0, 1.0)


def _http_address(text: str) -> tuple[str | None, int]:
    """``[HOST:]PORT`` -> (host or None, port)."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected [HOST:]PORT with a port 0..65535, got "
                                         f"{text[:60]!r}")
    return host or None, number


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, type=Path, default=None,
                   help="the model file: .tflite (float, int8 or Edge TPU) or .onnx")
    p.add_argument("--labels", type=Path, default=None,
                   help="label file (one per line, or 'index label'); default: the manifest "
                        "beside the model")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="interpreter CPU threads, up to 4 x the cores (default: the "
                        "backend's choice)")
    p.add_argument("--edgetpu", nargs="?", const=True, default=False, metavar="DEVICE",
                   help="run on the Edge TPU (optionally 'usb', 'usb:N' or 'pci:N')")
    p.add_argument("--input-mean", type=float, default=None,
                   help="pixel mean for a model with no manifest (input = (pixel-mean)/std)")
    p.add_argument("--input-std", type=float, default=None,
                   help="pixel std for a model with no manifest")
    p.add_argument("--interpolation", choices=INTERPOLATIONS, default=None,
                   help="how images are shrunk (default: the manifest's; 'area' without one)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for ``python -m edge_runtime``; each command sets ``func``."""
    parser = Parser(prog="python -m edge_runtime", description="edgekit on-device runtime")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("classify", help="classify image files")
    _add_model_args(c)
    c.add_argument("--top-k", type=_positive_int, default=3, help="classes to print per image")
    c.add_argument("--threshold", type=_unit_float, default=0.0, help="minimum score to print")
    c.add_argument("--json", action="store_true", help="one JSON object per image per line")
    c.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="image files to classify (JPEG, PNG, BMP, ...)")
    c.set_defaults(func=_cmd_classify)

    r = sub.add_parser("run", help="classify a camera or video stream")
    _add_model_args(r, required=False)
    r.add_argument("--config", type=Path, default=None, help="device profile (YAML)")
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a profile setting, e.g. --set model.threads=2")
    r.add_argument("--source", default=None,
                   help="camera index, /dev/video*, video file, URL or GStreamer pipeline "
                        "(cameras: python -m edge_runtime doctor)")
    r.add_argument("--output", type=Path, default=None,
                   help="append JSON lines to this file instead of stdout")
    r.add_argument("--loop", action="store_true", help="replay a video file endlessly")
    r.add_argument("--realtime", action="store_true",
                   help="play a video file at its frame rate, newest frame only, as a camera "
                        "would (default: every frame, as fast as possible)")
    r.add_argument("--max-frames", type=_positive_int, default=None, help="stop after N frames")
    r.add_argument("--threshold", type=_unit_float, default=None,
                   help="below this score the frame's label is null (default 0)")
    r.add_argument("--http", type=_http_address, default=None, metavar="[HOST:]PORT",
                   help="serve the live page, /stream.mjpg, /latest, /healthz, /metrics "
                        "(default host 127.0.0.1; port 0 picks a free one)")
    r.add_argument("--keep-dir", type=Path, default=None, metavar="DIR",
                   help="keep frames worth labelling here (JPEG + JSON sidecar; the "
                        "profile's keep: section says which)")
    r.add_argument("--keep-max-per-minute", type=int_at_least(0), default=None, metavar="N",
                   help="kept frames per minute of the source's clock at most (0: no limit; "
                        "default keep.max_per_minute, 6)")
    r.set_defaults(func=_cmd_run)

    d = sub.add_parser("doctor", help="check this machine (and what a profile needs)")
    d.add_argument("--config", type=Path, default=None, help="device profile (YAML)")
    d.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a profile setting")
    d.add_argument("--json", action="store_true", help="one JSON object per check per line")
    d.set_defaults(func=_cmd_doctor)

    u = sub.add_parser("unit", help="print the systemd unit for a profile")
    u.add_argument("--config", type=Path, required=True, help="device profile (YAML)")
    u.add_argument("--user", default="edgekit", help="account the service runs as")
    u.add_argument("--python", default=None, help="interpreter (default: this one)")
    u.add_argument("--workdir", type=Path, default=None,
                   help="working directory (default: the project root)")
    u.set_defaults(func=_cmd_unit)

    s = sub.add_parser("selftest", help="replay the golden cases stored in a model")
    _add_model_args(s)
    s.add_argument("--json", action="store_true", help="print the report as one JSON object")
    s.add_argument("--strict", action="store_true",
                   help="fail (not skip) a model that carries no golden cases")
    s.set_defaults(func=_cmd_selftest)
    return parser


def _normalization(args: argparse.Namespace):
    from .manifest import Normalization

    if args.input_mean is None and args.input_std is None:
        return None
    try:
        return Normalization(args.input_mean if args.input_mean is not None else 0.0,
                             args.input_std if args.input_std is not None else 1.0)
    except ValueError as e:
        raise EdgekitError(str(e)) from None


def _classifier(args: argparse.Namespace):
    from .classify import Classifier

    return Classifier(args.model, labels=args.labels, threads=args.threads,
                      edgetpu=args.edgetpu, normalization=_normalization(args),
                      interpolation=args.interpolation)


def _cmd_classify(args: argparse.Namespace) -> int:
    from .preprocess import load_image

    clf = _classifier(args)
    status, shown = EXIT_OK, False
    for path in args.images:
        try:
            top = clf.classify(load_image(path), args.top_k, args.threshold)
        except EdgekitError as e:
            print(f"error: {e}", file=sys.stderr)
            status = EXIT_ERROR
            continue
        if args.json:
            print(json.dumps({"image": str(path), "top": [
                {"index": c.index, "label": c.label, "score": round(c.score, 6)} for c in top]}))
        else:
            print(f"{path}:")
            for c in top:  # "class 286", not "286 (286)", when there is no label
                name = f"{c.label} ({c.index})" if c.label != str(c.index) else f"class {c.index}"
                print(f"  {c.score:7.4f}  {name}")
            shown = True
    if shown and not clf.labels:  # after the results, on stdout: stderr keeps one error line
        print("(no labels: pass --labels FILE, or keep manifest.json beside the model)")
    return status


def _cmd_run(args: argparse.Namespace) -> int:
    from .run_command import run

    return run(args, _normalization(args))


def _cmd_selftest(args: argparse.Namespace) -> int:
    from .selftest import run_selftest

    # The classifier is made only after the file's hash checks out: a corrupted model is
    # never handed to the interpreter.
    report = run_selftest(args.model, labels=args.labels, threads=args.threads,
                          edgetpu=args.edgetpu, normalization=_normalization(args),
                          interpolation=args.interpolation, strict=args.strict)
    for line in report.failure_lines():
        print(f"selftest: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict()))
        print(report.summary(), file=sys.stderr)
    else:
        print(report.summary())
    return EXIT_OK if report.ok else EXIT_ERROR


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    return run_doctor(args.config, args.set, as_json=args.json)


def _cmd_unit(args: argparse.Namespace) -> int:
    from .config import load_config
    from .systemd import render_unit

    load_config(args.config, environ={})  # a broken profile fails here, not at boot
    try:
        print(render_unit(args.config, args.workdir, args.python, args.user), end="")
    except FileNotFoundError as e:
        raise EdgekitError(f"unit template not found: {e.filename}") from None
    return EXIT_OK


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from .redact import install_log_redaction

    install_log_redaction()  # a camera URL's password never reaches a log
    return args.func(args)
