"""Converter units that need no trained model: run-folder reading without TensorFlow, the
export plan, stale work folders."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

NO_TF = r"""
import sys
for name in ("tensorflow", "keras", "tf_keras"):
    sys.modules[name] = None  # any import of these now raises ImportError
import edge_runtime.runs, convert.source, convert.export, benchmarks.core
from edge_runtime.runs import Split, load_arrays, load_run, scan, stratified_split
import train.data
assert train.data.load_run is load_run and train.data.Split is Split
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")
               and sys.modules[m] is not None)
print("heavy:", heavy)
print("train:", sorted(m for m in sys.modules if m == "train" or m.startswith("train.")))
"""


def test_run_folder_reading_never_imports_tensorflow():
    r = subprocess.run([sys.executable, "-c", NO_TF], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "heavy: []" in r.stdout
    # convert and benchmarks read run folders through edge_runtime.runs, not train
    out = subprocess.run([sys.executable, "-c", "import sys, convert.source, convert.export, "
                          "benchmarks.core; print(sorted(m for m in sys.modules "
                          "if m.split('.')[0] == 'train'))"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
