"""The four CLIs' parsers and shared error handler, in-process (fast): one-line errors,
each default shown once, choices taken from the settings, threads bounded, typed flags,
subcommands, and the error-to-exit mapping."""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
from pathlib import Path

import pytest

from edge_runtime import cli, run_command
from edge_runtime.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PERCENT,
    PORT,
    EdgekitError,
    Interrupted,
    brief,
    cli_main,
    float_above,
    float_in,
    int_at_least,
    int_in,
)
from tests.conftest import ROOT

LIMIT = 4 * (os.cpu_count() or 1)


def _mains():
    from benchmarks.__main__ import main as bench_main
    from convert.__main__ import main as convert_main
    from train.__main__ import main as train_main

    return {"edge_runtime": cli.main, "convert": convert_main, "benchmarks": bench_main,
            "train": train_main}


def _parsers():
    from benchmarks.__main__ import build_parser as bench
    from convert.__main__ import build_parser as convert
    from train.__main__ import build_parser as train

    return {"edge_runtime": cli.build_parser(), "convert": convert(), "benchmarks": bench(),
            "train": train()}


def _all_helps(parser: argparse.ArgumentParser):
    yield parser.prog, parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_helps(sub)


def test_help_shows_each_default_once_and_never_none():
    for parser in _parsers().values():
        for prog, text in _all_helps(parser):
            flat = " ".join(text.split())
            assert "(default: None)" not in flat, prog
            assert "(default: False)" not in flat, prog
            assert not re.search(r"default[^()]*\)\s*\(default:", flat), (prog, flat)
    run_help = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["run"]
                        .format_help().split())
    assert "(default: the backend's choice)" in run_help


@pytest.mark.parametrize("argv,fragment", [
    (["edge_runtime", "run", "--model", "m.tflite", "--source", "0", "--threads", "100000"],
     f"argument --threads: threads 100000, expected 1..{LIMIT}"),
    (["edge_runtime", "classify", "--model", "m.tflite", "--threads", "0", "x.jpg"],
     f"argument --threads: threads 0, expected 1..{LIMIT}"),
    (["edge_runtime", "run", "--threads", "many"],
     "argument --threads: expected an integer, got 'many'"),
    (["benchmarks", "runs/x", "--threads", "1,100000"],
     f"argument --threads: threads 100000, expected 1..{LIMIT}"),
    (["benchmarks", "validate", "m.tflite", "--threads", "100000"],
     f"argument --threads: threads 100000, expected 1..{LIMIT}"),
    (["edge_runtime", "run", "--http", "host:port"],
     "argument --http: expected [HOST:]PORT with a port 0..65535, got 'host:port'"),
    (["convert", "runs/x", "--calib", "0"], "argument --calib: expected an integer >= 1"),
    (["convert", "runs/x", "--io", "int4"], "argument --io: invalid choice: 'int4'"),
    (["train", "--data", "d", "--out", "o", "--alpha", "0.3"],
     "argument --alpha: invalid choice: 0.3"),
    (["edge_runtime", "nonsense"], "argument COMMAND: invalid choice: 'nonsense'"),
    (["convert", "runs/x", "--bogus"],
     "unrecognized arguments: --bogus (see python -m convert export --help)"),
    # No abbreviations: each prefix once ran silently as the longer flag.
    (["convert", "runs/x", "--variant", "int8"], "unrecognized arguments: --variant int8; "
     "did you mean --variants? (see python -m convert export --help)"),
    (["benchmarks", "runs/x", "--thread", "1"], "unrecognized arguments: --thread 1; "
     "did you mean --threads? (see python -m benchmarks measure --help)"),
    (["train", "--data", "d", "--out", "o", "--epoch", "5"], "unrecognized arguments: "
     "--epoch 5; did you mean --epochs? (see python -m train --help)"),
    (["edge_runtime", "run", "--mod", "m.tflite"], "unrecognized arguments: --mod m.tflite; "
     "did you mean --model? (see python -m edge_runtime run --help)"),
    (["convert", "lint", "m.tflite", "--jso"],
     "unrecognized arguments: --jso; did you mean --json? (see python -m convert lint --help)"),
])
def test_usage_errors_are_one_line_with_status_2(argv, fragment, capsys):
    main = _mains()[argv[0]]
    with pytest.raises(SystemExit) as e:
        main(argv[1:])
    assert e.value.code == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_every_parser_refuses_abbreviated_flags():
    from benchmarks.abuse.__main__ import build_parser as abuse
    from benchmarks.abuse.http_load import build_parser as http_load
    from deploy.cli import build_parser as deploy

    parsers = [*_parsers().values(), abuse(), http_load(), deploy()]
    for parser in parsers:
        stack = [parser]
        while stack:
            p = stack.pop()
            assert p.allow_abbrev is False, p.prog
            for action in p._actions:
                if isinstance(action, argparse._SubParsersAction):
                    stack += action.choices.values()
    assert len(parsers) == 7


