"""The task-metric protocol and the helpers several tasks share.

A task metric maps (reference outputs, candidate outputs, labels) to named floats, streamed batch by
batch (outputs of different batches may differ in shape). Rates are in percent; `cosine` and
`rank_correlation` are coefficients in [-1, 1]. Higher is better except where a name says drop or error.
A metric that cannot be measured on the data is left out of the result and its reason is kept in
`unavailable`, so a gate on it fails with that reason instead of passing on nothing.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ...config import TaskConfig

Outputs = dict[str, np.ndarray]


class TaskMetric:
    name = ""
    # metric -> words for gate messages; the gates module reads them
    words: dict[str, str] = {}

    def __init__(self, config: TaskConfig, output: str, why: str = "") -> None:
        self.config, self.output, self.why = config, output, why
        self.unavailable: dict[str, str] = {}

    def update(self, ref: Outputs, cand: Outputs, labels: Optional[np.ndarray]) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        raise NotImplementedError

    def primary(self, labels: bool) -> str:
        """The metric the accuracy search (quant fallback, auto mode) optimizes."""
        raise NotImplementedError

    def default_gates(self, labels: bool) -> list[tuple[str, str, float]]:
        """(metric, comparison, threshold) applied when the user sets no gate on that metric."""
        return []


def tie_agreement(ref: np.ndarray, cand: np.ndarray, axis: int = -1) -> np.ndarray:
    """Per position, the chance that argmax(ref) == argmax(cand) when ties are broken at random:
    |Tr & Tc| / (|Tr| |Tc|), Tr/Tc the sets of maximal entries. int8 outputs take few distinct values,
    so ties are common; argmax (first wins) or argpartition (arbitrary) would make the score depend on
    the tie-break. NaN rows count as no agreement."""
    tr = ref == ref.max(axis=axis, keepdims=True)
    tc = cand == cand.max(axis=axis, keepdims=True)
    both = np.sum(tr & tc, axis=axis)
    denom = np.sum(tr, axis=axis) * np.sum(tc, axis=axis)
    return np.where(denom > 0, both / np.maximum(denom, 1), 0.0)


def topk_credit(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per sample, the chance the label is in the top k when ties are broken at random: with g scores
    strictly above the label's and e equal to it (itself included), min(1, max(0, (k - g) / e))."""
    s = scores[np.arange(len(scores)), labels][:, None]
    greater = np.sum(scores > s, axis=1)
    equal = np.sum(scores == s, axis=1)
    return np.where(equal > 0, np.clip((k - greater) / np.maximum(equal, 1), 0.0, 1.0), 0.0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


def is_probability(x: np.ndarray) -> bool:
    return bool(x.size == 0 or (np.nanmin(x) >= -1e-3 and np.nanmax(x) <= 1 + 1e-3))


def percent(num: float, den: float) -> float:
    return 100.0 * num / den
