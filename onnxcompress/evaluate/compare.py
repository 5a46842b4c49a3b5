"""Metrics between a reference and a candidate, computed on outputs already produced by the runner."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np


def topk(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Top-k accuracy in percent."""
    flat = logits.reshape(len(logits), -1)
    k = min(k, flat.shape[1])
    top = np.argpartition(-flat, k - 1, axis=1)[:, :k]
    return float(100.0 * np.mean(np.any(top == labels.reshape(-1, 1), axis=1)))


class MetricAccumulator:
    """Output metrics accumulated batch by batch, so outputs of different shapes (sequence lengths)
    need no concatenation: agreement (argmax over the last axis), per-sample cosine, SQNR from summed
    noise and signal, max abs and max relative error."""

    def __init__(self) -> None:
        self.agree = self.positions = 0
        self.cos: list[np.ndarray] = []
        self.noise = self.signal = 0.0
        self.max_abs = self.max_ref = 0.0
        self.classifier = True

    def update(self, ref: np.ndarray, cand: np.ndarray) -> "MetricAccumulator":
        r = ref.astype(np.float64)
        c = cand.astype(np.float64)
        if r.ndim >= 2 and r.shape[-1] > 1:
            self.agree += int(np.sum(r.argmax(-1) == c.argmax(-1)))
            self.positions += int(np.prod(r.shape[:-1]))
        else:
            self.classifier = False
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
        out: dict[str, float] = {}
        if self.classifier and self.positions:
            out["agreement"] = 100.0 * self.agree / self.positions
        cos = np.concatenate(self.cos) if self.cos else np.ones(1)
        out["cosine"] = float(cos.mean())
        out["cosine_min"] = float(cos.min())
        out["sqnr_db"] = _db(self.signal, self.noise)
        out["max_abs_error"] = self.max_abs
        out["max_rel_error"] = self.max_abs / self.max_ref if self.max_ref > 0 else 0.0
        return out


def output_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    """Agreement (argmax over the last axis), cosine, SQNR (dB), max abs and max rel error."""
    return MetricAccumulator().update(ref, cand).result()


def _db(signal: float, noise: float) -> float:
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def sqnr(ref: np.ndarray, cand: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    return _db(float(np.sum(ref.astype(np.float64) ** 2)), float(np.sum((ref.astype(np.float64) - cand) ** 2)))


def compare_outputs(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray],
                    labels: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Per-output metrics, plus top-1/top-5 of both when labels are given (first output = logits)."""
    return compare_batches([(ref, cand)], labels)


def compare_batches(pairs, labels: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Like compare_outputs over an iterable of (ref outputs, cand outputs) batches, in data order."""
    acc: dict[str, MetricAccumulator] = {}
    hits = {("reference", 1): 0, ("reference", 5): 0, ("candidate", 1): 0, ("candidate", 5): 0}
    seen = 0
    first = None
    for ref, cand in pairs:
        first = first or next(iter(ref))
        for name, r in ref.items():
            if name in cand:
                acc.setdefault(name, MetricAccumulator()).update(r, cand[name])
        n = len(ref[first])
        if labels is not None:
            lab = labels[seen:seen + n]
            for tag, outs in (("reference", ref), ("candidate", cand)):
                for k in (1, 5):
                    hits[(tag, k)] += topk(outs[first], lab, k) * len(lab) / 100.0
        seen += n
    result: dict[str, Any] = {"outputs": {name: a.result() for name, a in acc.items()}}
    if labels is not None and seen:
        for (tag, k), h in hits.items():
            result[f"{tag}_top{k}"] = 100.0 * h / seen
        result["top1_drop"] = result["reference_top1"] - result["candidate_top1"]
    return result