@pytest.mark.parametrize("kind,good,bad,message", [
    (int_at_least(1), {"1": 1, "300": 300}, ["0", "-3", "x", "1.5"], "expected an integer"),
    (int_in(2, 4, "a count"), {"2": 2, "4": 4}, ["1", "5", "two"], "expected a count 2..4"),
    (PORT, {"1": 1, "65535": 65535}, ["0", "65536", "http"], "expected a port 1..65535"),
    (PERCENT, {"0": 0, "100": 100}, ["-1", "101", "50%"], "expected a percentage 0..100"),
    (float_in(0.0, 1.0), {"0": 0.0, "1": 1.0, "0.5": 0.5}, ["1.01", "-0.1", "nan", "x"],
     "expected a number in [0, 1]"),
    (float_above(0), {"0.25": 0.25, "4": 4.0}, ["0", "-1", "inf", "nan", "x"],
     "expected a number > 0"),
])
def test_shared_argparse_types_accept_the_range_and_quote_what_they_refuse(kind, good, bad,
                                                                          message):
    assert {text: kind(text) for text in good} == good
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)) as e:
            kind(text)
        assert repr(text) in str(e.value) or text.lstrip("-").isdigit(), str(e.value)


def test_choices_come_from_the_settings():
    from convert.quantization import IO_TYPES
    from edge_runtime.preprocess import INTERPOLATIONS as PREPROCESS_INTERPOLATIONS
    from edge_runtime.settings import INTERPOLATIONS
    from train.augment import FLIPS
    from train.config import CACHE_CHOICES, SCHEDULES, STRATEGIES

    def choices(parser, dest, command=None):
        if command:
            parser = parser._subparsers._group_actions[0].choices[command]
        return next(a.choices for a in parser._actions if a.dest == dest)

    p = _parsers()
    assert choices(p["edge_runtime"], "interpolation", "run") is INTERPOLATIONS
    assert INTERPOLATIONS == PREPROCESS_INTERPOLATIONS
    assert choices(p["convert"], "io", "export") is IO_TYPES
    assert choices(p["train"], "lr_schedule") is SCHEDULES
    assert choices(p["train"], "strategy") is STRATEGIES
    assert choices(p["train"], "cache") is CACHE_CHOICES
    assert choices(p["train"], "flip") is FLIPS


def _run_args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["run", *argv])


def test_run_flags_become_typed_overrides_not_set_strings(tmp_path):
    args = _run_args("--model", "m.tflite", "--source", "clip.avi", "--threads", "2",
                     "--http", "0", "--realtime", "--edgetpu", "usb:1", "--output",
                     str(tmp_path / "o.jsonl"), "--set", "model.threads=3")
    assert run_command._flag_overrides(args) == {
        "model": {"path": Path("m.tflite"), "threads": 2, "delegate": "edgetpu",
                  "edgetpu_device": "usb:1"},
        "camera": {"source": "clip.avi", "realtime": True},
        "classify": {},
        "output": {"jsonl": tmp_path / "o.jsonl"},
        "http": {"enabled": True, "port": 0},
        "keep": {},
    }
    cfg = run_command._run_config(args)
    assert cfg.model.threads == 2  # the flag beats --set
    assert cfg.http.enabled and cfg.http.port == 0 and cfg.http.host == "127.0.0.1"
    assert cfg.camera.realtime and not cfg.camera.loop
    assert cfg.output.jsonl == str(tmp_path / "o.jsonl")
    host = run_command._run_config(_run_args("--model", "m", "--source", "s", "--http",
                                             "0.0.0.0:81"))
    assert (host.http.host, host.http.port) == ("0.0.0.0", 81)


