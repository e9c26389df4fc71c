"""Errors, named exit codes and the plumbing every edgekit CLI shares.

One exception type (:class:`EdgekitError`) that a CLI turns into a single clear line; the
named exit codes; :func:`install_signal_handlers` and :func:`cli_main`, which make SIGTERM
and SIGINT at any moment (start-up imports included) end with one line and status 0
(SIGTERM) or 130 (SIGINT); the argparse parser (no abbreviated flags), help formatter and
argument types every CLI uses.
This module imports only the standard library: the CLIs import it before anything heavy.
"""

from __future__ import annotations

import argparse
import functools
import os
import reprlib
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn


class EdgekitError(Exception):
    """A user-facing problem: bad input, a missing file, a model that cannot be used.

    The CLIs print ``error: <message>`` on stderr and exit non-zero; no traceback.
    """


# Named exit codes shared by every CLI.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C), as shells report 128 + 2
EXIT_TERMINATED = EXIT_OK  # SIGTERM is a requested stop (systemd, docker stop): not a failure

_SIGNAL_EXIT = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}

_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 60
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 4
_BRIEF.maxlevel = 2


def brief(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, never built in full.

    Error messages quote what was received; a value read from a file or a flag may be
    huge (a YAML bomb, a pasted blob), and one error line must stay one short line.
    """
    text = _BRIEF.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; raised in the main thread by the installed handler.

    A :class:`KeyboardInterrupt`, so every ``except KeyboardInterrupt`` clean-up (a
    partial run folder, a half-written model) runs for SIGTERM too.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []  # signals seen by the handler, in order


def _raise_handler(signum: int, _frame: object) -> None:
    _received.append(signum)
    if len(_received) > 1:
        # The first one is still unwinding (or was swallowed by a library): stop now.
        _exit_now(signum, _SIGNAL_EXIT[signum])
    raise Interrupted(signum)


def _exit_now(signum: int, status: int) -> NoReturn:
    try:
        sys.stderr.write(f"{_stop_line(signum)}\n")
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, RuntimeError, ValueError):  # a closed or re-entered stream
        pass
    os._exit(status)


def _stop_line(signum: int) -> str:
    return ("interrupted (SIGINT)" if signum == signal.SIGINT
            else f"stopped by {signal.Signals(signum).name}")


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread from now on.

    Call it first thing in a ``__main__`` (before heavy imports): a signal during start-up
    then ends as one line and status 0 or 130 through :func:`cli_main`, not as a
    ``KeyboardInterrupt`` traceback or a bare -15. A second signal exits at once.
    """
    _received.clear()
    for s in _SIGNAL_EXIT:
        signal.signal(s, _raise_handler)


def signal_received() -> int | None:
    """The first SIGINT/SIGTERM caught by the installed handlers, or None."""
    return _received[0] if _received else None


def cli_main(main: Callable[..., int] | None = None, *, interrupted: str | None = None):
    """Decorates a CLI's ``main(argv=None) -> int``: every way out is one line and a code.

    * :class:`EdgekitError` -> ``error: MESSAGE``, :data:`EXIT_ERROR`;
    * :class:`OSError` (disk full, permission) -> ``error: WHAT: FILE``, :data:`EXIT_ERROR`;
    * SIGTERM -> ``stopped by SIGTERM``, :data:`EXIT_TERMINATED` (0);
    * SIGINT / Ctrl-C -> ``interrupted (SIGINT)``, :data:`EXIT_INTERRUPTED` (130);
    * a closed stdout (``| head``) -> :data:`EXIT_OK`;
    * any other error after SIGINT/SIGTERM arrived (a library that wrapped the interruption
      in its own exception) -> the stop line and status, as for the signal itself.

    Args:
        main: the function (when used as ``@cli_main``).
        interrupted: what to add after an interruption line, e.g. what was kept.
    """

    def wrap(fn: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> int:
            try:
                status = fn(*args, **kwargs)
            except KeyboardInterrupt as e:
                signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
                status = _SIGNAL_EXIT[signum]
                _say(_stop_line(signum) + (f"; {interrupted}" if interrupted else ""))
            except Exception as e:
                signum = signal_received()
                if signum is None:
                    return _error_status(e)  # re-raises what is not a user-facing error
                # A library turned the interruption into its own error: numpy's import,
                # hit inside its C module, raises ImportError with a multi-line "bad
                # install" advice. The user asked for a stop; say that, with its status.
                status = _SIGNAL_EXIT[signum]
                _say(_stop_line(signum) + (f"; {interrupted}" if interrupted else ""))
            return status

        return wrapper

    return wrap(main) if main is not None else wrap


def _error_status(e: Exception) -> int:
    """The one line and status for an error escaping a CLI's main; others re-raised."""
    if isinstance(e, EdgekitError):
        _say(f"error: {e}")
        return EXIT_ERROR
    if isinstance(e, BrokenPipeError):
        # Python would complain again when flushing the closed stdout at exit.
        _silence_stdout()
        return EXIT_OK
    if isinstance(e, OSError):
        what = e.strerror or e.__class__.__name__
        _say(f"error: {what}: {e.filename}" if e.filename else f"error: {what}")
        return EXIT_ERROR
    raise e


def _say(line: str) -> None:
    from .redact import redact  # a camera URL's password never reaches the terminal

    try:
        print(redact(line), file=sys.stderr)
    except (OSError, ValueError):
        pass


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def exit_with(main: Callable[[], int]) -> NoReturn:
    """``sys.exit(main())`` for a ``__main__``, with a signal during shutdown handled too.

    After ``main`` returns, a SIGINT/SIGTERM (e.g. while Python joins threads at exit)
    ends the process at once with the status ``main`` returned, never a traceback.
    """
    try:
        status = cli_main(main)()
        for s in _SIGNAL_EXIT:
            signal.signal(s, lambda signum, _frame, st=status: _exit_now(signum, st))
    except KeyboardInterrupt as e:  # in the instant between main's return and the above
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        _exit_now(signum, _SIGNAL_EXIT[signum])
    sys.exit(status)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` once: not when the help already says its default, and not
    for ``None``/``False`` defaults (which mean "not given", not a value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``lo``, with a one-line error quoting the text."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") \
                from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
        return v
    return parse


# The CLIs' other argparse types, each a one-line error quoting the text it was given.

def int_in(lo: int, hi: int, what: str = "an integer") -> Callable[[str], int]:
    """An argparse type: an integer in ``lo..hi``, e.g. ``int_in(1, 65535, "a port")``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = lo - 1
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected {what} {lo}..{hi}, got {text[:40]!r}")
        return v
    return parse


PORT = int_in(1, 65535, "a port")
PERCENT = int_in(0, 100, "a percentage")


def float_in(lo: float, hi: float, what: str = "a number") -> Callable[[str], float]:
    """An argparse type: a finite number in ``[lo, hi]``."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = float("nan")
        if not lo <= v <= hi:  # NaN fails too
            raise argparse.ArgumentTypeError(f"expected {what} in [{lo:g}, {hi:g}], got "
                                             f"{text[:40]!r}")
        return v
    return parse


def float_above(lo: float, what: str = "a number") -> Callable[[str], float]:
    """An argparse type: a finite number > ``lo`` (a duration, a rate)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = float("nan")
        if not (v > lo and v != float("inf")):
            raise argparse.ArgumentTypeError(f"expected {what} > {lo:g}, got {text[:40]!r}")
        return v
    return parse


_UNRECOGNIZED_BY = "_edgekit_unrecognized_by"  # namespace slot: the parser that left extras


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ... (see PROG --help)``), status 2,
    :class:`HelpFormatter` and no abbreviated flags; subcommand parsers inherit all three.

    ``allow_abbrev=False``: a prefix such as ``--variant`` for ``--variants`` or ``--thread``
    for ``--threads`` once ran silently as the longer flag. An unknown flag now names the
    (sub)command whose ``--help`` lists the right ones, with the closest flag when one is.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._unrecognized_by: Parser | None = None

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            # The innermost parser returns first; its name travels up in the namespace.
            by = getattr(ns, _UNRECOGNIZED_BY, None) or self
            setattr(ns, _UNRECOGNIZED_BY, by)
            self._unrecognized_by = by
        return ns, extras

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extras = self.parse_known_args(args, namespace)
        if hasattr(ns, _UNRECOGNIZED_BY):
            delattr(ns, _UNRECOGNIZED_BY)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def error(self, message: str) -> NoReturn:
        """Prints ``error: MESSAGE (see PROG --help)`` on one line and exits with status 2;
        for unknown flags PROG is the subcommand that was given them."""
        by = self
        if message.startswith("unrecognized arguments") and self._unrecognized_by:
            by = self._unrecognized_by
            message = brief_line(message, 200) + by._close_flags(message)
        print(f"error: {message} (see {by.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)

    def _close_flags(self, message: str) -> str:
        """``; did you mean --variants?`` for a mistyped flag, or ""."""
        import difflib

        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        hints = []
        for word in message.split(":", 1)[-1].split():
            flag = word.split("=", 1)[0]
            if flag.startswith("--"):
                hints += difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
        return f"; did you mean {', '.join(dict.fromkeys(hints))}?" if hints else ""


def run_subcommand(parser: Parser, argv: list[str] | None, commands: tuple[str, ...],
                   default: str, own_args: tuple[Callable[[list[str]], int], ...] = ()) -> int:
    """Parses ``argv`` (default: ``sys.argv[1:]``) and returns what the chosen subcommand's
    ``func`` returns. A first word that names no command (nor help) means ``default``; a
    command whose ``func`` is in ``own_args`` parses its own arguments: it is called with
    the words after its name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in (*commands, "-h", "--help"):
        argv.insert(0, default)
    args, rest = parser.parse_known_args(argv)
    if args.func in own_args:
        return args.func(argv[1:])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)[:200]}")
    return args.func(args)


def brief_line(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
