"""The stages of `convert`, each `stage(model, context) -> (model, StageRecord)` (passes.base.Stage).

A stage reads its own config from `context.config` unchanged, writes its model through the back door
(`backdoor.save_verified`) and returns the record; `passes.base.run_stages` runs them in order. The first
stage brings the FP32 model in (an ONNX file, or a torch module exported and checked against torch) and
opens the data in its input layout."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx

from ..backdoor import feeds_from, save_verified
from ..config import PipelineConfig
from ..data import Dataset, example_feed, load_data, model_layout
from ..errors import AccuracyRegression, InputError
from ..io import check_output_path, load_model
from ..passes.base import PassRecord, Stage, StageRecord
from ..progress import SILENT, Callbacks


@dataclass
class TorchSource:
    """A torch model entering the pipeline: exported first, then (config.train) pruned and distilled."""

    module: Any
    specs: list  # list[export.TensorSpec]
    name: str = "model"


@dataclass
class Context:
    """What every stage may read: the configs, the output folder, the data paths, progress; and, once the
    first stage ran, the FP32 model's file and its data (`open`)."""

    config: PipelineConfig
    out: Path
    calibration_path: Any = None  # a Path, or a Dataset already opened (load_data passes it through)
    validation_path: Any = None
    train_data_path: Any = None
    progress: Callbacks = SILENT
    source: Optional[Path] = None  # the FP32 model file
    stem: str = "model"
    reference: Optional[onnx.ModelProto] = None
    layout: Any = None
    calib: Optional[Dataset] = None
    val: Optional[Dataset] = None
    feeds: Optional[dict[str, np.ndarray]] = None  # the back door's check run
    shape_feed: Optional[dict[str, np.ndarray]] = None  # MACs: dynamic H x W, sequence length
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_data(self) -> Optional[Dataset]:
        return self.val if self.val is not None else self.calib

    def open(self, source: Path, model: onnx.ModelProto) -> None:
        """Bind the FP32 model and open the data in its input layout, checking everything before any work."""
        cfg = self.config
        self.source, self.stem, self.reference = source, source.stem, model
        self.layout = model_layout(model, cfg.data.input_layout)  # checked against the model and the data
        self.calib = load_data(self.calibration_path, self.layout, cfg.data) if self.calibration_path is not None else None
        self.val = load_data(self.validation_path, self.layout, cfg.data) if self.validation_path is not None else None
        if cfg.quant.enabled and cfg.quant.mode == "static" and self.calib is None:
            raise InputError("static quantization needs calibration data; pass --calibration DATA.npz or --mode dynamic")
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"output folder {self.out} is a file; choose a folder path for -o")
        self.out.mkdir(parents=True, exist_ok=True)
        check_output_path(self.out / f"{self.stem}.int8.onnx", source)
        # every stage model is checked before it is written (backdoor); a failed check stops there, exit 3
        self.feeds = feeds_from(self.sample_data, model)
        self.shape_feed = example_feed(self.sample_data, 1, model) if self.sample_data is not None else None

    def path(self, suffix: str) -> Path:
        return self.out / f"{self.stem}.{suffix}.onnx"


@dataclass
class LoadOnnx:
    """The FP32 stage of an ONNX input: the file as given (nothing written)."""

    path: Path
    name: str = "load"
    quiet: bool = True

    def __call__(self, model, ctx: Context) -> tuple[onnx.ModelProto, StageRecord]:
        model = load_model(self.path)
        ctx.open(self.path, model)
        return model, StageRecord("fp32", self.path)


@dataclass
class Export:
    """The FP32 stage of a torch input: exported (ExportConfig), checked against torch, then loaded."""

    source: TorchSource
    name: str = "export"

    def __call__(self, model, ctx: Context) -> tuple[onnx.ModelProto, StageRecord]:
        from ..export import export

        ctx.out.mkdir(parents=True, exist_ok=True)
        path = ctx.out / f"{self.source.name}.onnx"
        rec = export(self.source.module, self.source.specs, path, ctx.config.export)
        model = load_model(path)
        ctx.open(path, model)
        return model, StageRecord("fp32", path, rec)


@dataclass
class Simplify:
    name: str = "simplify"

    def __call__(self, model, ctx: Context) -> tuple[onnx.ModelProto, StageRecord]:
        from ..passes.simplify import simplify

        new, rec = simplify(model)
        path = save_verified(new, ctx.path("simplified"), pass_name="simplify", reference=model, feeds=ctx.feeds,
                             exact=True, record=rec)
        return new, StageRecord("simplified", path, rec)


