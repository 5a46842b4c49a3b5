"""Find dead channel groups and remove them physically, folding the constants they carry into the
consumers' biases. Exact mode keeps the model numerically equal; anything it cannot prove is skipped
with a reason in the pass record."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from ...io import is_big
from ...stats import count_macs, count_params
from ..base import PassRecord
from .graph import ChannelContext, GraphIndex, materialize_constants
from .handlers import DEFAULT, HANDLERS


def analyze(model: onnx.ModelProto, exact: bool = True) -> ChannelContext:
    """Walk the graph once (nodes are topologically sorted) and build the channel groups."""
    materialize_constants(model)
    ctx = ChannelContext(GraphIndex(model), exact=exact)
    for node in model.graph.node:
        HANDLERS.get(node.op_type, DEFAULT).propagate(node, ctx) if node.domain in ("", "ai.onnx") \
            else DEFAULT.propagate(node, ctx)
    for out in model.graph.output:
        ctx.block_tensor(out.name, f"graph output '{out.name}'", "a channel that reaches a graph output is kept")
    return ctx


def dead_groups(ctx: ChannelContext) -> tuple[set[int], dict[int, tuple[str, str]]]:
    """Roots removable now, and the reason each blocked root is kept."""
    reasons: dict[int, tuple[str, str]] = {}
    for i, why in ctx.blocked.items():
        reasons.setdefault(ctx.find(i), why)
    live: set[int] = set()
    for read in ctx.reads:
        ch = ctx.tensors[read.tensor]
        roots = ctx.roots(ch.ids)
        for r, c in zip(roots.tolist(), ch.const.tolist()):
            if np.isnan(c):
                live.add(r)
            elif c != 0 and (not read.can_fold or (ctx.exact and not read.exact_fold)):
                reasons.setdefault(r, (f"{read.node.op_type} '{read.node.name or read.node.output[0]}'",
                                       f"dead channel holds constant {c:.4g} that cannot be folded exactly "
                                       "(zero padding or no bias to fold into)"))
    all_roots = {ctx.find(i) for _, _, ids in ctx.producers for i in ids.tolist()}
    return all_roots - live - set(reasons), reasons


def apply_removal(ctx: ChannelContext, removed: set[int], rec: PassRecord) -> onnx.ModelProto:
    model = ctx.index.model
    masks: dict[str, np.ndarray] = {}
    for name, ch in ctx.tensors.items():
        keep = ~np.isin(ctx.roots(ch.ids), list(removed))
        if not keep.all():
            masks[name] = keep

    def kept(name: str):
        return masks.get(name)

    # fold the constants of removed input channels into consumer biases (before any slicing)
    for read in ctx.reads:
        k = kept(read.tensor)
        if k is None:
            continue
        const = np.nan_to_num(ctx.tensors[read.tensor].const, nan=0.0)
        if np.any(const[~k] != 0):
            HANDLERS[read.node.op_type].fold(read.node, ctx, ~k, const)
            rec.changed.append(f"{read.node.name or read.node.output[0]} (bias folded)")
    for node in model.graph.node:
        if any(kept(t) is not None for t in list(node.input) + list(node.output)):
            HANDLERS.get(node.op_type, DEFAULT).apply(node, ctx, kept)
            rec.changed.append(node.name or node.output[0])
    del model.graph.value_info[:]
    return model


def remove_channels(model: onnx.ModelProto, exact: bool = True, name: str = "prune") -> tuple[onnx.ModelProto, PassRecord]:
    """Remove every channel group whose producers' weights are all zero (exact: output unchanged)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    rec = PassRecord(name)
    rec.stats["params_before"] = count_params(model)
    rec.stats["macs_before"] = count_macs(model)[0]
    ctx = analyze(m, exact)
    removable, reasons = dead_groups(ctx)
    all_roots = {ctx.find(i) for i in range(len(ctx.parent))}
    rec.stats["groups_total"] = len(all_roots)
    rec.stats["groups_removed"] = len(removable)
    rec.stats["groups_blocked"] = len(reasons)
    for (target, reason), n in Counter(reasons.values()).most_common():
        rec.skip(target, f"{reason} ({n} channel{'s' if n > 1 else ''})")
    if removable:
        m = apply_removal(ctx, removable, rec)
        if not is_big(m):  # larger models are checked from their file when loaded again
            onnx.checker.check_model(m)
    rec.stats["params_after"] = count_params(m)
    rec.stats["macs_after"] = count_macs(m)[0]
    return m, rec
