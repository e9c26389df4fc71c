"""Runs the deploy CLI: ``python -m deploy`` (usage and exit codes: ``deploy.cli``)."""

from edge_runtime.errors import exit_with, install_signal_handlers

install_signal_handlers()


def _main() -> int:
    from .cli import main

    return main()


exit_with(_main)
