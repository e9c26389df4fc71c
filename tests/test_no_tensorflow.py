"""edge_runtime must import and classify with TensorFlow and Keras unavailable."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = r"""
import sys
for name in ("tensorflow", "keras", "tf_keras"):
    sys.modules[name] = None  # any import of these now raises ImportError
import numpy as np
import edge_runtime
from edge_runtime import Classifier
from edge_runtime.backend import backend
clf = Classifier(sys.argv[1])
top = clf.classify(np.full((120, 160, 3), 127, np.uint8), k=2)
assert len(top) == 2, top
assert backend().name != "tensorflow", backend()
loaded = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")
          and sys.modules[m] is not None]
assert not loaded, loaded
print("ok", backend().name, top[0].label)
"""


def test_runtime_without_tensorflow(exported):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(exported / "model_int8.tflite")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok ai-edge-litert")


def test_runtime_source_never_imports_tensorflow():
    for path in (ROOT / "edge_runtime").rglob("*.py"):
        text = path.read_text()
        for bad in ("import tensorflow", "from tensorflow", "import keras", "from keras"):
            assert bad not in text, f"{path.name} contains {bad!r}"
