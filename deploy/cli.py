"""Command line of the deploy tool.

Usage:
    python -m deploy deploy (--host USER@HOST [--port 22] | --inventory hosts.ini)
                            --config device_configs/NAME.yaml --model M.tflite
                            [--ssh-key PATH] [--wheelhouse DIR] [--wheel W.whl] [--keep 3]
                            [--serial 100%] [--max-fail-percent 0] [--health-timeout 60]
    python -m deploy rollback (--host USER@HOST [--port 22] | --inventory hosts.ini)
    python -m deploy collect (--host USER@HOST [--port 22] | --inventory hosts.ini)
                             --out field/ [--keep-dir DIR] [--remove] [--batch-mb 64]
    python -m deploy bench-fleet (--host USER@HOST [--port 22] | --inventory hosts.ini)
                             [--out bench-fleet/] [--timeout 600] [--runs 50] [--threads N]
                             [--forks 10] [--include RESULTS]...
    (deploy, rollback, collect, bench-fleet: [--ssh-key PATH] [--ssh-args '-o ...']
                                [--accept-new-host-key] [--quiet])
    python -m deploy monitor --inventory hosts.ini --out monitoring/ [--config P.yaml]
                             [--model M.tflite] [--token-file F] [--check] [--help]

``deploy`` builds the edgekit wheel from this checkout (or takes ``--wheel``), uploads the
model, its manifest and labels, and the profile, and on each device installs
``~/edgekit/releases/ID``, self-tests the model with the device's interpreter, switches
``~/edgekit/current`` atomically and restarts the systemd service (when there is one),
switching back when anything fails. ``rollback`` returns to the previous release.
One line per host at the end: host, result, release, seconds, reason.
``collect`` brings the frames the devices kept (jpg + sidecar pairs under the keep dir,
``keep.dir`` of the active release unless ``--keep-dir``) home into ``OUT/<host>/``,
verified by sha256; ``--remove`` deletes from a device only what is verified at home. One
line per problem frame, then one per host: ``host: N frames copied (X MB), F failed,
A already here, removed R``.
``bench-fleet`` runs ``python -m benchmarks`` on each device's active release (every model
it holds, accuracy on its held-out images, the device's environment; stopped after
``--timeout`` s), writes ``OUT/<host>/results.json`` and merges every device's into
``OUT/report.md`` (one row per device x variant; emulated devices say so). One line per
host: ``host: N row(s) (variant top-1 ...), release R, S s on the device`` or why not.

Exit status: 0 every host deployed (or was already current) / rolled back / collected
whole / benchmarked; 1 a host failed, was refused (another deploy running) or unreachable,
a frame did not come home, or bad input; 2 bad usage; 130 SIGINT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_runtime.errors import (
    EXIT_ERROR,
    EXIT_OK,
    PERCENT,
    PORT,
    Parser,
    cli_main,
    float_in,
    int_at_least,
    int_in,
)

_port = PORT
_count = int_at_least(1)
_percent = PERCENT
_megabytes = float_in(0.001, 100000, "megabytes")


def _serial(text: str) -> str:
    body = text[:-1] if text.endswith("%") else text
    if not body.isdigit() or int(body) < 1 or (text.endswith("%") and int(body) > 100):
        raise argparse.ArgumentTypeError(f"expected hosts per batch (N or N%), got "
                                         f"{text[:40]!r}")
    return text


def _connection_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="one device, [USER@]HOST")
    where.add_argument("--inventory", type=Path, help="Ansible inventory of devices")
    p.add_argument("--port", type=_port, default=None, help="SSH port with --host (default 22)")
    p.add_argument("--ssh-key", type=Path, default=None, help="SSH private key")
    p.add_argument("--ssh-args", default="",
                   help="extra ssh options, e.g. '-o UserKnownHostsFile=FILE'")
    p.add_argument("--accept-new-host-key", action="store_true",
                   help="trust a device's host key on first contact (ssh's accept-new); "
                        "a changed key is still refused")
    p.add_argument("--quiet", action="store_true", help="hide ansible's output")


def _target_args(p: argparse.ArgumentParser) -> None:
    _connection_args(p)
    p.add_argument("--serial", type=_serial, default="100%",
                   help="hosts updated at a time (rolling update): N or N%%")
    p.add_argument("--max-fail-percent", type=_percent, default=0,
                   help="stop the remaining batches when more hosts than this fail")
    p.add_argument("--health-timeout", type=_count, default=60,
                   help="seconds to wait for /healthz to report fresh frames (systemd only)")
    p.add_argument("--no-service", action="store_true",
                   help="leave systemd alone (only install, self-test and switch)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for ``python -m deploy``."""
    parser = Parser(prog="python -m deploy", description="deploy edgekit models to devices")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    d = sub.add_parser("deploy", help="deploy a model and profile")
    _target_args(d)
    d.add_argument("--config", type=Path, required=True, help="device profile (YAML)")
    d.add_argument("--model", type=Path, required=True, help="the .tflite model")
    d.add_argument("--wheel", type=Path, default=None,
                   help="a prebuilt edgekit wheel (default: built from this checkout)")
    d.add_argument("--wheelhouse", type=Path, default=None,
                   help="folder of dependency wheels for devices without internet")
    d.add_argument("--keep", type=_count, default=3, help="releases kept on the device")
    d.add_argument("--python", default="python3", help="the device's Python for the venv")
    d.add_argument("--heldout", type=Path, default=None, metavar="FOLDER",
                   help="held-out images the release carries for bench-fleet's accuracy "
                        "(one subfolder per label; default: a few dozen of the test split "
                        "of the run the model was exported from)")
    d.set_defaults(func=_cmd_deploy)
    r = sub.add_parser("rollback", help="return each device to its previous release")
    _target_args(r)
    r.set_defaults(func=_cmd_rollback)
    c = sub.add_parser("collect", help="bring the frames devices kept home")
    _connection_args(c)
    c.add_argument("--out", type=Path, required=True,
                   help="home folder of collected frames (OUT/<host>/...)")
    c.add_argument("--keep-dir", default=None,
                   help="the device's keep dir (default: keep.dir of its active release; "
                        "relative: to the SSH user's home)")
    c.add_argument("--remove", action="store_true",
                   help="delete from the device the frames verified at home (sha256)")
    c.add_argument("--batch-mb", type=_megabytes, default=64.0,
                   help="MB packed and fetched per round (a resumed run repeats at most one)")
    c.set_defaults(func=_cmd_collect)
    b = sub.add_parser("bench-fleet", help="benchmark each device's active release there, "
                                           "merged into one cross-device report")
    _connection_args(b)
    b.add_argument("--out", type=Path, default=Path("bench-fleet"),
                   help="OUT/<host>/ per device, the merged report in OUT/ (default "
                        "bench-fleet/)")
    b.add_argument("--timeout", type=int_in(10, 86400, "seconds"), default=600,
                   help="seconds one device's benchmark may take before it is stopped")
    b.add_argument("--runs", type=_count, default=50, help="timed runs per row")
    b.add_argument("--warmup", type=int_at_least(0), default=5, help="untimed warm-up runs")
    b.add_argument("--threads", type=_count, default=None,
                   help="interpreter threads (default: every core of each device)")
    b.add_argument("--forks", type=_count, default=10, help="devices benchmarked at once")
    b.add_argument("--include", type=Path, action="append", default=[], metavar="RESULTS",
                   help="other results (results.json or its folder) merged into the report; "
                        "repeatable")
    b.set_defaults(func=_cmd_bench_fleet)
    from .monitor import add_parser as add_monitor  # python -m deploy monitor

    add_monitor(sub)
    return parser


