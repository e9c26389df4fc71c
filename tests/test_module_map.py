"""edge_runtime's module map (its ``__init__`` docstring) lists every module, and only those."""

import ast
import re

from tests.conftest import ROOT

PACKAGE = ROOT / "edge_runtime"


def _mapped() -> list[str]:
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    return re.findall(r"^    (\w+)  +\S", doc, re.M)


def test_every_edge_runtime_module_is_on_the_map():
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    mapped = _mapped()
    assert len(mapped) == len(set(mapped)), "a module is listed twice"
    assert sorted(modules - set(mapped)) == [], "add these to edge_runtime/__init__.py's map"
    assert sorted(set(mapped) - modules) == [], "the map lists modules that do not exist"
