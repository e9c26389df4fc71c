"""The one exception type every edgekit CLI turns into a single clear line."""


class EdgekitError(Exception):
    """A user-facing problem: bad input, a missing file, a model that cannot be used.

    The CLIs print ``error: <message>`` on stderr and exit non-zero; no traceback.
    """


# Named exit codes shared by every CLI.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
