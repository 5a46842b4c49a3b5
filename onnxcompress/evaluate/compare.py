"""Metrics between a reference and a candidate, computed on outputs already produced by the runner:
tensor closeness per output (no argmax: that belongs to tasks that have a class axis) and the task
metric (evaluate.tasks)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..config import TaskConfig


def topk(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Top-k accuracy in percent; a tie at the k-th place counts as a fraction (tasks.base.topk_credit)."""
    from .tasks.base import topk_credit

    flat = logits.reshape(len(logits), -1).astype(np.float64)
    return float(100.0 * np.mean(topk_credit(flat, labels.astype(np.int64), k))) if len(flat) else 0.0


class MetricAccumulator:
    """Tensor closeness accumulated batch by batch, so outputs of different shapes (sequence lengths)
    need no concatenation: per-sample cosine, SQNR from summed noise and signal, max abs and max
    relative error."""

    def __init__(self) -> None:
        self.cos: list[np.ndarray] = []
        self.noise = self.signal = 0.0
        self.max_abs = self.max_ref = 0.0

    def update(self, ref: np.ndarray, cand: np.ndarray) -> "MetricAccumulator":
        r = ref.astype(np.float64)
        c = cand.astype(np.float64)
        rf = r.reshape(len(r), -1) if r.ndim else r.reshape(1, -1)
        cf = c.reshape(len(c), -1) if c.ndim else c.reshape(1, -1)
        denom = np.linalg.norm(rf, axis=1) * np.linalg.norm(cf, axis=1)
        self.cos.append(np.where(denom > 0, (rf * cf).sum(1) / np.maximum(denom, 1e-300), 1.0))
        self.noise += float(np.sum((r - c) ** 2))
        self.signal += float(np.sum(r ** 2))
        if r.size:
            self.max_abs = max(self.max_abs, float(np.abs(r - c).max()))
            self.max_ref = max(self.max_ref, float(np.abs(r).max()))
        return self

    def result(self) -> dict[str, float]:
        cos = np.concatenate(self.cos) if self.cos else np.ones(1)
        return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()), "sqnr_db": snr_db(self.signal, self.noise),
                "max_abs_error": self.max_abs, "max_rel_error": self.max_abs / self.max_ref if self.max_ref > 0 else 0.0}


def output_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    """Cosine, SQNR (dB), max abs and max rel error; for a classifier-shaped output [N, C>1] also
    `agreement` (tie-aware, as the classification task measures it)."""
    out = MetricAccumulator().update(ref, cand).result()
    if ref.ndim == 2 and ref.shape[1] > 1:
        from .tasks.base import tie_agreement

        out["agreement"] = float(100.0 * tie_agreement(ref.astype(np.float64), cand.astype(np.float64)).mean())
    return out


def snr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise): inf when there is no noise, -inf when there is no signal."""
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def sqnr(ref: np.ndarray, cand: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    return snr_db(float(np.sum(ref.astype(np.float64) ** 2)), float(np.sum((ref.astype(np.float64) - cand) ** 2)))


def compare_outputs(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], labels: Optional[np.ndarray] = None,
                    task: TaskConfig = TaskConfig(), user_metric: Optional[str] = None) -> dict[str, Any]:
    """Per-output closeness and the task metric, on one batch of outputs."""
    return compare_batches([(ref, cand)], labels, task, user_metric)


def compare_batches(pairs, labels: Optional[np.ndarray] = None, task: TaskConfig = TaskConfig(),
                    user_metric: Optional[str] = None) -> dict[str, Any]:
    """Like compare_outputs over an iterable of (ref outputs, cand outputs) batches, in data order.

    Returns {"outputs": {name: closeness}, "task": {name, why, output, metrics, unavailable}}; for a
    classifier with labels also the top-level reference_/candidate_ top1/top5 and top1_drop."""
    from .tasks import TaskRun

    acc: dict[str, MetricAccumulator] = {}
    run = TaskRun(task, user_metric)
    seen = 0
    for ref, cand in pairs:
        n = len(next(iter(ref.values())))
        for name, r in ref.items():
            if name in cand:
                acc.setdefault(name, MetricAccumulator()).update(r, cand[name])
        run.update(ref, cand, None if labels is None else labels[seen:seen + n])
        seen += n
    result: dict[str, Any] = {"outputs": {name: a.result() for name, a in acc.items()}, "task": run.result()}
    m = result["task"]["metrics"]
    if "top1" in m and result["task"]["name"] == "classification":
        result.update({"reference_top1": m["reference_top1"], "candidate_top1": m["top1"],
                       "reference_top5": m["reference_top5"], "candidate_top5": m["top5"], "top1_drop": m["top1_drop"]})
    return result
