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
``run`` is the camera daemon: it reads frames from SRC (camera index, /dev/video*, video
file, URL, GStreamer pipeline, picamera2) on a capture thread, classifies the newest one
and writes one JSON line per result; optionally it serves HTTP (live page, MJPEG,
/latest, /healthz, /metrics) and publishes label changes over MQTT. It stops at the end
of a file. With ``--keep-dir`` (or ``keep.dir``) it keeps the frames worth labelling (low
confidence, near the threshold, disagreement, chosen classes, a random sample) as JPEG +
JSON sidecar pairs, on a writer thread that never slows inference. With ``--config``,
settings come from a device profile; precedence: flags > ``--set`` >
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
import signal
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EdgekitError,
    Parser,
    cli_main,
    float_in,
    int_at_least,
    signal_received,
)
from .settings import INTERPOLATIONS, check_threads

# How a user finds a camera that did not open.
_LIST_CAMERAS = "list the cameras with: python -m edge_runtime doctor"


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


def _flag_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The settings the command-line flags give, typed, by section (None: not given)."""
    given = {
        "model": {"path": args.model, "threads": args.threads,
                  "interpolation": args.interpolation},
        "camera": {"source": args.source, "loop": args.loop or None,
                   "realtime": args.realtime or None},
        "classify": {"threshold": args.threshold},
        "output": {"jsonl": args.output},
        "http": {},
        "keep": {"dir": args.keep_dir, "max_per_minute": args.keep_max_per_minute},
    }
    if args.edgetpu:
        given["model"]["delegate"] = "edgetpu"
        if isinstance(args.edgetpu, str):
            given["model"]["edgetpu_device"] = args.edgetpu
    if args.http is not None:
        host, port = args.http
        given["http"] = {"enabled": True, "port": port, "host": host}
    return {section: {k: v for k, v in values.items() if v is not None}
            for section, values in given.items()}


def _run_config(args: argparse.Namespace):
    """The device profile with the command-line flags applied on top (highest precedence)."""
    from .config import load_config

    if args.config is None and (args.model is None or args.source is None):
        raise EdgekitError("run needs --model and --source, or --config PROFILE.yaml")
    return load_config(args.config, args.set, flags=_flag_overrides(args))


def _open_classifier(cfg, norm):
    """The profile's model and where it runs ("edgetpu", "cpu" or the ONNX provider).

    On a missing Edge TPU, or an ONNX model whose first requested provider (TensorRT or
    CUDA on a Jetson) is missing, the profile's fallback model when one is set (said once
    on stderr).
    """
    from .classify import Classifier

    m = cfg.model
    edgetpu = (m.edgetpu_device or True) if m.delegate == "edgetpu" else False
    providers = m.provider_list()
    try:
        clf = Classifier(m.path, threads=m.threads, edgetpu=edgetpu, normalization=norm,
                         interpolation=m.interpolation, providers=providers,
                         engine_cache=m.engine_cache)
        if clf.provider is not None and providers and m.fallback and \
                clf.provider not in [_full_provider(p) for p in providers]:
            raise EdgekitError(f"ONNX Runtime has none of the providers {','.join(providers)} "
                               f"here (it would run on {clf.provider})")
        where = clf.provider or ("edgetpu" if edgetpu else "cpu")
        return clf, where
    except EdgekitError as e:
        if not ((edgetpu or providers) and m.fallback):
            raise
        print(f"warning: {e}; falling back to the CPU model {m.fallback}", file=sys.stderr)
        return (Classifier(m.fallback, threads=m.threads, normalization=norm,
                           interpolation=m.interpolation), "cpu (fallback)")


def _full_provider(name: str) -> str:
    from .onnx_backend import SHORT_NAMES

    return SHORT_NAMES.get(name, name)


def check_model(clf, mode: str):
    """Replays the model's golden cases (``model.selftest``); returns the report.

    Raises:
        EdgekitError: they fail and ``mode`` is "fail" (each failure said on stderr first).
    """
    from .selftest import run_selftest

    if mode == "off":
        return None
    report = run_selftest(clf.model_path, classifier=clf)
    for line in report.failure_lines():
        print(f"selftest: {line}", file=sys.stderr)
    clf.selftest_status = report.status
    if not report.ok and mode == "fail":
        raise EdgekitError(report.summary() + "; refusing to serve (model.selftest: warn "
                           "serves anyway)")
    if not report.ok:
        print(f"warning: {report.summary()}; serving anyway (model.selftest: warn)",
              file=sys.stderr)
    return report


def _cmd_run(args: argparse.Namespace) -> int:
    from .loop import StopFlag

    stop = StopFlag()
    restore = stop.install()  # first: a signal while loading still exits cleanly
    if signal_received() is not None:  # one came before (and a library swallowed it)
        stop.signal = signal_received()
        stop.event.set()
    try:
        summary, clf = _run_daemon(args, stop)
    finally:
        restore()
    why = f"stopped by signal {stop.signal}" if stop.signal else "done"
    print(f"{why}: {summary['frames']} frames in {summary['seconds']} s "
          f"({summary['fps']} fps, mean inference {summary['mean_inference_ms']} ms, "
          f"backend {clf.backend.name} {clf.backend.version})"
          + (f"; {summary['unreadable']} frames could not be read (damaged or truncated "
             "file)" if summary.get("unreadable") else "")
          + _kept_text(summary.get("keeper")), file=sys.stderr)
    return EXIT_INTERRUPTED if stop.signal == signal.SIGINT else EXIT_OK


def _kept_text(keeper) -> str:
    """``; kept N frames in DIR (not kept: M rate_limit, ...)`` for the final line."""
    if keeper is None:
        return ""
    counts = keeper.counts()
    causes: dict[str, int] = {}
    for (_, cause), n in counts["dropped"].items():
        causes[cause] = causes.get(cause, 0) + n
    text = f"; kept {sum(counts['kept'].values())} frames in {keeper.store.root}"
    return text + (" (not kept: " + ", ".join(f"{n} {c}" for c, n in sorted(causes.items()))
                   + ")" if causes else "")


def _start_capture(source, cfg):
    """Starts the capture; a camera that does not open says how to list the cameras."""
    from .capture import Capture

    try:
        return Capture(source, cfg.camera, cfg.watchdog).start()
    except EdgekitError as e:
        if source.kind not in ("camera", "device"):
            raise
        raise EdgekitError(f"{e}; {_LIST_CAMERAS}") from None


def _reload(args: argparse.Namespace):
    """SIGHUP: the re-read profile and its model, loaded and self-tested (a failed self-test
    refuses the reload unless ``model.selftest: off``); the serving model is not touched.

    Raises:
        EdgekitError: a bad profile, a model that does not load or fails its self-test.
    """
    cfg = _run_config(args)
    clf, _ = _open_classifier(cfg, _normalization(args))
    if args.labels is not None:
        from .labels import read_labels

        clf.labels = read_labels(args.labels)
    check_model(clf, "off" if cfg.model.selftest == "off" else "fail")
    if cfg.keep.enabled:
        from .keep import KeepPolicy

        KeepPolicy(cfg.keep, cfg.classify.threshold, clf.labels)  # keep.classes vs labels
    return clf, cfg


def _run_daemon(args: argparse.Namespace, stop):
    """Opens everything the profile asks for, runs the loop, closes everything."""
    from .camera import parse_source
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
    check_model(clf, cfg.model.selftest)
    if stop.event.is_set():
        return {"frames": 0, "seconds": 0.0, "fps": 0.0, "mean_inference_ms": 0.0}, clf
    with ExitStack() as stack:
        capture = _start_capture(source, cfg)
        stack.callback(capture.stop)
        metrics = Metrics({"backend": clf.backend.name, "version": clf.backend.version,
                           "model": str(clf.model_path), "delegate": delegate,
                           "profile": cfg.name,
                           "selftest": getattr(clf, "selftest_status", "off")})
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
        keeper = _start_keeper(cfg, clf, source)
        if keeper is not None:
            # A normal end (a file, --max-frames) writes every frame it kept; a signal
            # waits 1 s at most (the daemon stops within 2 s).
            stack.callback(lambda: keeper.stop(1.0 if stop.event.is_set() else 30.0))
        daemon = Daemon(clf, capture, cfg, writer, stop, args.max_frames, mqtt=mqtt,
                        notifier=notifier, metrics=metrics, keeper=keeper)
        daemon.reloader = lambda: _reload(args)
        if cfg.http.enabled:
            from .server import Server

            server = Server(cfg.http, metrics, daemon.status, cfg.watchdog.health_max_age_s,
                            cfg.name, keeper.store if keeper else None).start()
            stack.callback(server.stop)
            daemon.server = server
        threads = cfg.model.threads or "default"
        print(f"edgekit: {clf.model_path} on {clf.backend.name} {clf.backend.version} "
              f"({delegate}, threads {threads}); source {source.kind} {source.display}"
              + (f"; http {daemon.server.url}" if daemon.server else "")
              + (f"; keeping frames in {cfg.keep.dir}" if keeper else ""), file=sys.stderr)
        summary = daemon.run()
        summary["keeper"] = keeper  # stopped (its queue written) when the stack closes
        return summary, clf


def _start_keeper(cfg, clf, source):
    """The started :class:`edge_runtime.keep.Keeper` when ``keep.dir`` is set, else None.

    Raises:
        EdgekitError: ``keep.classes`` names an unknown label, or the folder cannot be made.
    """
    if not cfg.keep.enabled:
        return None
    from .keep import Keeper, file_fps
    from .redact import redact

    keep_dir = Path(cfg.keep.dir).expanduser()
    try:
        keep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgekitError(f"cannot create the keep folder: {e.strerror or e} "
                           f"[{keep_dir}]") from None
    fps = None if source.live else file_fps(str(source.target), cfg.camera.fps)
    return Keeper(cfg.keep, cfg.classify.threshold, clf.labels, clf.model_path,
                  redact(str(source.target)), fps).start()


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
