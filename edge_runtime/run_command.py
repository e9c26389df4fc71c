"""The ``run`` command of ``python -m edge_runtime``: the camera daemon built from a device
profile and the command-line flags (model, capture, outputs, HTTP, keeping, reload on
SIGHUP), run until the source ends or a signal, and its closing line."""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .errors import EXIT_INTERRUPTED, EXIT_OK, EdgekitError, signal_received

# How a user finds a camera that did not open.
_LIST_CAMERAS = "list the cameras with: python -m edge_runtime doctor"


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


def run(args: argparse.Namespace, norm: Any) -> int:
    """``python -m edge_runtime run``: the daemon until the end of the source or a signal;
    returns the exit status. ``norm``: the ``--input-mean/--input-std`` normalization."""
    from .loop import StopFlag

    stop = StopFlag()
    restore = stop.install()  # first: a signal while loading still exits cleanly
    if signal_received() is not None:  # one came before (and a library swallowed it)
        stop.signal = signal_received()
        stop.event.set()
    try:
        summary, clf = _run_daemon(args, stop, norm)
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


def _reload(args: argparse.Namespace, norm: Any):
    """SIGHUP: the re-read profile and its model, loaded and self-tested (a failed self-test
    refuses the reload unless ``model.selftest: off``); the serving model is not touched.

    Raises:
        EdgekitError: a bad profile, a model that does not load or fails its self-test.
    """
    cfg = _run_config(args)
    clf, _ = _open_classifier(cfg, norm)
    if args.labels is not None:
        from .labels import read_labels

        clf.labels = read_labels(args.labels)
    check_model(clf, "off" if cfg.model.selftest == "off" else "fail")
    if cfg.keep.enabled:
        from .keep import KeepPolicy

        KeepPolicy(cfg.keep, cfg.classify.threshold, clf.labels)  # keep.classes vs labels
    return clf, cfg


def _run_daemon(args: argparse.Namespace, stop, norm: Any):
    """Opens everything the profile asks for, runs the loop, closes everything."""
    from .camera import parse_source
    from .loop import Daemon
    from .metrics import Metrics
    from .outputs import JsonlWriter, MqttPublisher
    from .systemd import Notifier

    cfg = _run_config(args)
    source = parse_source(cfg.camera.source_string())
    clf, delegate = _open_classifier(cfg, norm)
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
        daemon.reloader = lambda: _reload(args, norm)
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
