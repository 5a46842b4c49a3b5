"""Magnitude pruning of a torch model, made permanent as zeros for the ONNX channel-removal pass.

Structured: channel coupling comes from the same dependency analysis the ONNX pass uses, run on a
TorchScript ONNX export of the module (parameter names are kept as initializer names), so residual
streams, depthwise convs and their expand convs are pruned consistently. Each chosen channel is zeroed
in every producer (weight rows, bias) and in the BatchNorm that reads the producer's output (gamma and
beta), so the channel is exactly 0 after BN(+ReLU) and the ONNX pass removes it exactly. A group with
a producer whose weight cannot be mapped back to a torch parameter is kept whole (never half-pruned).
Unstructured: L1 magnitude to a sparsity target, one threshold globally or one per layer.
Masks are re-applied after every optimizer step so pruned weights stay zero while fine-tuning.
"""
from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import ExportError
from ..graph import weight_axes
from ..passes.prune.remove import analyze
from ..passes.prune.structured import select


@dataclass
class Masks:
    """parameter name -> boolean keep-mask (same shape as the parameter)."""

    keep: dict[str, Any] = field(default_factory=dict)

    def apply(self, module) -> None:
        import torch

        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, mask in self.keep.items():
                t = params[name]
                t.mul_(mask.to(t.dtype))

    def merge(self, other: "Masks") -> "Masks":
        """Keep only what both keep (iterative schedules never revive a pruned weight)."""
        out = Masks(dict(self.keep))
        for name, m in other.keep.items():
            out.keep[name] = m if name not in out.keep else (out.keep[name] & m)
        return out

    def sparsity(self) -> float:
        """Share of zeroed entries among the masked tensors."""
        total = sum(m.numel() for m in self.keep.values())
        return 1.0 - sum(int(m.sum()) for m in self.keep.values()) / total if total else 0.0


def weight_sparsity(module) -> float:
    """Share of exact zeros among all Conv/Linear weights (dim >= 2) of the module."""
    ws = [p.detach() for n, p in module.named_parameters() if n.endswith("weight") and p.dim() >= 2]
    total = sum(w.numel() for w in ws)
    return float(sum(int((w == 0).sum()) for w in ws) / total) if total else 0.0


def onnx_of(module, example: tuple) -> onnx.ModelProto:
    import torch

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        was_training = module.training
        module.eval()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17,
                                  do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL)
        except Exception as exc:  # noqa: BLE001 - any exporter failure means no channel analysis
            raise ExportError(f"structured pruning needs a TorchScript ONNX export of the model for its channel "
                              f"analysis, which failed ({type(exc).__name__}: {str(exc).strip()[:200]}); "
                              "use --unstructured") from None
        finally:
            module.train(was_training)
        return onnx.load(str(path))


def structured_masks(module, example: tuple, ratio: float, criterion: str = "l2", scope: str = "global",
                     align: int = 8, min_channels: int = 8) -> tuple[Masks, dict]:
    """Choose channel groups to prune (coupled consistently) and return masks for every parameter involved.

    The summary maps each layer (its producer nodes) to width before/after, plus `kept_unmapped`: groups
    kept because a producer's weight has no torch parameter name."""
    import torch

    model = onnx_of(module, example)
    ctx = analyze(model, exact=False)
    params = dict(module.named_parameters())
    # groups whose producers cannot all be masked in torch are treated as blocked
    unmapped: set[int] = set()
    for node, wname, ids in ctx.producers:
        w = params.get(wname)
        if w is None or node.op_type not in ("Conv", "Gemm") or w.shape[0] != len(ids) or _transposed(node):
            unmapped.update(ctx.roots(ids).tolist())
    for root in unmapped:
        ctx.blocked.setdefault(root, ("torch", "a producer weight is not a torch parameter"))
    chosen, summary = select(ctx, ratio, criterion, scope, align, min_channels)
    chosen -= unmapped
    masks = Masks()
    for node, wname, ids in ctx.producers:
        if wname not in params:
            continue
        keep = torch.from_numpy(~np.isin(ctx.roots(ids), list(chosen)))
        if keep.all():
            continue
        w = params[wname]
        _and(masks, wname, keep.view(-1, *([1] * (w.dim() - 1))).expand_as(w).clone())
        if len(node.input) > 2 and node.input[2] in params:
            _and(masks, node.input[2], keep.clone())
        for name in _bn_params(ctx, node):
            if name in params and params[name].shape == keep.shape:
                _and(masks, name, keep.clone())
    summary["kept_unmapped"] = {"groups": len(unmapped)}
    return masks, summary


def _transposed(node: onnx.NodeProto) -> bool:
    """Gemm without transB stores the weight [in, out]: rows are not output channels."""
    return node.op_type == "Gemm" and weight_axes(node)[0] != 0


def _bn_params(ctx, node: onnx.NodeProto) -> list[str]:
    """Scale and bias names of the BatchNormalization that alone reads this producer's output."""
    cons = ctx.index.consumers.get(node.output[0], [])
    if len(cons) == 1 and cons[0].op_type == "BatchNormalization" and node.output[0] not in ctx.index.graph_outputs:
        return [cons[0].input[1], cons[0].input[2]]
    return []


def _and(masks: Masks, name: str, keep) -> None:
    masks.keep[name] = keep if name not in masks.keep else (masks.keep[name] & keep)


def unstructured_masks(module, sparsity: float, scope: str = "global") -> Masks:
    """L1 magnitude pruning of Conv/Linear weights (dim >= 2) to `sparsity`, one threshold globally or per layer.

    Ties at the threshold are broken by position, so the sparsity is hit exactly."""
    import torch

    weights = {n: p for n, p in module.named_parameters() if n.endswith("weight") and p.dim() >= 2}
    masks = Masks()
    if not weights:
        return masks
    groups = [list(weights)] if scope == "global" else [[n] for n in weights]
    for names in groups:
        flat = torch.cat([weights[n].detach().abs().flatten() for n in names])
        k = int(round(sparsity * flat.numel()))
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        if k > 0:
            keep[torch.argsort(flat, stable=True)[:k]] = False
        start = 0
        for n in names:
            size = weights[n].numel()
            masks.keep[n] = keep[start:start + size].view_as(weights[n]).clone()
            start += size
    return masks


def prune_masks(module, example: tuple, cfg, ratio: float) -> tuple[Masks, dict]:
    """Structured or unstructured masks per a TrainConfig, at `ratio` (one step of a schedule)."""
    if cfg.structured:
        return structured_masks(module, example, ratio, cfg.criterion, cfg.scope, cfg.align, cfg.min_channels)
    return unstructured_masks(module, ratio, cfg.scope), {}
