"""Command line of the on-device runtime.

Usage:
    python -m edge_runtime classify --model M.tflite [--labels L] [--top-k K] [--json] IMAGE...
    python -m edge_runtime run --model M.tflite --source SRC [--output FILE] [--max-frames N]
    python -m edge_runtime run --config device_configs/NAME.yaml [--set section.key=value ...]
    python -m edge_runtime doctor [--config device_configs/NAME.yaml]
    python -m edge_runtime unit --config device_configs/NAME.yaml [--user USER]

``classify`` prints the top-k classes of each image; with ``--json``, one object per line:
``{"image": path, "top": [{"index": int, "label": str, "score": float}, ...]}``.
``run`` is the camera daemon: it reads frames from SRC (camera index, /dev/video*, video
file, URL, GStreamer pipeline, picamera2) on a capture thread, classifies the newest one
and writes one JSON line per result; optionally it serves HTTP (live page, MJPEG,
/latest, /healthz, /metrics) and publishes label changes over MQTT. It stops at the end
of a file; SIGINT/SIGTERM stop it cleanly with status 0. With ``--config``, settings come
from a device profile; precedence: flags and ``--set`` > ``EDGEKIT_<SECTION>_<KEY>``
environment variables > the profile > defaults. ``doctor`` checks the machine (and what a
profile needs); ``unit`` prints the systemd unit for a profile.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import ExitStack
from pathlib import Path

from .errors import EXIT_ERROR, EXIT_OK, EdgekitError


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _unit_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {v}")
    return v


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, type=Path, default=None,
                   help="the .tflite model")
    p.add_argument("--labels", type=Path, default=None,
                   help="label file (one per line, or 'index label'); default: the manifest "
                        "beside the model")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="interpreter CPU threads (default: the backend's choice)")
    p.add_argument("--edgetpu", nargs="?", const=True, default=False, metavar="DEVICE",
                   help="run on the Edge TPU (optionally 'usb', 'usb:N' or 'pci:N')")
    p.add_argument("--input-mean", type=float, default=None,
                   help="pixel mean for a model with no manifest (input = (pixel-mean)/std)")
    p.add_argument("--input-std", type=float, default=None,
                   help="pixel std for a model with no manifest")
    p.add_argument("--interpolation", choices=("linear", "area"), default=None,
                   help="how images are shrunk (default: the manifest's; 'area' without one)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for ``python -m edge_runtime``."""
    parser = argparse.ArgumentParser(
        prog="python -m edge_runtime", description="edgekit on-device runtime",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("classify", help="classify image files",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_model_args(c)
    c.add_argument("--top-k", type=_positive_int, default=3, help="classes to print per image")
    c.add_argument("--threshold", type=_unit_float, default=0.0, help="minimum score to print")
    c.add_argument("--json", action="store_true", help="one JSON object per image per line")
    c.add_argument("images", nargs="+", type=Path, metavar="IMAGE")

    r = sub.add_parser("run", help="classify a camera or video stream",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_model_args(r, required=False)
    r.add_argument("--config", type=Path, default=None, help="device profile (YAML)")
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a profile setting, e.g. --set model.threads=2")
    r.add_argument("--source", default=None,
                   help="camera index, /dev/video*, video file, URL or GStreamer pipeline")
    r.add_argument("--output", type=Path, default=None,
                   help="append JSON lines to this file instead of stdout")
    r.add_argument("--loop", action="store_true", help="replay a video file endlessly")
    r.add_argument("--max-frames", type=_positive_int, default=None, help="stop after N frames")
    r.add_argument("--threshold", type=_unit_float, default=None,
                   help="below this score the frame's label is null (default 0)")
    r.add_argument("--http", default=None, metavar="[HOST:]PORT",
                   help="serve the live page, /stream.mjpg, /latest, /healthz, /metrics "
                        "(default host 127.0.0.1; port 0 picks a free one)")

    d = sub.add_parser("doctor", help="check this machine (and what a profile needs)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--config", type=Path, default=None, help="device profile (YAML)")
    d.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a profile setting")
    d.add_argument("--json", action="store_true", help="one JSON object per check per line")

    u = sub.add_parser("unit", help="print the systemd unit for a profile",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    u.add_argument("--config", type=Path, required=True, help="device profile (YAML)")
    u.add_argument("--user", default="edgekit", help="account the service runs as")
    u.add_argument("--python", default=None, help="interpreter (default: this one)")
    u.add_argument("--workdir", type=Path, default=None,
                   help="working directory (default: the project root)")
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
    status = EXIT_OK
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
            for c in top:
                print(f"  {c.score:7.4f}  {c.label} ({c.index})")
    return status


def _run_config(args: argparse.Namespace):
    """The device profile with the command-line flags applied on top (highest precedence)."""
    from .config import load_config

    flags = list(args.set)
    for key, value in (("model.path", args.model), ("camera.source", args.source),
                       ("model.threads", args.threads), ("classify.threshold", args.threshold),
                       ("output.jsonl", args.output),
                       ("model.interpolation", args.interpolation)):
        if value is not None:
            flags.append(f"{key}={value}")
    if args.edgetpu:
        flags.append("model.delegate=edgetpu")
        if isinstance(args.edgetpu, str):
            flags.append(f"model.edgetpu_device={args.edgetpu}")
    if args.loop:
        flags.append("camera.loop=true")
    if args.http is not None:
        host, sep, port = args.http.rpartition(":")
        flags += ["http.enabled=true", f"http.port={port}"] + ([f"http.host={host}"]
                                                              if sep and host else [])
    if args.config is None and (args.model is None or args.source is None):
        raise EdgekitError("run needs --model and --source, or --config PROFILE.yaml")
    return load_config(args.config, flags)


def _open_classifier(cfg, norm):
    """The profile's model and where it runs ("edgetpu" or "cpu").

    On a missing Edge TPU, the profile's CPU fallback model when one is set (said on stderr).
    """
    from .classify import Classifier

    m = cfg.model
    edgetpu = (m.edgetpu_device or True) if m.delegate == "edgetpu" else False
    try:
        return (Classifier(m.path, threads=m.threads, edgetpu=edgetpu, normalization=norm,
                           interpolation=m.interpolation),
                "edgetpu" if edgetpu else "cpu")
    except EdgekitError as e:
        if not (edgetpu and m.fallback):
            raise
        print(f"warning: {e}; falling back to the CPU model {m.fallback}", file=sys.stderr)
        return (Classifier(m.fallback, threads=m.threads, normalization=norm,
                           interpolation=m.interpolation), "cpu (fallback)")


def _cmd_run(args: argparse.Namespace) -> int:
    from .loop import StopFlag

    stop = StopFlag()
    restore = stop.install()  # first: a signal while loading still exits cleanly
    try:
        summary, clf = _run_daemon(args, stop)
    finally:
        restore()
    why = f"stopped by signal {stop.signal}" if stop.signal else "done"
    print(f"{why}: {summary['frames']} frames in {summary['seconds']} s "
          f"({summary['fps']} fps, mean inference {summary['mean_inference_ms']} ms, "
          f"backend {clf.backend.name} {clf.backend.version})"
          + (f"; {summary['unreadable']} frames could not be read (damaged or truncated "
             "file)" if summary.get("unreadable") else ""), file=sys.stderr)
    return EXIT_OK


def _run_daemon(args: argparse.Namespace, stop):
    """Opens everything the profile asks for, runs the loop, closes everything."""
    from .camera import parse_source
    from .capture import Capture
    from .loop import Daemon
    from .metrics import Metrics
    from .outputs import JsonlWriter, MqttPublisher
    from .systemd import Notifier

    cfg = _run_config(args)
    source = parse_source(cfg.camera.source_string())
    clf, delegate = _open_classifier(cfg, _normalization(args))
    if args.labels is not None:
        from .labels import read_labels

        clf.labels = read_labels(args.labels)
    if stop.event.is_set():
        return {"frames": 0, "seconds": 0.0, "fps": 0.0, "mean_inference_ms": 0.0}, clf
    with ExitStack() as stack:
        capture = Capture(source, cfg.camera, cfg.watchdog).start()
        stack.callback(capture.stop)
        metrics = Metrics({"backend": clf.backend.name, "version": clf.backend.version,
                           "model": str(clf.model_path), "delegate": delegate,
                           "profile": cfg.name})
        writer = None
        if cfg.output.jsonl.lower() != "off":
            writer = JsonlWriter(cfg.output.jsonl, cfg.output.max_bytes, cfg.output.backups)
            stack.callback(writer.close)
        mqtt = None
        if cfg.mqtt.enabled:
            mqtt = MqttPublisher(cfg.mqtt)
            stack.callback(mqtt.close)
        notifier = Notifier(enabled=cfg.watchdog.systemd)
        stack.callback(notifier.close)
        stack.callback(notifier.stopping)
        daemon = Daemon(clf, capture, cfg, writer, stop, args.max_frames, mqtt=mqtt,
                        notifier=notifier, metrics=metrics)
        if cfg.http.enabled:
            from .server import Server

            server = Server(cfg.http, metrics, daemon.status, cfg.watchdog.health_max_age_s,
                            cfg.name).start()
            stack.callback(server.stop)
            daemon.server = server
        threads = cfg.model.threads or "default"
        print(f"edgekit: {clf.model_path} on {clf.backend.name} {clf.backend.version} "
              f"({delegate}, threads {threads}); source {source.kind} {source.display}"
              + (f"; http {daemon.server.url}" if daemon.server else ""), file=sys.stderr)
        return daemon.run(), clf


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


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from .redact import install_log_redaction, redact

    install_log_redaction()  # a camera URL's password never reaches a log
    try:
        if args.command == "classify":
            return _cmd_classify(args)
        if args.command == "doctor":
            return _cmd_doctor(args)
        if args.command == "unit":
            return _cmd_unit(args)
        return _cmd_run(args)
    except EdgekitError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_OK
