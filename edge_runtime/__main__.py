"""Runs the edge runtime CLI: ``python -m edge_runtime`` (usage and exit codes: ``cli``)."""

from .errors import exit_with, install_signal_handlers

# Before anything heavy (numpy, OpenCV, the interpreter) loads: a SIGTERM or Ctrl-C during
# start-up then ends in one line and status 0 or 130, never a traceback or a bare -15.
install_signal_handlers()


def _main() -> int:
    from .cli import main

    return main()


exit_with(_main)