def _target(args: argparse.Namespace):
    from .core import Target, parse_host

    if args.host is not None:
        parse_host(args.host)  # a bad one is an error before anything runs
    elif args.port is not None:
        print("warning: --port applies to --host only; the inventory's ansible_port is used",
              file=sys.stderr)
    return Target(args.host, args.inventory, args.port, args.ssh_key, args.ssh_args,
                  args.accept_new_host_key)


def _report(results) -> int:
    from .core import summary_table

    print(summary_table(results))
    if not results:
        print("error: no host in the inventory", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK if all(r.ok for r in results) else EXIT_ERROR


def _log(args: argparse.Namespace):
    import subprocess

    return subprocess.DEVNULL if args.quiet else sys.stderr


def _cmd_deploy(args: argparse.Namespace) -> int:
    from .core import deploy

    return _report(deploy(_target(args), args.model, args.config, wheel=args.wheel,
                          wheelhouse=args.wheelhouse, keep=args.keep,
                          health_timeout=args.health_timeout, python=args.python,
                          serial=args.serial, max_fail_percent=args.max_fail_percent,
                          no_service=args.no_service, log=_log(args),
                          heldout=args.heldout))


def _cmd_rollback(args: argparse.Namespace) -> int:
    from .core import rollback

    return _report(rollback(_target(args), args.health_timeout, args.serial,
                            args.max_fail_percent, no_service=args.no_service,
                            log=_log(args)))


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def _cmd_collect(args: argparse.Namespace) -> int:
    from .collect import collect

    if args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out} is a file, expected a folder", file=sys.stderr)
        return EXIT_ERROR
    results = collect(_target(args), args.out, keep_dir=args.keep_dir, remove=args.remove,
                      batch_mb=args.batch_mb, log=_log(args))
    for r in results:
        for problem in r.problems:
            print(f"{r.host}: {problem}")
    for r in results:
        print(r.line())
    if not results:
        print("error: no host in the inventory", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK if all(r.ok for r in results) else EXIT_ERROR


def _cmd_bench_fleet(args: argparse.Namespace) -> int:
    from .bench_fleet import bench_fleet

    if args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out} is a file, expected a folder", file=sys.stderr)
        return EXIT_ERROR
    results, report = bench_fleet(_target(args), args.out, runs=args.runs, warmup=args.warmup,
                                  threads=args.threads, timeout_s=args.timeout,
                                  forks=args.forks, include=args.include, log=_log(args))
    for r in results:
        print(r.line())
    if report is not None:
        print(f"wrote {report}")
    if not results:
        print("error: no host in the inventory", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK if all(r.ok for r in results) else EXIT_ERROR
