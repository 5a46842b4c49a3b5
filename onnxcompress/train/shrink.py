"""Train the pruned student small: a physically shrunk torch copy of a masked model.

A masked student computes as much as the original (zeros are multiplied like any other number). For
fine-tuning, the pruned channels are sliced out of a copy (Conv/ConvNd incl. depthwise, Linear,
BatchNorm), guided by the same channel analysis as the ONNX pass; the copy is checked to compute what
the masked model computes, trained, and its weights are scattered back into the masked model, which is
then exported and shrunk by the ONNX pass as usual. Anything the slicer does not understand (another
op holding per-channel parameters, a hard-coded shape, a grouped conv) means: no shrink, train masked.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..passes.prune.remove import analyze, dead_groups
from .prune import onnx_of

Index = tuple  # (out_idx or None, in_idx or None) as torch LongTensors


@dataclass
class Shrunk:
    module: Any  # the smaller copy, ready to train
    index: dict[str, Index] = field(default_factory=dict)  # full param/buffer name -> kept rows, kept columns
    full_shapes: dict[str, tuple] = field(default_factory=dict)

    def full_state(self, small_state: dict) -> dict:
        """A state_dict for the original (full-width) architecture: pruned positions are zero."""
        import torch

        out = {}
        for name, s in small_state.items():
            idx = self.index.get(name)
            if idx is None:
                out[name] = s.clone()
                continue
            full = torch.zeros(self.full_shapes[name], dtype=s.dtype)
            o, i = idx
            o = o if o is not None else torch.arange(full.shape[0])
            if s.dim() == 1:
                full[o] = s
            else:
                i = i if i is not None else torch.arange(full.shape[1])
                full[o[:, None], i] = s
            out[name] = full
        return out

    def scatter_into(self, module) -> None:
        module.load_state_dict(self.full_state(self.module.state_dict()))


def _slice(t, idx: Index):
    o, i = idx
    if o is not None:
        t = t[o]
    if i is not None and t.dim() > 1:
        t = t[:, i]
    return t.contiguous()


def shrink(module, example: tuple, check: tuple, rtol: float = 1e-4) -> tuple[Optional[Shrunk], str]:
    """(Shrunk, "") or (None, reason). `check`: a batch of real inputs the two must agree on."""
    import torch

    nn = torch.nn
    model = onnx_of(module, example)
    ctx = analyze(model, exact=True)
    removable, _ = dead_groups(ctx)
    if not removable:
        return None, "no removable channel"
    removed = list(removable)

    def kept(tensor: str):
        ch = ctx.tensors.get(tensor)
        if ch is None:
            return None
        keep = ~np.isin(ctx.roots(ch.ids), removed)
        return None if keep.all() else torch.from_numpy(np.flatnonzero(keep))

    small = copy.deepcopy(module)
    params = dict(small.named_parameters())
    mods = dict(small.named_modules())
    plan: dict[str, tuple] = {}  # module name -> (kind, out_idx, in_idx)
    for node in model.graph.node:
        touched = any(kept(t) is not None for t in list(node.input) + list(node.output) if t)
        if not touched:
            continue
        op = node.op_type
        wname = node.input[1] if len(node.input) > 1 else ""
        mname = wname.rpartition(".")[0]
        m = mods.get(mname)
        if op == "Conv" and isinstance(m, nn.modules.conv._ConvNd) and wname == f"{mname}.weight":
            ko, ki = kept(node.output[0]), kept(node.input[0])
            if m.groups == 1:
                plan[mname] = ("conv", ko, ki)
            elif m.groups == m.in_channels == m.out_channels:
                plan[mname] = ("depthwise", ko, None)
            else:
                return None, f"grouped conv '{mname}' (groups={m.groups})"
        elif op == "Gemm" and isinstance(m, nn.Linear) and wname == f"{mname}.weight":
            plan[mname] = ("linear", kept(node.output[0]), kept(node.input[0]))
        elif op == "BatchNormalization" and isinstance(m, nn.modules.batchnorm._BatchNorm):
            plan[mname] = ("bn", kept(node.input[0]), None)
        elif any(i in params for i in node.input):
            return None, f"{op} node '{node.name}' holds parameters the slicer does not handle"
    index: dict[str, Index] = {}
    shapes = {k: tuple(v.shape) for k, v in small.state_dict().items()}
    with torch.no_grad():
        for mname, (kind, ko, ki) in plan.items():
            m = mods[mname]
            prefix = f"{mname}." if mname else ""
            names = ["weight", "bias"] + (["running_mean", "running_var"] if kind == "bn" else [])
            for n in names:
                t = getattr(m, n, None)
                if t is None:
                    continue
                idx = (ko, ki if (n == "weight" and kind in ("conv", "linear")) else None)
                if idx == (None, None):
                    continue
                index[prefix + n] = idx
                new = _slice(t.detach(), idx)
                if isinstance(t, nn.Parameter):
                    setattr(m, n, nn.Parameter(new, requires_grad=t.requires_grad))
                else:
                    setattr(m, n, new)
            if kind == "conv":
                m.out_channels = len(ko) if ko is not None else m.out_channels
                m.in_channels = len(ki) if ki is not None else m.in_channels
            elif kind == "depthwise" and ko is not None:
                m.in_channels = m.out_channels = m.groups = len(ko)
            elif kind == "linear":
                m.out_features, m.in_features = m.weight.shape
            elif kind == "bn" and ko is not None:
                m.num_features = len(ko)
    sh = Shrunk(small, index, {k: shapes[k] for k in index})
    was = module.training
    try:  # must compute what the masked model computes
        module.eval()
        small.eval()
        with torch.no_grad():
            a, b = module(*check), small(*check)
        a = a if isinstance(a, (tuple, list)) else [a]
        b = b if isinstance(b, (tuple, list)) else [b]
        for x, y in zip(a, b):
            if not torch.allclose(x, y, rtol=rtol, atol=rtol * max(1.0, float(x.abs().max()))):
                return None, f"the shrunk copy differs from the masked model (max abs {float((x - y).abs().max()):.3g})"
    except Exception as exc:  # noqa: BLE001 - e.g. a hard-coded channel count in forward()
        return None, f"the shrunk copy does not run ({type(exc).__name__}: {str(exc)[:120]})"
    finally:
        module.train(was)
    return sh, ""
