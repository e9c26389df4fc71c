"""edgekit's on-device runtime: TFLite/LiteRT classification of images and camera frames.

Needs only numpy, OpenCV and a TFLite interpreter; never imports TensorFlow or Keras.

The modules, by room (one flat folder: ``edge_runtime/NAME.py``; a test keeps this list
whole, so a new module is added here). Rooms, not sub-packages: 318 imports in 102 files
outside this folder name ``edge_runtime.NAME``, each room would hold 3 to 14 modules, and
this map finds a module as fast as a folder would, without moving one:

The model and its checks
    backend         finds a TFLite interpreter (LiteRT first) and the Edge TPU delegate
    tflite          the TFLite FlatBuffer: TFL3 check, schema, op names, structural checks
    onnx_backend    ONNX Runtime backend (TensorRT, CUDA or CPU on a Jetson)
    imx500_backend  the Raspberry Pi AI Camera: the sensor runs the network
    classify        scores of an image: small pure functions and the Classifier
    infer           per frame: BGR frame into the input tensor, invoke, scores
    preprocess      resize and normalise, the one implementation training uses too
    imageio         safe image reading (size checked from the header before decoding)
    labels          label files: one per line, or ``index label``
    manifest        what preprocessing and labelling the model needs
    metadata        the manifest embedded in the ``.tflite`` file itself
    integrity       is the file the model it claims to be (kind, tensor digest)
    loadcheck       loads a model in a child process: a native crash is one error line
    selftest        golden cases stored in the model, replayed on the device

Capture
    camera          one source string to a reader: camera, device, file, URL, pipeline
    capture         the capture thread: reads, paces, reopens a stalled source
    frameslot       Frame and FrameSlot, the hand-off from capture to inference

The daemon and serving
    run_command     the ``run`` command: builds the daemon from profile and flags
    loop            the main loop: newest frame in, results out, reload on SIGHUP
    smoothing       scores to a reported label: lists, moving average, hysteresis
    outputs         JSON lines (rotated) and MQTT on label change
    server          HTTP: live page, MJPEG, /latest, /healthz, /metrics, /kept
    stream          MJPEG: one encode per frame for all viewers, viewer slots
    metrics         counters and histograms as Prometheus text
    thermal         SoC temperature and Raspberry Pi throttling for /metrics
    systemd         sd_notify (READY, WATCHDOG, STATUS) and the unit file

The field loop
    keep            which frames are worth labelling, written on a writer thread
    keepstore       the keep folder on disk: names, atomic pairs, quota, listings
    drift           confidence drift against the validation split's baseline
    drift_input     input drift: does the camera still show training-like pictures

Configuration
    settings        the profile's sections as typed, validated dataclasses
    keep_settings   the ``keep:`` and ``drift:`` sections
    config          the hardened YAML loader: profile, environment, ``--set``, flags

Tooling and shared plumbing
    __main__        ``python -m edge_runtime``
    cli             the command line: classify, run, doctor, unit, selftest
    doctor          checks the machine and a profile's needs, one line each
    errors          EdgekitError, exit codes, the CLI contract, argparse types
    fileio          atomic file output and the one file SHA-256
    redact          hides credentials before text is printed, logged or served
    quiet           keeps TensorFlow's and LiteRT's C++ log lines off the terminal
    lazy            a package's public names imported on first use
    runs            training data and run folders, read without TensorFlow
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import EdgekitError
from .lazy import lazy_getattr

if TYPE_CHECKING:
    from .classify import Class, Classifier, top_k
    from .manifest import Manifest, Normalization, load_manifest
    from .preprocess import load_image

# Imported on first use (PEP 562): ``python -m edge_runtime`` runs this file before its
# ``__main__``, which must install the signal handlers before numpy and OpenCV load.
_LAZY = {"Class": ".classify", "Classifier": ".classify", "top_k": ".classify",
         "Manifest": ".manifest", "Normalization": ".manifest", "load_manifest": ".manifest",
         "load_image": ".preprocess"}

__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = ["Class", "Classifier", "EdgekitError", "Manifest", "Normalization", "load_image",
           "load_manifest", "top_k"]