def test_run_needs_a_model_and_source_or_a_profile(capsys):
    assert cli.main(["run", "--model", "m.tflite"]) == EXIT_ERROR
    assert capsys.readouterr().err == ("error: run needs --model and --source, or --config "
                                       "PROFILE.yaml\n")


def test_profile_errors_through_the_cli_are_one_line(tmp_path, capsys):
    f = tmp_path / "dup.yaml"
    f.write_text("camera:\n  source: 0\ncamera:\n  source: 1\n")
    assert cli.main(["run", "--config", str(f)]) == EXIT_ERROR
    assert capsys.readouterr().err == (f"error: invalid config file: line 3: duplicate key "
                                       f"'camera' (first at line 1) [{f}]\n")


def test_each_command_has_its_function():
    p = cli.build_parser()
    for command, func in (("classify", cli._cmd_classify), ("run", cli._cmd_run),
                          ("doctor", cli._cmd_doctor), ("unit", cli._cmd_unit)):
        extra = {"classify": ["--model", "m", "x.jpg"], "unit": ["--config", "p.yaml"]}
        assert p.parse_args([command, *extra.get(command, [])]).func is func


def test_camera_that_does_not_open_says_how_to_list_cameras(coral, capsys):
    if Path("/dev/video9").exists():
        pytest.skip("a /dev/video9 exists here")
    status = cli.main(["run", "--model", str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
                       "--source", "9", "--max-frames", "1", "--set", "output.jsonl=off"])
    assert status == EXIT_ERROR
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("INFO")]
    assert lines == ["error: cannot open video source 9 (camera); list the cameras with: "
                     "python -m edge_runtime doctor"]


# -- the shared error-to-exit handler ---------------------------------------------------

def _raising(exc: BaseException):
    @cli_main(interrupted="nothing partial")
    def main(argv=None) -> int:
        raise exc

    return main


@pytest.mark.parametrize("exc,status,line", [
    (EdgekitError("model not found: m.tflite"), EXIT_ERROR, "error: model not found: m.tflite"),
    (OSError(errno.ENOSPC, "No space left on device", "/out/x"), EXIT_ERROR,
     "error: No space left on device: /out/x"),
    (PermissionError(errno.EACCES, "Permission denied"), EXIT_ERROR, "error: Permission denied"),
    (Interrupted(signal.SIGTERM), EXIT_OK, "stopped by SIGTERM; nothing partial"),
    (Interrupted(signal.SIGINT), EXIT_INTERRUPTED, "interrupted (SIGINT); nothing partial"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted (SIGINT); nothing partial"),
])
def test_cli_main_maps_each_way_out_to_one_line_and_a_code(exc, status, line, capsys):
    assert _raising(exc)() == status
    assert capsys.readouterr().err == line + "\n"


def test_cli_main_lets_programming_errors_through():
    with pytest.raises(ZeroDivisionError):
        _raising(ZeroDivisionError("bug"))()


def test_brief_never_builds_a_huge_repr():
    nested = [["lol"] * 9] * 9
    for _ in range(7):
        nested = [nested] * 9  # 9^9 strings if expanded
    assert len(brief(nested)) <= 80
    assert brief("x" * 10**6).startswith("'xxx") and len(brief("x" * 10**6)) <= 80
    assert brief(2.0) == "2.0" and brief("cam") == "'cam'"


_ENABLED = ("E", "F", "W", "I", "B", "UP")  # pyproject.toml [tool.ruff.lint] select
_MINE = ("edge_runtime/config.py", "edge_runtime/cli.py", "edge_runtime/run_command.py",
         "edge_runtime/settings.py", "edge_runtime/__main__.py",
         "edge_runtime/errors.py", "convert/__main__.py", "benchmarks/__main__.py",
         "train/__main__.py")


def test_noqa_codes_are_for_enabled_rules_only():
    for rel in _MINE:
        for n, line in enumerate((ROOT / rel).read_text().splitlines(), 1):
            for code in re.findall(r"noqa:\s*([A-Z]+[0-9]+)", line):
                assert code.startswith(_ENABLED) and not code.startswith(
                    ("S", "BLE", "N")), f"{rel}:{n} noqa {code}: that rule is not enabled"
