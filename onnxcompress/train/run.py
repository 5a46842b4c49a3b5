"""Prune (structured or unstructured, optionally iterative) -> fine-tune with distillation -> export ->
ONNX channel removal. `convert` (pipeline.py) calls prune_and_distill for torch sources."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..config import ExportConfig, TrainConfig
from ..data import InputSpec, load_data
from ..errors import InputError
from ..export import TensorSpec, export
from ..io import load_model, model_size, save_model
from ..passes.base import PassRecord
from ..passes.prune import remove_zeroed_channels
from ..passes.simplify import simplify
from ..stats import count_macs, count_params
from .distill import Arrays, as_inputs, distill, evaluate
from .prune import Masks, prune_masks, weight_sparsity
from .shrink import shrink


def load_training_data(path: str | Path, specs: list[TensorSpec]) -> tuple[list[np.ndarray], Optional[np.ndarray]]:
    """A .npz/.npy (or folder of them) with arrays named after the inputs -> one array per input, labels."""
    ispecs = [InputSpec(s.name, tuple(s.axis_name(i) if i in s.dynamic else d for i, d in enumerate(s.shape)),
                        np.dtype(s.dtype)) for s in specs]
    ds = load_data(path, ispecs)
    try:
        xs = [np.concatenate([c[s.name] for c in ds.chunks]) for s in specs]
    except ValueError:
        raise InputError(f"the files in {path} hold inputs of different shapes; training needs one shape per input "
                         "(pad sequences to one length, or pass one file)") from None
    return xs, ds.labels


def _example(xs: list[np.ndarray]) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a[:1])) for a in xs)


def finetune(student, teacher, xs: list[np.ndarray], ys, cfg: TrainConfig, masks: Masks, vx, vy,
             show: Optional[Callable] = None) -> tuple[list[dict], str]:
    """Distill into the masked student; through a physically shrunk copy when possible (cfg.shrink), which
    is faster and ends in the same place: its weights are scattered back and the masks re-applied.
    Returns the history and how it trained ("shrunk ..." or "masked ...", with the reason)."""
    import torch

    check = tuple(torch.from_numpy(np.ascontiguousarray(a[:16])) for a in xs)
    sh, why = shrink(student, _example(xs), check) if cfg.shrink else (None, "disabled")
    if sh is None:
        return distill(student, teacher, xs, ys, cfg, masks, vx, vy, show=show), f"masked (no shrink: {why})"
    small = sum(p.numel() for p in sh.module.parameters())
    history = distill(sh.module, teacher, xs, ys, cfg, None, vx, vy, show=show, checkpoint_state=sh.full_state)
    sh.scatter_into(student)
    masks.apply(student)
    return history, f"shrunk copy ({small:,} of {sum(p.numel() for p in student.parameters()):,} parameters)"


def prune_and_distill(module, specs: list[TensorSpec], train_x: Arrays, out: str | Path, cfg: TrainConfig,
                      train_y: Optional[np.ndarray] = None, val_x: Optional[Arrays] = None,
                      val_y: Optional[np.ndarray] = None, export_config: ExportConfig = ExportConfig(),
                      show: Optional[Callable] = None, check_inputs: Optional[list[tuple]] = None) -> PassRecord:
    """Prune `module` (the teacher is left untouched), distill, export the masked student, remove its
    zeroed channels in ONNX, write `out`. The record holds the metric (top-1 with validation labels, else
    agreement with the teacher; mse fidelity for loss="mse") of the teacher, of the same pruning without
    fine-tuning, and after distillation; per step of the schedule; and the ONNX removal statistics."""
    import torch

    cfg.validate()
    xs = as_inputs(train_x)
    if len(xs) != len(specs):
        raise InputError(f"{len(xs)} training arrays for {len(specs)} model inputs; give one array per --input")
    torch.manual_seed(cfg.seed)
    rec = PassRecord("prune-distill")
    teacher = module.eval()
    vx = as_inputs(val_x) if val_x is not None else [a[:1000] for a in xs]
    vy = val_y if (val_x is not None and cfg.loss == "kl") else None
    metric = lambda m: evaluate(m, vx, vy, teacher, kind=cfg.loss, select=cfg.outputs)  # noqa: E731
    rec.stats["metric"] = ("top-1 %" if vy is not None else "agreement with the teacher %") if cfg.loss == "kl" \
        else "fidelity to the teacher % (1 - relative squared error)"
    rec.stats["teacher_metric"] = metric(teacher)
    example = _example(xs)
    # the same pruning at the full ratio, without fine-tuning: what distillation has to win back
    direct = copy.deepcopy(teacher)
    direct_masks, summary = prune_masks(direct, example, cfg, cfg.ratio)
    direct_masks.apply(direct)
    rec.stats["pruned_no_finetune_metric"] = metric(direct)
    rec.stats["layers"] = summary
    del direct
    student = copy.deepcopy(teacher)
    masks: Optional[Masks] = None
    steps = []
    for step in range(1, cfg.steps + 1):
        ratio = cfg.ratio * step / cfg.steps
        if step == cfg.steps and cfg.steps == 1:
            new = direct_masks
        else:
            new, summary = prune_masks(student, example, cfg, ratio)
        masks = new if masks is None else masks.merge(new)
        masks.apply(student)
        before = metric(student)
        history, how = finetune(student, teacher, xs, train_y, cfg, masks, vx, vy, show) if cfg.epochs else ([], "")
        steps.append({"ratio": ratio, "pruned_metric": before, "distilled_metric": metric(student),
                      "history": history, "weight_sparsity": weight_sparsity(student), "trained": how})
    rec.stats["steps"] = steps
    rec.stats["final_metric"] = steps[-1]["distilled_metric"]
    rec.stats["weight_sparsity"] = weight_sparsity(student)
    with tempfile.TemporaryDirectory() as d:
        masked = Path(d) / "masked.onnx"
        exp = export(student, specs, masked, export_config, check_inputs=check_inputs)
        rec.stats["export"] = exp.stats
        rec.skipped.extend(exp.skipped)
        source = load_model(masked)
        rec.stats["params_masked"] = count_params(source)
        # fold the exporter's shape arithmetic (dynamo writes Shape->Concat->Reshape) so the channel
        # analysis sees constant reshapes; onnxsim keeps the model numerically equal
        source, simp = simplify(source)
        rec.skipped.extend(simp.skipped)
        removed, rm = remove_zeroed_channels(source)
    written = save_model(removed, out)
    rec.stats["onnx_removal"] = dict(rm.stats)
    rec.stats["params_before"] = int(sum(p.numel() for p in teacher.parameters()))
    rec.stats["params_after"] = count_params(removed)
    rec.stats["macs_after"] = count_macs(removed)[0]
    rec.stats["size_bytes"] = model_size(written)
    rec.skipped.extend(rm.skipped)
    rec.files.append(str(written))
    return rec