@dataclass
class PruneDistill:
    """Torch-side pruning + label-free distillation (TrainConfig) of a TorchSource on the train data (default:
    the calibration data); the result, channels removed in ONNX, is the "distilled" stage."""

    source: TorchSource
    name: str = "prune-distill"

    def __call__(self, model, ctx: Context) -> tuple[onnx.ModelProto, StageRecord]:
        from ..train.run import prune_and_distill

        cfg = ctx.config
        name = self.source.specs[0].name
        tdata = load_data(ctx.train_data_path, ctx.layout) if ctx.train_data_path is not None else ctx.calib
        if tdata is None:
            raise InputError("torch-side pruning needs data to distill on; pass --train-data or --calibration")
        val = ctx.val
        vx = np.concatenate([c[name] for c in val.chunks]) if val is not None else None
        path = ctx.path("distilled")
        rec = prune_and_distill(self.source.module, self.source.specs, np.concatenate([c[name] for c in tdata.chunks]),
                                path, cfg.train, val_x=vx, val_y=val.labels if val is not None else None,
                                export_config=cfg.export)
        return load_model(path), StageRecord("distilled", path, rec)


@dataclass
class Prune:
    """Channel pruning (PruneConfig); with max_drop and validation data, the largest reduction within it."""

    name: str = "prune"

    def __call__(self, model, ctx: Context) -> tuple[onnx.ModelProto, StageRecord]:
        from ..passes.prune import prune_model

        pc, calib = ctx.config.prune, ctx.calib
        targeted = (pc.target_macs, pc.target_params, pc.target_latency) != (None, None, None)
        if calib and (targeted or pc.criterion.startswith("activation") or pc.max_drop is not None):
            batches = calib.take(pc.calibration_samples)  # sensitivity / activation scores read it in small runs
        else:
            batches = (list(calib.feeds(ctx.config.quant.batch_size, pc.calibration_samples))
                       if calib and pc.reconstruct and pc.ratio > 0 else None)
        if pc.max_drop is not None and ctx.val is not None:  # #14: the largest reduction within the drop budget
            from ..passes.prune.search import search

            vcfg = ctx.config.validate_
            found = search(model, pc, ctx.val, batches, vcfg.task, vcfg.gates, feed=ctx.shape_feed)
            if found.best is None:
                last = found.tried[-1]
                raise AccuracyRegression(f"prune: no pruned model is within max_drop {pc.max_drop:g}: even the smallest "
                                         f"step ({found.knob} {last.amount:.3f}) failed: {'; '.join(last.verdict.failures())}")
            new, rec = found.best_model, found.best_record
            rec.stats["search"] = found.to_dict()
        else:
            new, rec = prune_model(model, pc, calibration=batches, feed=ctx.shape_feed)
        path = save_verified(new, ctx.path("pruned"), pass_name="prune", reference=model, feeds=ctx.feeds,
                             exact=(pc.zeroed_only or pc.ratio == 0) and not targeted and pc.max_drop is None, record=rec)
        return new, StageRecord("pruned", path, rec)


@dataclass
class Quantize:
    """Quantization (QuantConfig, as given); validation data enables the fallback search and --mode auto."""

    name: str = "quantize"

    def __call__(self, model, ctx: Context) -> tuple[onnx.ModelProto, StageRecord]:
        from ..quant.search import quantize_model

        cfg = ctx.config
        say = ctx.progress.say
        new, rec = quantize_model(model, ctx.calib, ctx.val, cfg.quant_aim(ctx.val is not None and ctx.val.labels is not None),
                                  progress=lambda m: say(f"quantize: {m}"), input_layout=cfg.data.input_layout)
        path = save_verified(new, ctx.path("int8"), pass_name="quantize", reference=model, feeds=ctx.feeds, record=rec)
        return new, StageRecord("int8", path, rec)


def stages_for(config: PipelineConfig, source: Path | TorchSource) -> list[Stage]:
    """The stages `convert` runs for this config, in order."""
    torch_src = source if isinstance(source, TorchSource) else None
    stages: list[Stage] = [Export(torch_src) if torch_src is not None else LoadOnnx(Path(source))]
    if config.simplify.enabled:
        stages.append(Simplify())
    if torch_src is not None and config.train.enabled:
        stages.append(PruneDistill(torch_src))
    if config.prune.enabled:
        stages.append(Prune())
    if config.quant.enabled:
        stages.append(Quantize())
    return stages


__all__ = ["Context", "Export", "LoadOnnx", "PassRecord", "Prune", "PruneDistill", "Quantize", "Simplify", "TorchSource",
           "stages_for"]
