"""Per-frame inference: BGR camera frame straight into the input tensor, invoke, scores."""

from __future__ import annotations

import time

import cv2
import numpy as np

from .classify import Classifier, dequantize, set_input, softmax
from .preprocess import center_crop


class FrameClassifier:
    """Classifies BGR frames with a :class:`Classifier`, preprocessing once per frame.

    The frame is centre-cropped (a view, when the manifest says so), resized in BGR into a
    reusable buffer, then converted to RGB by ``cv2.cvtColor`` writing straight into the
    interpreter's input tensor when the model takes raw uint8 pixels (the usual case).
    Resizing before the channel swap gives the same pixels as :meth:`Classifier.scores`
    on the RGB frame, with one small conversion instead of a full-frame one. Other inputs
    (float, int8, normalised) go through :func:`edge_runtime.classify.set_input`.

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
        self._buf = np.empty((spec.height, spec.width, 3), np.uint8)
        out = self.interpreter.get_output_details()[0]
        self._out_index = out["index"]
        self._out_scale = float(out["quantization"][0])
        self._out_zp = int(out["quantization"][1])
        self.last_preprocess_ms = 0.0
        self.last_invoke_ms = 0.0

    def _resized(self, bgr: np.ndarray) -> np.ndarray:
        """The frame cropped as the manifest says and resized to the model's input (BGR)."""
        if bgr.ndim == 2 or bgr.shape[2] == 1:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        elif bgr.shape[2] == 4:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_BGRA2BGR)
        h, w = self.size
        if self.classifier.resize == "center_crop":
            bgr = center_crop(bgr, w / h)
        if bgr.shape[0] == h and bgr.shape[1] == w:
            return bgr
        shrinking = bgr.shape[0] * bgr.shape[1] > h * w
        cv2.resize(bgr, (w, h), dst=self._buf,
                   interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        return self._buf

    def write_input(self, bgr: np.ndarray) -> None:
        """Preprocesses a BGR frame into the input tensor."""
        small = self._resized(bgr)
        keep_bgr = self.classifier.bgr_input
        if self.direct:
            view = self.interpreter.tensor(self.spec.index)()
            if keep_bgr:
                view[0][...] = small
            else:
                cv2.cvtColor(small, cv2.COLOR_BGR2RGB, dst=view[0])
            del view  # never hold a tensor view across invoke()
            return
        img = small if keep_bgr else cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        set_input(self.interpreter, self.spec, img, self.classifier.normalization, "stretch")

    def scores(self, bgr: np.ndarray) -> np.ndarray:
        """Per-class probabilities for a BGR frame of any size.

        Raises:
            cv2.error, ValueError: a frame that cannot be converted (the caller counts it).
        """
        t0 = time.perf_counter()
        self.write_input(bgr)
        t1 = time.perf_counter()
        self.interpreter.invoke()
        t2 = time.perf_counter()
        self.last_preprocess_ms = (t1 - t0) * 1000.0
        self.last_invoke_ms = (t2 - t1) * 1000.0
        self.classifier.last_invoke_ms = self.last_invoke_ms
        raw = self.interpreter.get_tensor(self._out_index).reshape(-1)  # a copy
        s = dequantize(raw, self._out_scale, self._out_zp)
        return softmax(s) if self.classifier.apply_softmax else s
