"""Generic outputs: tensor closeness per output (cosine, SQNR, max abs/rel error), no argmax.

The task result is the worst output: the lowest mean cosine and SQNR, the largest errors.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..compare import MetricAccumulator
from .base import Outputs, TaskMetric


class Generic(TaskMetric):
    name = "generic"
    words = {"cosine": "mean cosine similarity", "cosine_min": "lowest cosine similarity", "sqnr_db": "SQNR",
             "max_abs_error": "max abs error", "max_rel_error": "max rel error"}

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.acc: dict[str, MetricAccumulator] = {}

    def update(self, ref: Outputs, cand: Outputs, labels: Optional[np.ndarray]) -> None:
        for name, r in ref.items():
            if name in cand:
                self.acc.setdefault(name, MetricAccumulator()).update(r, cand[name])

    def result(self) -> dict[str, float]:
        per = [a.result() for a in self.acc.values()]
        if not per:
            return {}
        worst = {"cosine": min, "cosine_min": min, "sqnr_db": min, "max_abs_error": max, "max_rel_error": max}
        return {k: float(f(p[k] for p in per)) for k, f in worst.items()}

    def primary(self, labels: bool) -> str:
        return "cosine"

