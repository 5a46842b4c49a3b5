"""Prune (structured or unstructured) -> fine-tune with distillation -> export -> ONNX channel removal."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import ExportConfig, TrainConfig
from ..errors import InputError
from ..export import TensorSpec, export
from ..io import load_model, save_model
from ..passes.base import PassRecord
from ..passes.prune import remove_zeroed_channels
from .distill import distill, evaluate
from .prune import structured_masks, unstructured_masks


def prune_and_distill(module, specs: list[TensorSpec], train_x: np.ndarray, out: str | Path, cfg: TrainConfig,
                      train_y: Optional[np.ndarray] = None, val_x: Optional[np.ndarray] = None,
                      val_y: Optional[np.ndarray] = None, export_config: ExportConfig = ExportConfig(),
                      show=None) -> PassRecord:
    """Returns a record with top-1 (or agreement) of the teacher, the pruned model before fine-tuning and
    after, per step of the schedule, and the ONNX removal statistics."""
    import torch

    cfg.validate()
    if len(specs) != 1:
        raise InputError("prune-distill takes single-input models for now; export multi-input models with 'export'")
    torch.manual_seed(cfg.seed)
    rec = PassRecord("prune-distill")
    teacher = module.eval()
    student = copy.deepcopy(teacher)
    vx = val_x if val_x is not None else train_x[:1000]
    vy = val_y if val_x is not None else None
    rec.stats["teacher_metric"] = evaluate(teacher, vx, vy, teacher)
    rec.stats["metric"] = "top-1 %" if vy is not None else "agreement with the teacher %"
    example = (torch.from_numpy(train_x[:1]),)
    steps = []
    masks = None
    for step in range(1, cfg.steps + 1):
        ratio = cfg.ratio * step / cfg.steps
        if cfg.structured:
            masks, summary = structured_masks(student, example, ratio, cfg.criterion, cfg.scope, cfg.align, cfg.min_channels)
        else:
            masks = unstructured_masks(student, ratio, cfg.scope)
        masks.apply(student)
        before = evaluate(student, vx, vy, teacher)
        history = distill(student, teacher, train_x, train_y, cfg, masks, vx, vy, show=show) if cfg.epochs else []
        after = evaluate(student, vx, vy, teacher)
        steps.append({"ratio": ratio, "pruned_metric": before, "distilled_metric": after, "history": history,
                      "sparsity": masks.sparsity()})
    rec.stats["steps"] = steps
    rec.stats["pruned_no_finetune_metric"] = steps[0]["pruned_metric"]
    rec.stats["final_metric"] = steps[-1]["distilled_metric"]
    with tempfile.TemporaryDirectory() as d:
        masked = Path(d) / "masked.onnx"
        exp = export(student, specs, masked, export_config)
        rec.stats["export"] = exp.stats
        removed, rm = remove_zeroed_channels(load_model(masked))
    save_model(removed, out)
    rec.stats["onnx_removal"] = {k: v for k, v in rm.stats.items()}
    rec.skipped.extend(rm.skipped)
    rec.changed.append(str(out))
    return rec
