"""Segmentation and dense maps, compared as label maps rather than as tensors.

[N, C, H, W] with C > 1: the class of a pixel is the argmax over the channel axis (axis 1); pixel
agreement with FP32 (ties counted as fractions) and mIoU against FP32 (intersections and unions summed
over the data, then averaged over the classes either model predicts). A single-channel map ([N, 1, H, W]
or [N, H, W], e.g. text-detection probability maps): the maps thresholded at map_threshold (after a
sigmoid when the FP32 map is not in [0, 1]), IoU of the foreground and pixel agreement.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ...errors import InputError
from .base import Outputs, TaskMetric, is_probability, percent, sigmoid, tie_agreement

MIOU_DEFAULT = 90.0  # mIoU against FP32, %
IOU_DEFAULT = 90.0  # foreground IoU of thresholded single-channel maps, %


class Segmentation(TaskMetric):
    name = "segmentation"
    words = {"pixel_agreement": "pixel agreement", "miou": "mIoU against FP32", "iou": "map IoU against FP32"}

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.binary: Optional[bool] = None
        self.logits = False
        self.agree = 0.0
        self.pixels = 0
        self.confusion: Optional[np.ndarray] = None
        self.inter = self.union = 0

    def _setup(self, y: np.ndarray) -> None:
        if y.ndim not in (3, 4) or (y.ndim == 4 and y.shape[1] < 1):
            raise InputError(f"segmentation needs an [N, C, H, W] or [N, H, W] output; '{self.output}' has shape "
                             f"{list(y.shape)}; choose --task generic or the right --task-output")
        self.binary = y.ndim == 3 or y.shape[1] == 1
        self.logits = self.binary and not is_probability(y)

    def update(self, ref: Outputs, cand: Outputs, labels: Optional[np.ndarray]) -> None:
        r, c = ref[self.output].astype(np.float64), cand[self.output].astype(np.float64)
        if self.binary is None:
            self._setup(r)
        if self.binary:
            if self.logits:
                r, c = sigmoid(r), sigmoid(c)
            rb, cb = r > self.config.map_threshold, c > self.config.map_threshold
            self.agree += float(np.sum(rb == cb))
            self.pixels += rb.size
            self.inter += int(np.sum(rb & cb))
            self.union += int(np.sum(rb | cb))
            return
        classes = r.shape[1]
        self.agree += float(tie_agreement(r, c, axis=1).sum())
        self.pixels += r.size // classes
        idx = r.argmax(1).ravel() * classes + c.argmax(1).ravel()
        conf = np.bincount(idx, minlength=classes * classes).reshape(classes, classes)
        self.confusion = conf if self.confusion is None else self.confusion + conf

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.pixels:
            out["pixel_agreement"] = percent(self.agree, self.pixels)
        if self.binary:
            if self.union:
                out["iou"] = percent(self.inter, self.union)
            else:
                self.unavailable["iou"] = (f"neither map has a pixel above {self.config.map_threshold:g} on this data; "
                                           "validate on real inputs")
            self.unavailable["miou"] = "the output is a single-channel map: gate on iou"
        elif self.confusion is not None:
            inter = np.diag(self.confusion).astype(np.float64)
            union = self.confusion.sum(0) + self.confusion.sum(1) - inter
            seen = union > 0
            out["miou"] = 100.0 * float(np.mean(inter[seen] / union[seen]))
            self.unavailable["iou"] = "the output has several classes: gate on miou"
        return out

    def primary(self, labels: bool) -> str:
        return "iou" if self.binary else "miou"

    def default_gates(self, labels: bool) -> list[tuple[str, str, float]]:
        return [("iou", ">=", IOU_DEFAULT)] if self.binary else [("miou", ">=", MIOU_DEFAULT)]
