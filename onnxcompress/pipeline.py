"""The stages in order (simplify -> prune -> quantize -> validate -> bench), one record per stage."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


from .config import PipelineConfig, to_dict
from .data import Dataset, example_feed, load_data, model_layout
from .errors import InputError
from .runtime.session import make_session
from .backdoor import feeds_from, save_verified
from .io import check_output_path, load_model, model_size
from .passes.base import PassRecord
from .stats import model_stats

REPORT_VERSION = 1


@dataclass
class Stage:
    name: str
    path: Path
    record: Optional[PassRecord] = None
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "seconds": round(self.seconds, 3),
                "metrics": self.metrics, "record": self.record.to_dict() if self.record else None}


def benchmark(paths: dict[str, Path], data: Optional[Dataset], config, provider: Optional[str] = None,
              progress=None, input_layout: Optional[tuple[str, ...]] = None) -> dict[str, dict]:
    """Interleaved latency of several models at each batch size and thread count; first model = baseline.
    Returns {model: {"<provider>/t<threads>/b<batch>": summary}} for config.providers (or just `provider`)."""
    import dataclasses

    from .evaluate.bench import bench_models

    if provider is not None:
        config = dataclasses.replace(config, providers=(provider,))
    return bench_models(paths, data, config, progress=progress, input_layout=input_layout)["results"]


def _ticks(progress):
    """Pass (done, total, what) progress to a `progress` callback that accepts it (a progress bar);
    the plain `progress(message)` callbacks only get the stage names."""
    return getattr(progress, "ticks", None)


@dataclass
class TorchSource:
    """A torch model entering the pipeline: exported first, then (config.train) pruned and distilled."""

    module: Any
    specs: list  # list[export.TensorSpec]
    name: str = "model"


def convert(model_path: str | Path | TorchSource, out_dir: str | Path, config: PipelineConfig,
            calibration: Optional[str | Path] = None, validation: Optional[str | Path] = None,
            progress=None, train_data: Optional[str | Path] = None) -> dict[str, Any]:
    """Run the pipeline; writes the stage models and report.json into out_dir and returns the report.

    `model_path` is an ONNX file, or a TorchSource: then the stages start with export (checked against
    torch) and, with config.train enabled, torch-side pruning + distillation on `train_data` (default:
    the calibration data, label-free) whose result, channels removed, is the "pruned" stage."""
    config.validate()
    say = progress or (lambda msg: None)
    torch_src = model_path if isinstance(model_path, TorchSource) else None
    export_rec = None
    if torch_src is not None:
        from .export import export

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        say("export")
        model_path = Path(out_dir) / f"{torch_src.name}.onnx"
        export_rec = export(torch_src.module, torch_src.specs, model_path, config.export)
    src = Path(model_path)
    model = load_model(src)
    layout = model_layout(model, config.data.input_layout)  # checked against the model and the data, before any work
    calib = load_data(calibration, layout, config.data) if calibration else None  # config.data: its memory budget
    val = load_data(validation, layout, config.data) if validation else None
    if config.quant.enabled and config.quant.mode == "static" and calib is None:
        raise InputError("static quantization needs calibration data; pass --calibration DATA.npz or --mode dynamic")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out} is a file; choose a folder path for -o")
    out.mkdir(parents=True, exist_ok=True)
    stem = src.stem
    check_output_path(out / f"{stem}.int8.onnx", src)

    stages = [Stage("fp32", src, export_rec)]
    current = model
    # every stage model is checked before it is written (backdoor); a failed check stops here, exit 3
    feeds = feeds_from(val if val is not None else calib, model)
    sample_data = val if val is not None else calib
    shape_feed = example_feed(sample_data, 1, model) if sample_data is not None else None  # MACs: dynamic H x W, seq
    if config.simplify.enabled:
        from .passes.simplify import simplify

        say("simplify")
        t0 = time.perf_counter()
        prev, (current, rec) = current, simplify(current)
        path = save_verified(current, out / f"{stem}.simplified.onnx", pass_name="simplify", reference=prev,
                             feeds=feeds, exact=True, record=rec)
        stages.append(Stage("simplified", path, rec, time.perf_counter() - t0))
    if torch_src is not None and config.train.enabled:
        import numpy as np

        from .train.run import prune_and_distill

        say("prune-distill")
        t0 = time.perf_counter()
        name = torch_src.specs[0].name
        tdata = load_data(train_data, layout) if train_data else calib
        if tdata is None:
            raise InputError("torch-side pruning needs data to distill on; pass --train-data or --calibration")
        vx = np.concatenate([c[name] for c in val.chunks]) if val is not None else None
        rec = prune_and_distill(torch_src.module, torch_src.specs, np.concatenate([c[name] for c in tdata.chunks]),
                                out / f"{stem}.distilled.onnx", config.train, val_x=vx,
                                val_y=val.labels if val is not None else None, export_config=config.export)
        current = load_model(out / f"{stem}.distilled.onnx")
        stages.append(Stage("distilled", out / f"{stem}.distilled.onnx", rec, time.perf_counter() - t0))
    if config.prune.enabled:
        from .passes.prune import prune_model

        say("prune")
        t0 = time.perf_counter()
        pc = config.prune
        targeted = (pc.target_macs, pc.target_params, pc.target_latency) != (None, None, None)
        if calib and (targeted or pc.criterion.startswith("activation") or pc.max_drop is not None):
            batches = calib.take(pc.calibration_samples)  # sensitivity / activation scores read it in small runs
        else:
            batches = (list(calib.feeds(config.quant.batch_size, pc.calibration_samples))
                       if calib and pc.reconstruct and pc.ratio > 0 else None)
        if pc.max_drop is not None and val is not None:  # #14: the largest reduction within the drop budget
            from .errors import AccuracyRegression
            from .passes.prune.search import search

            found = search(current, pc, val, batches, config.validate_.task, config.validate_.gates, feed=shape_feed)
            if found.best is None:
                last = found.tried[-1]
                raise AccuracyRegression(f"prune: no pruned model is within max_drop {pc.max_drop:g}: even the smallest "
                                         f"step ({found.knob} {last.amount:.3f}) failed: {'; '.join(last.verdict.failures())}")
            prev, current, rec = current, found.best_model, found.best_record
            rec.stats["search"] = found.to_dict()
        else:
            prev, (current, rec) = current, prune_model(current, pc, calibration=batches, feed=shape_feed)
        path = save_verified(current, out / f"{stem}.pruned.onnx", pass_name="prune", reference=prev, feeds=feeds,
                             exact=(pc.zeroed_only or pc.ratio == 0) and not targeted and pc.max_drop is None, record=rec)
        stages.append(Stage("pruned", path, rec, time.perf_counter() - t0))
    if config.quant.enabled:
        from .quant.search import quantize_model

        say("quantize")
        t0 = time.perf_counter()
        # validation data enables the fallback search and --mode auto; with labels and no budget of its
        # own, the quantizer aims at the validate gate's top-1 budget, so the gate is met when it can be
        qcfg = config.quant
        if qcfg.max_drop is None and val is not None and val.labels is not None and config.validate_.max_drop is not None:
            qcfg = dataclasses.replace(qcfg, max_drop=config.validate_.max_drop, metric="top1")
        if qcfg.task.name == "auto" and config.validate_.task.name != "auto":  # the search measures what the gates check
            qcfg = dataclasses.replace(qcfg, task=config.validate_.task)
        prev, (current, rec) = current, quantize_model(current, calib, val, qcfg, progress=lambda m: say(f"quantize: {m}"),
                                                       input_layout=config.data.input_layout)
        path = save_verified(current, out / f"{stem}.int8.onnx", pass_name="quantize", reference=prev, feeds=feeds,
                             record=rec)
        stages.append(Stage("int8", path, rec, time.perf_counter() - t0))

    say("validate")
    compared: dict[str, dict] = {}  # stage -> compare result against FP32 (evaluate.validate)
    for st in stages:
        m = load_model(st.path, check=False)
        st.metrics.update(model_stats(m, shape_feed))
        st.metrics["size_bytes"] = model_size(st.path)
    if val is not None:
        from .evaluate.validate import compare_sessions

        from .runtime.budget import run_batch

        ref_sess = make_session(src)
        vcfg = config.validate_
        vbatch = run_batch(model, val, vcfg.batch_size)  # the model's working set x batch within the memory budget
        for st in stages:
            cmp = compare_sessions(ref_sess, make_session(st.path), val, vbatch, vcfg.max_samples,
                                   progress=_ticks(progress), what=f"validate {st.name}", task=vcfg.task,
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
    bench = benchmark({st.name: st.path for st in stages}, val or calib, config.bench, progress=_ticks(progress),
                      input_layout=config.data.input_layout)
    for st in stages:
        st.metrics["latency"] = bench[st.name]
        timed = [s for s in bench[st.name].values() if "median_ms" in s]
        if timed:  # the first setting that ran: first provider, thread count and batch size
            st.metrics["latency_ms"] = timed[0]["median_ms"]
            st.metrics["speedup"] = timed[0].get("speedup", 1.0)
    report = {"version": REPORT_VERSION, "model": str(src), "config": to_dict(config),
              "calibration": str(calibration) if calibration else None,
              "validation": str(validation) if validation else None,
              "stages": [st.to_dict() for st in stages]}
    from .evaluate.gates import stage_verdicts

    # one gate evaluator (evaluate.gates): every stage gets its gates; the last stage's verdict is convert's
    report["task"] = next(iter(compared.values()))["task"] if compared else None
    report["accuracy"] = stage_verdicts(report["stages"], compared, config.validate_)
    from .report import write_reports

    report["files"] = [str(p) for p in write_reports(report, out)]
    return report
