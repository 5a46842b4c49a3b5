"""The quantize stage as users call it: plain, accuracy-gated (fallback), or auto (static vs dynamic).

`--mode auto` with validation data tries static int8 (with the fallback search) and dynamic int8,
measures the drop and the batch-1 latency of each against FP32 on this machine, and keeps the fastest
one within the budget; ORT leaves that choice to the user.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import onnx

from ..data import Dataset
from ..evaluate.bench import time_sessions
from ..evaluate.runner import make_session
from ..passes.base import PassRecord
from .fallback import Budget, Evaluator, OnBest, Progress, fallback_search
from .qdq import quantize

AUTO_DEFAULT_DROP = 1.0  # points of the metric, when --mode auto gets no --max-drop


def budget_of(config) -> Budget:
    drop = AUTO_DEFAULT_DROP if config.max_drop is None else config.max_drop
    return Budget(drop, config.metric, config.max_drop_relative)


def quantize_model(model: onnx.ModelProto, calibration: Optional[Dataset], validation: Optional[Dataset], config,
                   on_best: OnBest = None, progress: Progress = None) -> tuple[onnx.ModelProto, PassRecord]:
    """Quantize per `config` (QuantConfig); validation data enables the budgeted search and auto mode."""
    say = progress or (lambda _m: None)
    if config.mode == "auto" and validation is not None:
        return _auto(model, calibration, validation, config, say, on_best)
    if config.mode == "auto":
        cfg = dataclasses.replace(config, mode="static" if calibration is not None else "dynamic")
        q, rec = _gated(model, calibration, None, cfg, say, on_best)
        rec.stats["auto"] = {"chosen": cfg.mode, "why": "no validation data to compare modes: "
                             + ("static int8 (calibration data given)" if cfg.mode == "static" else
                                "dynamic int8 (no calibration data)")}
        return q, rec
    return _gated(model, calibration, validation, config, say, on_best)


def _gated(model, calibration, validation, config, say, on_best):
    if config.mode == "static" and config.max_drop is not None and validation is not None:
        return fallback_search(model, calibration, validation, config, budget_of(config), config.fallback_seconds,
                               config.fallback_layers, on_best, say)
    q, rec = quantize(model, calibration, config)
    if on_best:
        on_best(q, rec)
    return q, rec


def _latencies(models: dict[str, onnx.ModelProto], validation: Dataset, seconds: float = 4.0) -> dict[str, float]:
    """Median batch-1 latency (ms), one thread, sessions timed in turn (fair on a noisy machine)."""
    import numpy as np

    feed = next(validation.batches(1))
    sessions = {k: make_session(m, threads=1, spinning=False) for k, m in models.items()}
    timings = time_sessions(sessions, {k: feed for k in sessions}, warmup=5, time_budget=seconds)
    return {k: float(np.median(t.times_ms)) for k, t in timings.items()}


def _auto(model, calibration, validation, config, say, on_best):
    budget = budget_of(config)
    ev = Evaluator(model, validation, budget)
    found: dict[str, tuple[onnx.ModelProto, PassRecord, float]] = {}
    if calibration is not None:
        say("auto: static int8")
        q, rec = fallback_search(model, calibration, validation, dataclasses.replace(config, mode="static"), budget,
                                 config.fallback_seconds, config.fallback_layers, None, say)
        found["static"] = (q, rec, rec.stats["fallback"]["drop"])
    say("auto: dynamic int8")
    q, rec = quantize(model, None, dataclasses.replace(config, mode="dynamic"))
    found["dynamic"] = (q, rec, ev.drop(q))
    lat = _latencies({"fp32": model, **{k: v[0] for k, v in found.items()}}, validation)
    rows = [{"mode": k, "drop": v[2], "fits": v[2] <= ev.limit, "latency_ms": lat[k], "speedup": lat["fp32"] / lat[k]}
            for k, v in found.items()]
    fitting = [r for r in rows if r["fits"]]
    if fitting:
        chosen = min(fitting, key=lambda r: r["latency_ms"])
        why = (f"{chosen['mode']}: fastest within the budget ({ev.metric} drop {chosen['drop']:.3f} <= {ev.limit:.3f}, "
               f"{chosen['speedup']:.2f}x FP32 at batch 1)")
        others = [r for r in rows if r is not chosen]
        why += "".join(f"; {r['mode']}: drop {r['drop']:.3f}, {r['speedup']:.2f}x" for r in others)
    else:
        chosen = min(rows, key=lambda r: r["drop"])
        why = (f"no mode fits the budget of {ev.limit:.3f} {ev.metric} points; kept {chosen['mode']}, the most "
               f"accurate (drop {chosen['drop']:.3f})")
    q, rec, _ = found[chosen["mode"]]
    rec.stats["mode"] = chosen["mode"]
    rec.stats["auto"] = {"metric": ev.metric, "budget": ev.limit, "candidates": rows, "chosen": chosen["mode"], "why": why,
                         "fp32_latency_ms": lat["fp32"]}
    if not fitting:
        rec.skip("auto", why)
    say(f"auto: {why}")
    if on_best:
        on_best(q, rec)
    return q, rec
