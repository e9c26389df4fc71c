"""Per-frame inference: BGR camera frame straight into the input tensor, invoke, scores."""

from __future__ import annotations

import time

import numpy as np

from .classify import Classifier, dequantize, set_input, softmax
from .preprocess import fit_frame


class FrameClassifier:
    """Classifies BGR frames with a :class:`Classifier`, preprocessing once per frame.

    :func:`edge_runtime.preprocess.fit_frame` crops (a view), resizes the BGR frame into a
    reusable buffer and swaps channels on the small image, writing straight into the
    interpreter's input tensor when the model takes raw uint8 pixels (the usual case):
    the same pixels as :meth:`Classifier.scores` on the RGB frame, for a fraction of the
    work. Other inputs (float, int8, normalised) go through
    :func:`edge_runtime.classify.set_input`.

    The tensor view is dropped before ``invoke()``; use one instance per thread.

    Attributes:
        last_preprocess_ms: time to fill the input tensor, last frame.
        last_invoke_ms: ``invoke()`` time, last frame.
    """

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier
        self.interpreter = classifier.interpreter
        spec = classifier.spec
        self.spec = spec
        self.size = (spec.height, spec.width)
        norm = classifier.normalization
        self.direct = False
        if spec.dtype == np.uint8 and spec.scale > 0:
            step = norm.std * spec.scale
            offset = spec.zero_point - norm.mean / step
            self.direct = abs(step - 1.0) < 1e-4 and abs(offset) < 1e-3
        self._work = np.empty((spec.height, spec.width, 3), np.uint8)
        self._img = None if self.direct else np.empty_like(self._work)
        out = self.interpreter.get_output_details()[0]
        self._out_index = out["index"]
        self._out_scale = float(out["quantization"][0])
        self._out_zp = int(out["quantization"][1])
        self.last_preprocess_ms = 0.0
        self.last_invoke_ms = 0.0

    def write_input(self, bgr: np.ndarray) -> None:
        """Preprocesses a BGR frame into the input tensor."""
        c = self.classifier
        rgb = not c.bgr_input
        if self.direct:
            view = self.interpreter.tensor(self.spec.index)()
            try:
                fit_frame(bgr, self.size, c.resize, out=view[0], work=self._work, rgb=rgb,
                          interpolation=c.interpolation)
            finally:
                del view  # never hold a tensor view across invoke()
            return
        img = fit_frame(bgr, self.size, c.resize, out=self._img, work=self._work, rgb=rgb,
                        interpolation=c.interpolation)
        set_input(self.interpreter, self.spec, img, c.normalization, "stretch")

    def prepare(self, bgr: np.ndarray) -> np.ndarray:
        """The model input for a BGR frame, in a new array (safe to hand to another thread):
        what :meth:`write_input` would write, ready for :meth:`scores`' ``prepared``."""
        c = self.classifier
        return fit_frame(bgr, self.size, c.resize, rgb=not c.bgr_input,
                         interpolation=c.interpolation)

    def write_prepared(self, img: np.ndarray) -> None:
        """Writes a :meth:`prepare` result into the input tensor."""
        if self.direct:
            view = self.interpreter.tensor(self.spec.index)()
            try:
                view[0][...] = img
            finally:
                del view  # never hold a tensor view across invoke()
            return
        c = self.classifier
        set_input(self.interpreter, self.spec, img, c.normalization, "stretch")

    def scores(self, bgr: np.ndarray, prepared: np.ndarray | None = None) -> np.ndarray:
        """Per-class probabilities for a BGR frame of any size.

        Args:
            bgr: the frame.
            prepared: its :meth:`prepare` result when already made (then ``bgr`` is not
                read).

        Raises:
            cv2.error, ValueError: a frame that cannot be converted (the caller counts it).
        """
        t0 = time.perf_counter()
        if prepared is not None:
            self.write_prepared(prepared)
        else:
            self.write_input(bgr)
        bind = getattr(self.interpreter, "bind_frame", None)
        if bind is not None:  # the IMX500 classified this frame on its sensor
            bind(bgr)
        t1 = time.perf_counter()
        self.interpreter.invoke()
        t2 = time.perf_counter()
        self.last_preprocess_ms = (t1 - t0) * 1000.0
        self.last_invoke_ms = (t2 - t1) * 1000.0
        self.classifier.last_invoke_ms = self.last_invoke_ms
        raw = self.interpreter.get_tensor(self._out_index).reshape(-1)  # a copy
        s = dequantize(raw, self._out_scale, self._out_zp)
        return softmax(s) if self.classifier.apply_softmax else s
