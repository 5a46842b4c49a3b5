"""Classification: top-1/top-5 against labels and agreement with FP32, ties counted as fractions."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ...errors import InputError
from .base import Outputs, TaskMetric, tie_agreement, topk_credit

AGREEMENT_DEFAULT = 95.0  # % of samples whose top class matches FP32 (default gate without labels)


def class_scores(y: np.ndarray, output: str) -> np.ndarray:
    """[N, C] (trailing singleton axes, e.g. [N, C, 1, 1], are dropped)."""
    flat = y.reshape(len(y), -1) if y.ndim else y.reshape(1, -1)
    if y.ndim < 2 or flat.shape[1] != y.shape[1]:
        raise InputError(f"classification needs an [N, classes] output; '{output}' has shape {list(y.shape)}; "
                         "choose the right --task (or --task-output)")
    return flat.astype(np.float64)


def label_indices(labels: np.ndarray, classes: int) -> Optional[np.ndarray]:
    """Labels as class indices, or None when they are not one class index per sample."""
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or np.all(np.mod(labels, 1) == 0)):
        return None
    lab = labels.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= classes):
        raise InputError(f"labels hold class {int(lab.max() if lab.max() >= classes else lab.min())} but the output "
                         f"has {classes} classes (0..{classes - 1}); fix the labels or choose the right output")
    return lab


class Classification(TaskMetric):
    name = "classification"
    words = {"top1": "top-1 accuracy", "top5": "top-5 accuracy", "top1_drop": "top-1 drop",
             "agreement": "prediction agreement"}

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.n = 0
        self.agree = 0.0
        self.hits = {(w, k): 0.0 for w in ("reference", "candidate") for k in (1, 5)}
        self.labelled = 0

    def update(self, ref: Outputs, cand: Outputs, labels: Optional[np.ndarray]) -> None:
        r, c = class_scores(ref[self.output], self.output), class_scores(cand[self.output], self.output)
        self.n += len(r)
        self.agree += float(tie_agreement(r, c).sum())
        if labels is None:
            return
        lab = label_indices(labels, r.shape[1])
        if lab is None:
            self.unavailable["top1"] = "the labels are not one class index per sample"
            return
        self.labelled += len(lab)
        for who, s in (("reference", r), ("candidate", c)):
            for k in (1, 5):
                self.hits[(who, k)] += float(topk_credit(s, lab, k).sum())

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.n:
            out["agreement"] = 100.0 * self.agree / self.n
        if self.labelled and "top1" not in self.unavailable:
            for (who, k), h in self.hits.items():
                out[("" if who == "candidate" else "reference_") + f"top{k}"] = 100.0 * h / self.labelled
            out["top1_drop"] = out["reference_top1"] - out["top1"]
        else:
            self.unavailable.setdefault("top1", "the data has no labels")
            self.unavailable["top1_drop"] = self.unavailable["top5"] = self.unavailable["top1"]
        return out

    def primary(self, labels: bool) -> str:
        return "top1" if labels else "agreement"

    def default_gates(self, labels: bool) -> list[tuple[str, str, float]]:
        # with labels the top-1 drop gate (ValidateConfig.max_drop, 1 point) is the default
        return [] if labels else [("agreement", ">=", AGREEMENT_DEFAULT)]
