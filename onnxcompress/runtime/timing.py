"""Interleaved timing of ORT sessions (one round = one run of each, in rotating order, so machine noise hits them
alike). The base of `evaluate.bench` (bench, convert) and of the quantizer's speed check (quant.search)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional

import numpy as np
import onnxruntime as ort


@dataclass
class Timing:
    name: Hashable
    times_ms: list[float] = field(default_factory=list)

    def summary(self, batch: int) -> dict[str, Any]:
        t = np.asarray(self.times_ms)
        med = float(np.median(t))
        return {
            "runs": int(t.size),
            "median_ms": med,
            "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)),
            "mean_ms": float(t.mean()),
            "min_ms": float(t.min()),
            "throughput_per_s": float(batch * 1000.0 / med) if med > 0 else float("inf"),
        }


def time_sessions(sessions: dict[Hashable, ort.InferenceSession], feeds: dict[Hashable, dict[str, np.ndarray]],
                  warmup: int = 10, runs: int = 100, time_budget: Optional[float] = None,
                  on_round: Optional[Callable[[int], None]] = None) -> dict[Hashable, Timing]:
    """Interleaved timing of several sessions on their own feeds. With a time budget (seconds), rounds
    continue until it is spent (at least 3 rounds); otherwise `runs` rounds."""
    names = list(sessions)
    timings = {n: Timing(n) for n in names}
    for _ in range(warmup):
        for n in names:
            sessions[n].run(None, feeds[n])
    start = time.perf_counter()
    i = 0
    while True:
        order = names[i % len(names):] + names[: i % len(names)]
        for n in order:
            t0 = time.perf_counter()
            sessions[n].run(None, feeds[n])
            timings[n].times_ms.append((time.perf_counter() - t0) * 1000.0)
        i += 1
        if on_round:
            on_round(i)
        if time_budget is not None:
            if time.perf_counter() - start >= time_budget and i >= 3:
                break
        elif i >= runs:
            break
    return timings
