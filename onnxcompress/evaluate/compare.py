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


def output_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    """Agreement (argmax over the last axis), cosine, SQNR (dB), max abs and max rel error."""
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    out: dict[str, float] = {}
    if r.ndim >= 2 and r.shape[-1] > 1:
        out["agreement"] = float(100.0 * np.mean(r.argmax(-1) == c.argmax(-1)))
    rf, cf = r.reshape(len(r), -1) if r.ndim else r.reshape(1, -1), c.reshape(len(c), -1) if c.ndim else c.reshape(1, -1)
    denom = np.linalg.norm(rf, axis=1) * np.linalg.norm(cf, axis=1)
    cos = np.where(denom > 0, (rf * cf).sum(1) / np.maximum(denom, 1e-300), 1.0)
    out["cosine"] = float(cos.mean())
    out["cosine_min"] = float(cos.min())
    out["sqnr_db"] = sqnr(r, c)
    err = np.abs(r - c)
    out["max_abs_error"] = float(err.max()) if err.size else 0.0
    scale = float(np.abs(r).max()) if r.size else 0.0
    out["max_rel_error"] = float(out["max_abs_error"] / scale) if scale > 0 else 0.0
    return out


def sqnr(ref: np.ndarray, cand: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    noise = float(np.sum((ref.astype(np.float64) - cand) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def compare_outputs(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray],
                    labels: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Per-output metrics, plus top-1/top-5 of both when labels are given (first output = logits)."""
    result: dict[str, Any] = {"outputs": {}}
    for name, r in ref.items():
        if name in cand:
            result["outputs"][name] = output_metrics(r, cand[name])
    if labels is not None and ref:
        first = next(iter(ref))
        for tag, outs in (("reference", ref), ("candidate", cand)):
            result[f"{tag}_top1"] = topk(outs[first], labels, 1)
            result[f"{tag}_top5"] = topk(outs[first], labels, 5)
        result["top1_drop"] = result["reference_top1"] - result["candidate_top1"]
    return result
