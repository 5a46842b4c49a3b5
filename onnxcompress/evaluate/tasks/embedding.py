"""Embeddings: what a retrieval or similarity use sees, i.e. the geometry between samples.

Output [N, D] (or [N, T, D], mean-pooled over axis 1). Per-sample cosine against FP32 says little on its
own: sentence embeddings share a large common direction, so cosine stays near 1 while the part that
tells samples apart is lost. So within the validation set (its first MAX_SAMPLES samples) the metric
also compares the sample-to-sample cosine similarities: nearest-neighbour agreement (% of samples whose
nearest other sample is the same in both models) and rank correlation (Spearman's rho between each
sample's similarities to the others, averaged).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ...errors import InputError
from .base import Outputs, TaskMetric, percent

MAX_SAMPLES = 2048
RANK_CORRELATION_DEFAULT = 0.97  # in-test: 8-bit per-tensor weights 0.9998, 3-bit 0.966 (NN agreement 81%)


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, axis=1, kind="stable"), axis=1, kind="stable").astype(np.float64)


class Embedding(TaskMetric):
    name = "embedding"
    words = {"cosine": "mean cosine similarity", "nn_agreement": "nearest-neighbour agreement",
             "rank_correlation": "similarity rank correlation"}

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.ref: list[np.ndarray] = []
        self.cand: list[np.ndarray] = []
        self.kept = 0
        self.cos_sum = 0.0
        self.n = 0

    def update(self, ref: Outputs, cand: Outputs, labels: Optional[np.ndarray]) -> None:
        r, c = ref[self.output].astype(np.float64), cand[self.output].astype(np.float64)
        if r.ndim == 3:
            r, c = r.mean(1), c.mean(1)
        if r.ndim != 2:
            raise InputError(f"embedding needs an [N, D] or [N, T, D] output; '{self.output}' has shape "
                             f"{list(ref[self.output].shape)}; choose --task generic or the right --task-output")
        ru, cu = _unit(r), _unit(c)
        self.cos_sum += float(np.sum(ru * cu))
        self.n += len(r)
        take = min(len(r), MAX_SAMPLES - self.kept)
        if take > 0:
            self.ref.append(ru[:take])
            self.cand.append(cu[:take])
            self.kept += take

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.n:
            out["cosine"] = self.cos_sum / self.n
        if self.kept < 3:
            self.unavailable["nn_agreement"] = self.unavailable["rank_correlation"] = (
                f"needs at least 3 samples to compare neighbours, the data has {self.kept}")
            return out
        r, c = np.concatenate(self.ref), np.concatenate(self.cand)
        off = ~np.eye(len(r), dtype=bool)
        sr, sc = (r @ r.T)[off].reshape(len(r), -1), (c @ c.T)[off].reshape(len(c), -1)
        out["nn_agreement"] = percent(float(np.sum(sr.argmax(1) == sc.argmax(1))), len(r))
        a, b = _ranks(sr), _ranks(sc)
        a -= a.mean(1, keepdims=True)
        b -= b.mean(1, keepdims=True)
        den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
        out["rank_correlation"] = float(np.mean(np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), 1.0)))
        return out

    def primary(self, labels: bool) -> str:
        return "rank_correlation"

    def default_gates(self, labels: bool) -> list[tuple[str, str, float]]:
        return [("rank_correlation", ">=", RANK_CORRELATION_DEFAULT)]
