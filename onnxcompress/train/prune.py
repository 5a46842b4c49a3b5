"""Magnitude pruning of a torch model, made permanent as zeros for the ONNX channel-removal pass.

Structured: channel coupling comes from the same dependency analysis the ONNX pass uses, run on an
ONNX export of the module (parameter names are kept), so residual streams, depthwise convs and their
expand convs are pruned consistently; the BatchNorm after each pruned conv is zeroed too, so a pruned
channel is exactly 0 and the ONNX pass removes it exactly. Unstructured: L1 magnitude, global or per
layer. Masks are re-applied after every optimizer step so pruned weights stay zero while fine-tuning.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..passes.prune.remove import analyze
from ..passes.prune.structured import select


@dataclass
class Masks:
    """parameter name -> boolean keep-mask (same shape as the parameter)."""

    keep: dict[str, Any] = field(default_factory=dict)

    def apply(self, module) -> None:
        import torch

        params = dict(module.named_parameters())
        buffers = dict(module.named_buffers())
        with torch.no_grad():
            for name, mask in self.keep.items():
                t = params.get(name, buffers.get(name))
                t.mul_(mask.to(t.dtype))

    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.keep.values())
        return 1.0 - sum(int(m.sum()) for m in self.keep.values()) / total if total else 0.0


def _bn_after(module) -> dict[str, str]:
    """conv/linear module name -> the BatchNorm module applied to its output (torch.fx, else Sequential order)."""
    import torch

    pairs: dict[str, str] = {}
    try:
        gm = torch.fx.symbolic_trace(module)
        mods = dict(module.named_modules())
        for node in gm.graph.nodes:
            if node.op == "call_module" and isinstance(mods.get(node.target), torch.nn.modules.batchnorm._BatchNorm):
                src = node.args[0]
                if getattr(src, "op", None) == "call_module" and len(src.users) == 1:
                    pairs[src.target] = node.target
        return pairs
    except Exception:  # noqa: BLE001 - fx cannot trace every model; fall back to Sequential neighbours
        for name, mod in module.named_modules():
            if isinstance(mod, torch.nn.Sequential):
                kids = list(mod.named_children())
                for (a, ma), (b, mb) in zip(kids, kids[1:]):
                    if isinstance(mb, torch.nn.modules.batchnorm._BatchNorm):
                        pairs[f"{name}.{a}" if name else a] = f"{name}.{b}" if name else b
        return pairs


def structured_masks(module, example: tuple, ratio: float, criterion: str = "l2", scope: str = "global",
                     align: int = 8, min_channels: int = 8) -> tuple[Masks, dict]:
    """Choose channel groups to prune (coupled consistently) and return masks for every parameter involved."""
    import torch

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        was_training = module.training
        module.eval()
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17, do_constant_folding=False)
        module.train(was_training)
        model = onnx.load(str(path))
    ctx = analyze(model, exact=False)
    chosen, summary = select(ctx, ratio, criterion, scope, align, min_channels)
    params = dict(module.named_parameters())
    bn = _bn_after(module)
    masks = Masks()
    for node, wname, ids in ctx.producers:
        if wname not in params:
            continue  # a weight the exporter renamed: its channels stay (counted in the summary)
        rows = torch.from_numpy(~np.isin(ctx.roots(ids), list(chosen)))
        mod_name = wname[: -len(".weight")]
        w = params[wname]
        if node.op_type in ("Conv", "Gemm") and w.shape[0] == len(rows):
            _and(masks, wname, rows.view(-1, *([1] * (w.dim() - 1))).expand_as(w).clone())
            if f"{mod_name}.bias" in params:
                _and(masks, f"{mod_name}.bias", rows.clone())
            if mod_name in bn:
                for p in ("weight", "bias"):
                    _and(masks, f"{bn[mod_name]}.{p}", rows.clone())
    return masks, summary


def _and(masks: Masks, name: str, keep) -> None:
    masks.keep[name] = keep if name not in masks.keep else (masks.keep[name] & keep)


def unstructured_masks(module, sparsity: float, scope: str = "global") -> Masks:
    """L1 magnitude pruning of Conv/Linear weights to `sparsity`, one threshold globally or per layer."""
    import torch

    weights = {n: p for n, p in module.named_parameters()
               if n.endswith("weight") and p.dim() >= 2}
    masks = Masks()
    if scope == "global":
        allw = torch.cat([p.detach().abs().flatten() for p in weights.values()])
        k = int(sparsity * allw.numel())
        thr = allw.kthvalue(k).values if k > 0 else torch.tensor(-1.0)
        for n, p in weights.items():
            masks.keep[n] = p.detach().abs() > thr
    else:
        for n, p in weights.items():
            k = int(sparsity * p.numel())
            thr = p.detach().abs().flatten().kthvalue(k).values if k > 0 else torch.tensor(-1.0)
            masks.keep[n] = p.detach().abs() > thr
    return masks
