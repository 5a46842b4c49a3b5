"""Validate a candidate model against a reference on data, and apply CI gates to the result.

The result dict is what `validate --json` prints; its layout is docs/validate-schema.json (schema_version).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import onnxruntime as ort

from ..config import BenchConfig, ValidateConfig
from ..data import Dataset, input_specs, load_data, random_data
from ..errors import InputError
from ..io import load_model, model_size
from .bench import time_sessions
from .compare import compare_batches
from .runner import iter_outputs, make_session

SCHEMA_VERSION = 1
RANDOM_SAMPLES = 64
Progress = Optional[Callable[[int, int, str], None]]


def compare_sessions(ref: ort.InferenceSession, cand: ort.InferenceSession, data: Dataset, batch_size: int = 64,
                     limit: Optional[int] = None, progress: Progress = None, what: str = "validate") -> dict[str, Any]:
    """Run both sessions batch by batch on the same data and compare (no concatenation, so batches may
    differ in shape). Adds `samples`."""
    total = len(data) if limit is None else min(limit, len(data))
    state = {"n": 0}

    def pairs():
        for r, c in zip(iter_outputs(ref, data, batch_size, limit), iter_outputs(cand, data, batch_size, limit)):
            state["n"] += len(next(iter(r.values())))
            if progress:
                progress(state["n"], total, what)
            yield r, c

    labels = None if data.labels is None else data.labels[:total]
    result = compare_batches(pairs(), labels)
    result["samples"] = state["n"]
    return result


def validate(ref: str | Path, cand: str | Path, data: Optional[str | Path], config: ValidateConfig = ValidateConfig(),
             provider: str = "cpu", layers: bool = False, progress: Progress = None) -> dict[str, Any]:
    """Run both models on the same data, compare, and apply the gates in `config`."""
    config.validate()
    ref_model, cand_model = load_model(ref), load_model(cand)
    specs = input_specs(ref_model)
    cand_names = [s.name for s in input_specs(cand_model)]
    if [s.name for s in specs] != cand_names:
        raise InputError(f"the models have different inputs ({', '.join(s.name for s in specs)} vs "
                         f"{', '.join(cand_names)}); compare two versions of the same network")
    ref_outs = [o.name for o in ref_model.graph.output]
    if not set(ref_outs) & {o.name for o in cand_model.graph.output}:
        raise InputError(f"the models share no output name (reference: {', '.join(ref_outs)}); compare two versions of the same network")
    ds = load_data(data, specs) if data else random_data(specs, RANDOM_SAMPLES)
    if config.require_labels and ds.labels is None:
        raise InputError(f"--max-drop needs labels but {ds.source} has no 'labels' array; add labels or gate on --min-agreement")
    rs, cs = make_session(ref, provider), make_session(cand, provider)
    result: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "reference": str(ref), "candidate": str(cand),
                              "data": str(data) if data else "random", "provider": provider}
    result.update(compare_sessions(rs, cs, ds, config.batch_size, config.max_samples, progress))
    result.update({"reference_size": model_size(ref), "candidate_size": model_size(cand)})
    result["size_ratio"] = result["candidate_size"] / result["reference_size"]
    if config.max_latency_ratio is not None:
        result.update(latency_ratio(ref, cand, ds, provider))
    if layers:
        from .layers import layer_sqnr

        result["layers"] = layer_sqnr(ref_model, cand_model, ds, samples=config.layer_samples, provider=provider)
    result["gates"] = apply_gates(result, config)
    result["passed"] = all(g["passed"] for g in result["gates"])
    return result


def latency_ratio(ref: str | Path, cand: str | Path, data: Dataset, provider: str = "cpu",
                  config: BenchConfig = BenchConfig()) -> dict[str, float]:
    """Candidate / reference median latency at batch 1 on one thread (edge-like), interleaved."""
    feed = next(data.batches(1))
    rs, cs = make_session(ref, provider, threads=1), make_session(cand, provider, threads=1)
    t = time_sessions({"ref": rs, "cand": cs}, {"ref": feed, "cand": feed}, config.warmup, config.runs)
    r, c = t["ref"].summary(1)["median_ms"], t["cand"].summary(1)["median_ms"]
    return {"reference_latency_ms": r, "candidate_latency_ms": c, "latency_ratio": c / r if r > 0 else float("inf")}


def _primary(result: dict[str, Any]) -> dict[str, Any]:
    """The first output: the one top-1, agreement and cosine gates look at."""
    return next(iter(result["outputs"].values()), {})


def apply_gates(result: dict[str, Any], config: ValidateConfig) -> list[dict[str, Any]]:
    """Each configured gate -> {name, passed, value, limit, message}. A gate whose metric is missing
    fails (a CI gate that silently passes is worse than none); max_drop is the exception: it is on by
    default and applies only when the data has labels."""
    first = _primary(result)
    gates = []

    def gate(name: str, what: str, value: Optional[float], limit: float, higher_is_better: bool, unit: str = "") -> None:
        ok = value is not None and (value >= limit if higher_is_better else value <= limit)
        if value is None:
            msg = f"{name}: {what} is not available (needs a classification output: last axis > 1)"
        else:
            rel = (">=" if ok else "<") if higher_is_better else ("<=" if ok else ">")
            msg = f"{name}: {what} {value:.6g}{unit} {rel} limit {limit:.6g}{unit}"
        gates.append({"name": name, "passed": bool(ok), "value": value, "limit": limit, "message": msg})

    if config.max_drop is not None and "top1_drop" in result:
        gate("max_drop", "top-1 drop", result["top1_drop"], config.max_drop, False, " points")
    if config.min_agreement is not None:
        gate("min_agreement", "prediction agreement", first.get("agreement"), config.min_agreement, True, "%")
    if config.min_cosine is not None:
        gate("min_cosine", "mean cosine similarity", first.get("cosine"), config.min_cosine, True)
    if config.max_size is not None:
        gate("max_size", "candidate size", result["candidate_size"], config.max_size, False, " bytes")
    if config.max_latency_ratio is not None:
        gate("max_latency_ratio", "latency ratio candidate/reference", result.get("latency_ratio"),
             config.max_latency_ratio, False)
    return gates


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for the terminal (the CLI prints them; --json prints `result`)."""
    lines = [f"{result['samples']} samples from {result['data']} on {result['provider']}; "
             f"size {result['reference_size']:,} -> {result['candidate_size']:,} bytes ({result['size_ratio']:.2f}x)"]
    if "top1_drop" in result:
        lines.append(f"top-1 {result['reference_top1']:.2f}% -> {result['candidate_top1']:.2f}% "
                     f"(drop {result['top1_drop']:.2f} points); top-5 {result['reference_top5']:.2f}% -> {result['candidate_top5']:.2f}%")
    for name, m in result["outputs"].items():
        parts = [f"agreement {m['agreement']:.2f}%"] if "agreement" in m else []
        parts += [f"cosine {m['cosine']:.6f} (min {m['cosine_min']:.6f})", f"SQNR {m['sqnr_db']:.2f} dB",
                  f"max abs err {m['max_abs_error']:.4g}", f"max rel err {m['max_rel_error']:.4g}"]
        lines.append(f"output {name}: " + ", ".join(parts))
    if "latency_ratio" in result:
        lines.append(f"latency (batch 1, 1 thread) {result['reference_latency_ms']:.3f} -> "
                     f"{result['candidate_latency_ms']:.3f} ms ({result['latency_ratio']:.2f}x)")
    if "layers" in result:
        lines.append(f"per-layer SQNR, worst first ({len(result['layers'])} tensors, 15 shown):")
        lines += [f"  {r['sqnr_db']:8.2f} dB  {r['op']:18s} {r['tensor']}" for r in result["layers"][:15]]
    lines += [("PASS " if g["passed"] else "FAIL ") + g["message"] for g in result["gates"]]
    lines.append("passed" if result["passed"] else "FAILED")
    return lines
