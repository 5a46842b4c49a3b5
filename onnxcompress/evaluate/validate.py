"""Validate a candidate model against a reference on data, and apply CI gates to the result."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..config import BenchConfig, ValidateConfig
from ..data import load_data, random_data
from ..io import load_model, model_size
from .bench import time_sessions
from .compare import compare_batches
from .runner import iter_outputs, make_session

SCHEMA_VERSION = 1


def validate(ref: str | Path, cand: str | Path, data: Optional[str | Path], config: ValidateConfig = ValidateConfig(),
             provider: str = "cpu", layers: bool = False) -> dict[str, Any]:
    """Run both models on the same data, compare, and apply the gates in `config`."""
    config.validate()
    ref_model, cand_model = load_model(ref), load_model(cand)
    from ..data import input_specs

    specs = input_specs(ref_model)
    cand_names = [s.name for s in input_specs(cand_model)]
    if [s.name for s in specs] != cand_names:
        from ..errors import InputError

        raise InputError(f"the models have different inputs ({', '.join(s.name for s in specs)} vs {', '.join(cand_names)}); compare models of the same network")
    ds = load_data(data, specs) if data else random_data(specs, 64)
    rs, cs = make_session(ref, provider), make_session(cand, provider)
    pairs = list(zip(iter_outputs(rs, ds, config.batch_size, config.max_samples),
                     iter_outputs(cs, ds, config.batch_size, config.max_samples)))
    n = sum(len(next(iter(r.values()))) for r, _ in pairs)
    labels = None if ds.labels is None else ds.labels[:n]
    result = compare_batches(pairs, labels)
    result.update({"schema_version": SCHEMA_VERSION, "reference": str(ref), "candidate": str(cand),
                   "data": str(data) if data else "random", "samples": n,
                   "reference_size": model_size(ref), "candidate_size": model_size(cand)})
    if config.max_latency_ratio is not None:
        feed = next(ds.batches(1))
        t = time_sessions({"ref": rs, "cand": cs}, {"ref": feed, "cand": feed}, warmup=5, runs=BenchConfig().runs)
        r, c = t["ref"].summary(1)["median_ms"], t["cand"].summary(1)["median_ms"]
        result["latency_ratio"] = c / r if r > 0 else float("inf")
    if layers:
        from .layers import layer_sqnr

        result["layers"] = layer_sqnr(ref_model, cand_model, ds, provider=provider)
    result["gates"] = apply_gates(result, config)
    result["passed"] = all(g["passed"] for g in result["gates"])
    return result


def apply_gates(result: dict[str, Any], config: ValidateConfig) -> list[dict[str, Any]]:
    """Each configured gate -> {name, passed, value, limit, message}. A gate without its metric fails."""
    first = next(iter(result["outputs"].values()), {})
    gates = []

    def gate(name: str, value: Optional[float], limit: float, ok) -> None:
        passed = value is not None and ok(value, limit)
        msg = (f"{name}: {value:.4g} vs limit {limit:.4g}" if value is not None
               else f"{name}: metric not available (labels or a classification output are needed)")
        gates.append({"name": name, "passed": bool(passed), "value": value, "limit": limit, "message": msg})

    if config.max_drop is not None and "top1_drop" in result:
        gate("max_drop", result["top1_drop"], config.max_drop, lambda v, lim: v <= lim)
    if config.min_agreement is not None:
        gate("min_agreement", first.get("agreement"), config.min_agreement, lambda v, lim: v >= lim)
    if config.min_cosine is not None:
        gate("min_cosine", first.get("cosine"), config.min_cosine, lambda v, lim: v >= lim)
    if config.max_size is not None:
        gate("max_size", float(result["candidate_size"]), float(config.max_size), lambda v, lim: v <= lim)
    if config.max_latency_ratio is not None:
        gate("max_latency_ratio", result.get("latency_ratio"), config.max_latency_ratio, lambda v, lim: v <= lim)
    return gates
