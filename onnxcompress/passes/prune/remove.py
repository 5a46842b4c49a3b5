"""Find dead channel groups and remove them physically, folding the constants they carry into the
consumers' biases. Exact mode keeps the model numerically equal; anything it cannot prove is skipped
with a reason in the pass record. It assumes finite activations: a channel whose weights are all zero
outputs its bias (0 * x = 0), which does not hold where a layer's input holds inf or NaN."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import onnx

from ...errors import OnnxCompressError
from ...io import is_big
from ...stats import count_params, macs_or_none
from ..base import PassRecord
from . import channelwise, layers, structure  # noqa: F401 - importing them registers their handlers
from .graph import ChannelContext, GraphIndex, fold_constants, materialize_constants, node_inputs
from .handlers import DEFAULT, HANDLERS, Handler, describe


def analyze(model: onnx.ModelProto, exact: bool = True) -> ChannelContext:
    """Walk the graph once (nodes are topologically sorted) and build the channel groups."""
    materialize_constants(model)
    fold_constants(model)
    ctx = ChannelContext(GraphIndex(model), exact=exact)
    for node in model.graph.node:
        handler = HANDLERS.get(node.op_type, DEFAULT) if node.domain in ("", "ai.onnx") else DEFAULT
        handler.propagate(node, ctx)
        _guard_untracked(node, ctx, handler)
    for out in model.graph.output:
        ctx.block_tensor(out.name, f"graph output '{out.name}'", "a channel that reaches a graph output is kept")
    return ctx


def _guard_untracked(node: onnx.NodeProto, ctx: ChannelContext, handler: Handler) -> None:
    """Block what a handler cannot follow: tensors a subgraph reads from the outer scope, channels in an
    input the handler takes as a parameter (a Conv weight computed by another Conv), and every channel
    of a node that has an output the handler did not track (BatchNormalization's training statistics,
    Dropout's mask, MaxPool's indices) that is used: its shape or value would change unseen."""
    for name in set(node_inputs(node)) - set(node.input):
        ctx.block_tensor(name, describe(node), "read inside a subgraph")
    if handler.follows is not None:
        for name in node.input[handler.follows:]:
            ctx.block_tensor(name, describe(node), f"a {node.op_type} parameter computed from channels")
    outs = [o for o in node.output if o]
    untracked = [o for o in outs if o not in ctx.tensors and (ctx.index.uses(o) or o in ctx.index.graph_outputs)]
    if untracked and any(o in ctx.tensors for o in outs):
        for name in list(node.input) + outs:
            if name in ctx.tensors:
                ctx.block_tensor(name, describe(node), f"output '{untracked[0]}' is not followed by channel pruning")


def _dead_groups_once(ctx: ChannelContext) -> tuple[set[int], dict[int, tuple[str, str]]]:
    reasons: dict[int, tuple[str, str]] = {}
    for i, why in ctx.blocked.items():
        reasons.setdefault(ctx.find(i), why)
    live: set[int] = set()
    for read in ctx.reads:
        ch = ctx.tensors[read.tensor]
        roots = ctx.roots(ch.ids)
        for r, c in zip(roots.tolist(), ch.const.tolist()):
            if not np.isfinite(c):  # data-dependent (NaN), or infinite: not folded
                live.add(r)
            elif c != 0 and (not read.can_fold or (ctx.exact and not read.exact_fold)):
                reasons.setdefault(r, (f"{read.node.op_type} '{read.node.name or read.node.output[0]}'",
                                       f"dead channel holds constant {c:.4g} that cannot be folded exactly "
                                       "(zero padding or no bias to fold into)"))
    all_roots = {ctx.find(i) for _, _, ids in ctx.producers for i in ids.tolist()}
    return all_roots - live - set(reasons), reasons


def resolve_conflicts(ctx: ChannelContext, removed: set[int]) -> set[int]:
    """Block (with the handler's reason) the channels whose removal some op could not follow, e.g. a
    strided Slice whose surviving channels would no longer be one range; returns what is still removed.
    Blocking only shrinks the removal set, which can create new conflicts, so this runs to a fixed point."""
    removed = set(removed)
    checks = [(n, h) for n in ctx.index.model.graph.node
              if type(h := HANDLERS.get(n.op_type, DEFAULT)).conflicts is not Handler.conflicts]
    while removed:
        newly: set[int] = set()
        for node, handler in checks:
            hit = handler.conflicts(node, ctx, removed)
            if hit is not None:
                ids, reason = hit
                ctx.block(ids, describe(node), reason)
                newly.update(ctx.roots(ids).tolist())
        gone = np.zeros(len(ctx.parent), dtype=bool)
        gone[list(removed)] = True
        for name, ch in ctx.tensors.items():  # an empty tensor is degenerate (ORT rejects 0 channels)
            roots = ctx.roots(ch.ids)
            if len(roots) and gone[roots].all():
                ctx.block(ch.ids[:1], f"tensor '{name}'", "removing every channel would leave it empty")
                newly.add(int(roots[0]))
        if not newly & removed:
            break
        removed -= newly
    return removed


def dead_groups(ctx: ChannelContext) -> tuple[set[int], dict[int, tuple[str, str]]]:
    """Roots removable now, and the reason each blocked root is kept."""
    removable, reasons = _dead_groups_once(ctx)
    if resolve_conflicts(ctx, removable) != removable:
        removable, reasons = _dead_groups_once(ctx)  # the channels blocked just now get their reasons
    return removable, reasons


@dataclass
class Removal:
    """A removal's result: the model, its record, and for every tensor that lost channels the mask of
    the channel positions it kept (over the original positions, along its channel axis)."""

    model: onnx.ModelProto
    record: PassRecord
    kept: dict[str, np.ndarray] = field(default_factory=dict)


def apply_removal(ctx: ChannelContext, removed: set[int], rec: PassRecord) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Slice every tensor's channels as `removed` says; returns the model and the kept-position masks."""
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
    return model, masks


def remove_channels(model: onnx.ModelProto, exact: bool = True, name: str = "prune") -> tuple[onnx.ModelProto, PassRecord]:
    """Remove every channel group whose producers' weights are all zero (exact: output unchanged)."""
    r = removal(model, exact, name)
    return r.model, r.record


INTERNAL = "channel pruning failed on this graph, the model is left unchanged"
MacCounter = Callable[[onnx.ModelProto], Optional[int]]  # per-sample MACs, None when shapes need data


def own_macs(model: onnx.ModelProto) -> Optional[int]:
    """MACs from the model's own shapes; None for dynamic spatial/sequence dims (prune_model measures them
    on the calibration data or the given input shapes instead)."""
    return macs_or_none(model)[0]


def reasons_summary(reasons: Iterable[tuple[str, str]]) -> list[dict]:
    """Kept groups counted by reason: [{"reason", "groups", "nodes", "ops"}], most groups first. `reasons`
    has one (target, reason) per kept group; a target is "Op 'name'", "graph output 'y'", "tensor 't'"."""
    groups: Counter = Counter()
    targets: dict[str, set] = {}
    for target, reason in reasons:
        groups[reason] += 1
        targets.setdefault(reason, set()).add(target)
    out = []
    for reason, n in groups.most_common():
        ops = Counter(t.split(" '")[0] for t in targets[reason])
        out.append({"reason": reason, "groups": n, "nodes": len(targets[reason]), "ops": dict(ops.most_common())})
    return out


def unchanged(model: onnx.ModelProto, name: str, error: str, macs: MacCounter = own_macs) -> Removal:
    """The safety net of issue #3: a structure the handlers get wrong must not crash the tool or corrupt
    the model. The failure is recorded as a skip (the tests fail on it: it is a bug to fix)."""
    rec = PassRecord(name)
    rec.skip("channel pruning", f"{INTERNAL}: {error}")
    rec.stats["params_before"] = rec.stats["params_after"] = count_params(model)
    rec.stats["macs_before"] = rec.stats["macs_after"] = macs(model)
    rec.stats["groups_removed"] = 0
    m = onnx.ModelProto()
    m.CopyFrom(model)  # a copy, as on success: callers may edit it
    return Removal(m, rec)


ALIGN_KEPT = "a dead channel kept so that its layer's width stays a multiple of --align"


def removal(model: onnx.ModelProto, exact: bool = True, name: str = "prune", macs: MacCounter = own_macs,
            keep: frozenset = frozenset()) -> Removal:
    """remove_channels, also returning which channel positions each changed tensor kept. `macs` counts
    the MACs before and after. `keep`: dead roots (of an analysis of the same graph) left in place."""
    try:
        return _removal(model, exact, name, macs, keep)
    except OnnxCompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - see `unchanged`
        return unchanged(model, name, f"{type(exc).__name__}: {exc}", macs)


def _removal(model: onnx.ModelProto, exact: bool, name: str, macs: MacCounter, keep: frozenset = frozenset()) -> Removal:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    rec = PassRecord(name)
    rec.stats["params_before"] = count_params(model)
    rec.stats["macs_before"] = macs(model)
    ctx = analyze(m, exact)
    if keep:
        ctx.block(np.array(sorted(keep), dtype=np.int64), "alignment", ALIGN_KEPT)
    removable, reasons = dead_groups(ctx)
    all_roots = {ctx.find(i) for i in range(len(ctx.parent))}
    rec.stats["groups_total"] = len(all_roots)
    rec.stats["groups_removed"] = len(removable)
    rec.stats["groups_blocked"] = len(reasons)
    rec.stats["kept_by_reason"] = reasons_summary(reasons.values())
    for (target, reason), n in Counter(reasons.values()).most_common():
        rec.skip(target, f"{reason} ({n} channel{'s' if n > 1 else ''})")
    kept: dict[str, np.ndarray] = {}
    if not removable:  # nothing to remove: the model as it came, not its analysed (constant-folded) copy
        m.CopyFrom(model)
    else:
        m, kept = apply_removal(ctx, removable, rec)
        if not is_big(m):  # larger models are checked from their file when loaded again
            onnx.checker.check_model(m)
    rec.stats["params_after"] = count_params(m)
    rec.stats["macs_after"] = macs(m)
    return Removal(m, rec, kept)
