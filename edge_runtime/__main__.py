"""Runs the edge runtime CLI: ``python -m edge_runtime``."""

import sys

from .cli import main

sys.exit(main())
