"""Validate a candidate model against a reference on data: run both, measure (tensor closeness per
output and the task metric, evaluate.tasks), then apply the gates (evaluate.gates).

The result dict is what `validate --json` prints; its layout is docs/validate-schema.json (schema_version).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import onnxruntime as ort

from ..config import BenchConfig, TaskConfig, ValidateConfig
from ..data import Dataset, example_feed, input_specs, load_data, model_layout, random_data
from ..errors import InputError
from ..io import load_model, model_size
from ..progress import Tick
from .bench import time_sessions
from ..runtime.budget import run_batch
from .compare import compare_batches
from .gates import AccuracyResult, evaluate_comparison, validation_gates
from ..runtime.session import iter_outputs_many, make_session

SCHEMA_VERSION = 2
RANDOM_SAMPLES = 64
Progress = Optional[Tick]  # the tick half of progress.Progress: (done, total, what)


def compare_sessions(ref: ort.InferenceSession, cand: ort.InferenceSession, data: Dataset, batch_size: int = 64,
                     limit: Optional[int] = None, progress: Progress = None, what: str = "validate",
                     task: TaskConfig = TaskConfig(), user_metric: Optional[str] = None) -> dict[str, Any]:
    """Run both sessions batch by batch on the same data and compare (no concatenation, so batches may
    differ in shape): per-output closeness and the task metric. Adds `samples`."""
    total = len(data) if limit is None else min(limit, len(data))
    state = {"n": 0}

    def pairs():
        for r, c in iter_outputs_many([ref, cand], data, batch_size, limit):  # each sample decoded once
            state["n"] += len(next(iter(r.values())))
            if progress:
                progress(state["n"], total, what)
            yield r, c

    labels = None if data.labels is None else data.labels[:total]
    result = compare_batches(pairs(), labels, task, user_metric)
    result["samples"] = state["n"]
    return result


def validate(ref: str | Path, cand: str | Path, data: Optional[str | Path], config: ValidateConfig = ValidateConfig(),
             provider: str = "cpu", layers: bool = False, progress: Progress = None,
             input_layout: tuple[str, ...] = (), memory_budget=None) -> dict[str, Any]:
    """Run both models on the same data, compare, and apply the gates in `config`. `input_layout`:
    DataConfig.input_layout items (batch axes, const inputs) the shapes do not settle. `memory_budget`
    (bytes or '512M'; else the data's DataConfig.memory_budget, else the default) caps the batch of the runs
    and sizes the per-layer passes (runtime.budget). The verdict is in
    `verdict` / `passed` / `gates` (AccuracyResult.from_dict(result) gives the object)."""
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
    layout = model_layout(ref_model, input_layout)
    ds = load_data(data, layout) if data else random_data(layout, RANDOM_SAMPLES)
    if config.require_labels and ds.labels is None:
        raise InputError(f"--max-drop needs labels but {ds.source} has no 'labels' array; add labels or gate on --min-agreement")
    rs, cs = make_session(ref, provider), make_session(cand, provider)
    result: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "reference": str(ref), "candidate": str(cand),
                              "data": str(data) if data else "random", "provider": provider}
    batch = run_batch(ref_model, ds, config.batch_size, memory_budget)  # the model's working set x batch within the budget
    result.update(compare_sessions(rs, cs, ds, batch, config.max_samples, progress,
                                   task=config.task, user_metric=config.metric))
    result.update({"reference_size": model_size(ref), "candidate_size": model_size(cand)})
    result["size_ratio"] = result["candidate_size"] / result["reference_size"]
    if config.max_latency_ratio is not None:
        result.update(latency_ratio(ref, cand, ds, provider))
    if layers:
        from .layers import layer_sqnr

        result["layers"] = layer_sqnr(ref_model, cand_model, ds, samples=config.layer_samples, provider=provider,
                                      memory_budget=memory_budget)
    gates = validation_gates(config, result["task"], real_data=data is not None)
    verdict = evaluate_comparison({**result, "size_bytes": result["candidate_size"]}, gates)
    result.update(verdict.to_dict())
    return result


def latency_ratio(ref: str | Path, cand: str | Path, data: Dataset, provider: str = "cpu",
                  config: BenchConfig = BenchConfig()) -> dict[str, float]:
    """Candidate / reference median latency at batch 1 on one thread (edge-like), interleaved."""
    feed = example_feed(data, 1)
    rs, cs = make_session(ref, provider, threads=1), make_session(cand, provider, threads=1)
    t = time_sessions({"ref": rs, "cand": cs}, {"ref": feed, "cand": feed}, config.warmup, config.runs)
    r, c = t["ref"].summary(1)["median_ms"], t["cand"].summary(1)["median_ms"]
    return {"reference_latency_ms": r, "candidate_latency_ms": c, "latency_ratio": c / r if r > 0 else float("inf")}


def _metric_text(name: str, value: float) -> str:
    from .gates import Gate

    return f"{name} {value:.4g}{Gate(name, name, '>=', 0).unit()}"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for the terminal (the CLI prints them; --json prints `result`)."""
    lines = [f"{result['samples']} samples from {result['data']} on {result['provider']}; "
             f"size {result['reference_size']:,} -> {result['candidate_size']:,} bytes ({result['size_ratio']:.2f}x)"]
    task = result["task"]
    lines.append(f"task: {task['name']} ({task['why']})")
    if task["metrics"]:
        lines.append("  " + ", ".join(_metric_text(k, v) for k, v in task["metrics"].items()))
    if "top1_drop" in result:
        lines.append(f"top-1 {result['reference_top1']:.2f}% -> {result['candidate_top1']:.2f}% "
                     f"(drop {result['top1_drop']:.2f} points); top-5 {result['reference_top5']:.2f}% -> {result['candidate_top5']:.2f}%")
    for name, m in result["outputs"].items():
        lines.append(f"output {name}: cosine {m['cosine']:.6f} (min {m['cosine_min']:.6f}), SQNR {m['sqnr_db']:.2f} dB, "
                     f"max abs err {m['max_abs_error']:.4g}, max rel err {m['max_rel_error']:.4g}")
    if "latency_ratio" in result:
        lines.append(f"latency (batch 1, 1 thread) {result['reference_latency_ms']:.3f} -> "
                     f"{result['candidate_latency_ms']:.3f} ms ({result['latency_ratio']:.2f}x)")
    if "layers" in result:
        lines.append(f"per-layer SQNR, worst first ({len(result['layers'])} tensors, 15 shown):")
        lines += [f"  {r['sqnr_db']:8.2f} dB  {r['op']:18s} {r['tensor']}" for r in result["layers"][:15]]
    lines += AccuracyResult.from_dict(result).lines()
    return lines
