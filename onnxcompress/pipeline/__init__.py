"""`convert`: the stages in order (export or load -> simplify -> prune-distill -> prune -> quantize), composed by
one loop (passes.base.run_stages), then every stage validated against FP32 and benchmarked; one record per
stage. The stages themselves are in pipeline/stages.py."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from ..config import BenchConfig, PipelineConfig, to_dict
from ..data import Dataset
from ..io import load_model, model_size
from ..passes.base import StageRecord, run_stages
from ..progress import Callbacks, Progress, progress_of
from ..runtime.session import make_session
from ..stats import model_stats
from .stages import Context, TorchSource, stages_for

REPORT_VERSION = 1
Stage = StageRecord  # the name this record had before the stage protocol (kept for callers)


def benchmark(paths: dict[str, Path], data: Optional[Dataset], config: BenchConfig, provider: Optional[str] = None,
              progress=None, input_layout: Optional[tuple[str, ...]] = None) -> dict[str, dict]:
    """Interleaved latency of several models at each batch size and thread count; first model = baseline.
    Returns {model: {"<provider>/t<threads>/b<batch>": summary}} for config.providers (or just `provider`).
    `progress`: a (done, total, what) callback."""
    from ..evaluate.bench import bench_models

    if provider is not None:
        config = dataclasses.replace(config, providers=(provider,))
    return bench_models(paths, data, config, progress=progress, input_layout=input_layout)["results"]


def convert(model_path: str | Path | TorchSource, out_dir: str | Path, config: PipelineConfig,
            calibration: Optional[str | Path] = None, validation: Optional[str | Path] = None,
            progress: Progress | Callbacks | Any = None, train_data: Optional[str | Path] = None) -> dict[str, Any]:
    """Run the pipeline; writes the stage models and report.json into out_dir and returns the report.

    `model_path` is an ONNX file, or a TorchSource: then the stages start with export (checked against
    torch) and, with config.train enabled, torch-side pruning + distillation on `train_data` (default:
    the calibration data, label-free) whose result, channels removed, is the "pruned" stage.
    `progress`: a progress.Progress, or a plain fn(message) for the stage names."""
    config.validate()
    prog = progress_of(progress)
    ctx = Context(config, Path(out_dir), _source(calibration), _source(validation), _source(train_data), prog)
    _, stages = run_stages(None, stages_for(config, model_path), ctx, say=prog.say)
    compared = measure(stages, ctx)
    report = {"version": REPORT_VERSION, "model": str(ctx.source), "config": to_dict(config),
              "calibration": str(calibration) if calibration else None,
              "validation": str(validation) if validation else None,
              "stages": [st.to_dict() for st in stages]}
    from ..evaluate.gates import stage_verdicts

    # one gate evaluator (evaluate.gates): every stage gets its gates; the last stage's verdict is convert's
    report["task"] = next(iter(compared.values()))["task"] if compared else None
    report["accuracy"] = stage_verdicts(report["stages"], compared, config.validate_)
    from ..report import write_reports

    report["files"] = [str(p) for p in write_reports(report, ctx.out)]
    return report


def _source(data: Any) -> Any:
    """A data path as a Path; a dataset the caller already opened (the CLI opens image folders, text and audio
    with their options) as it is: load_data passes it through."""
    if data is None or (isinstance(data, (str, Path)) and not str(data)):
        return None
    return data if hasattr(data, "batches") else Path(data)


def measure(stages: list[StageRecord], ctx: Context) -> dict[str, dict]:
    """Size and MACs of every stage model, then (validation data) each compared with FP32 under validate's
    task, then all benchmarked together; the figures go into each record's metrics. Returns the comparisons."""
    config, say, val = ctx.config, ctx.progress.say, ctx.val
    say("validate")
    compared: dict[str, dict] = {}  # stage -> compare result against FP32 (evaluate.validate)
    for st in stages:
        m = load_model(st.path, check=False)
        st.metrics.update(model_stats(m, ctx.shape_feed))
        st.metrics["size_bytes"] = model_size(st.path)
    if val is not None:
        from ..evaluate.validate import compare_sessions
        from ..runtime.budget import run_batch

        ref_sess = make_session(ctx.source)
        vcfg = config.validate_
        vbatch = run_batch(ctx.reference, val, vcfg.batch_size)  # the model's working set x batch within the memory budget
        for st in stages:
            cmp = compare_sessions(ref_sess, make_session(st.path), val, vbatch, vcfg.max_samples,
                                   progress=ctx.progress.ticks, what=f"validate {st.name}", task=vcfg.task,
                                   user_metric=vcfg.metric)
            if not compared:
                say(f"validate: task {cmp['task']['name']} ({cmp['task']['why']})")
            compared[st.name] = cmp
            first = cmp["outputs"].get(cmp["task"]["output"]) or next(iter(cmp["outputs"].values()))
            st.metrics.update({k: first[k] for k in ("cosine", "sqnr_db") if k in first})
            st.metrics["task"] = cmp["task"]["name"]
            st.metrics["task_metrics"] = cmp["task"]["metrics"]
            if "agreement" in cmp["task"]["metrics"]:
                st.metrics["agreement"] = cmp["task"]["metrics"]["agreement"]
            if "candidate_top1" in cmp:
                st.metrics["top1"] = cmp["candidate_top1"]
                st.metrics["top5"] = cmp["candidate_top5"]
    say("bench")
    bench = benchmark({st.name: st.path for st in stages}, val or ctx.calib, config.bench, progress=ctx.progress.ticks,
                      input_layout=config.data.input_layout)
    for st in stages:
        st.metrics["latency"] = bench[st.name]
        timed = [s for s in bench[st.name].values() if "median_ms" in s]
        if timed:  # the first setting that ran: first provider, thread count and batch size
            st.metrics["latency_ms"] = timed[0]["median_ms"]
            st.metrics["speedup"] = timed[0].get("speedup", 1.0)
    return compared


__all__ = ["Context", "REPORT_VERSION", "Stage", "StageRecord", "TorchSource", "benchmark", "convert", "measure",
           "stages_for"]
