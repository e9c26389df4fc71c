"""A package's public names imported on first use (PEP 562).

``python -m PACKAGE`` runs ``PACKAGE/__init__.py`` before ``__main__``, which must install
the signal handlers before anything heavy (numpy, OpenCV, TensorFlow) loads: the packages
re-export their entry points through :func:`lazy_getattr` instead of importing them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from the relative
    module ``names[name]`` on first access and keeps it in the package.

    Usage, in ``__init__.py``: ``__getattr__ = lazy_getattr(__name__, {"export": ".export"})``.
    """
    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


__all__ = ["lazy_getattr"]
