"""Structured pruning at a ratio, on ONNX directly: score channel groups, zero the weakest, remove.

A "layer" is the set of producer nodes that write a group's channels (a plain conv, or all the convs
feeding one residual stream); widths stay multiples of `align` and above `min_channels` per layer.
Zeroed channels keep their bias: the constant they then carry is folded into the consumers' biases,
a better approximation than dropping it (it is the channel's output for a zero input).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Callable, Optional

import numpy as np
import onnx

from ...errors import InputError, OnnxCompressError
from ...graph import weight_axes
from ..base import PassRecord
from .graph import ChannelContext
from .remove import (INTERNAL, MacCounter, Removal, analyze, dead_groups, own_macs, reasons_summary, removal,
                     resolve_conflicts, unchanged)

Progress = Optional[Callable[[int, int, str], None]]  # (done, total, what)


def _rows(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """Producer weight as [out_channels, fan_in] rows."""
    out_axis, _ = weight_axes(node, w.ndim)
    return np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1)


def _zero_rows(node: onnx.NodeProto, w: np.ndarray, rows: np.ndarray) -> np.ndarray:
    w = w.copy()
    index = [slice(None)] * w.ndim
    index[weight_axes(node, w.ndim)[0]] = rows
    w[tuple(index)] = 0
    return w


def _bn_gamma(ctx: ChannelContext, node: onnx.NodeProto) -> np.ndarray | None:
    cons = ctx.index.consumers.get(node.output[0], [])
    if len(cons) == 1 and cons[0].op_type == "BatchNormalization":
        return ctx.index.const(cons[0].input[1])
    return None


def score_groups(ctx: ChannelContext, criterion: str,
                 activation: Optional[dict[int, float]] = None) -> tuple[dict[int, float], dict[int, frozenset]]:
    """Score per root (higher = more important) and the producers writing it. "activation"/"activation_l2"
    read `activation` (sensitivity.activation_scores, measured on calibration data)."""
    score: dict[int, float] = defaultdict(float)
    producers: dict[int, set] = defaultdict(set)
    for node, wname, ids in ctx.producers:
        roots = ctx.roots(ids).tolist()
        for i in roots:
            producers[i].add(node.name or node.output[0])
        if criterion.startswith("activation"):
            continue
        rows = _rows(node, ctx.index.const(wname)).astype(np.float64)
        gamma = _bn_gamma(ctx, node) if criterion == "bn_scale" else None
        if gamma is not None:
            s = np.abs(gamma)
        elif criterion == "l1":
            s = np.abs(rows).sum(axis=1)
        else:
            s = np.sqrt((rows ** 2).sum(axis=1))
        for i, v in zip(roots, s.tolist()):
            score[i] += v
    if criterion.startswith("activation"):
        if activation is None:
            raise InputError(f"--criterion {criterion} scores channels by their activations; pass calibration data (-c)")
        score.update({r: float(activation.get(r, 0.0)) for r in producers})
    return dict(score), {r: frozenset(p) for r, p in producers.items()}


def layers_of(producers: dict[int, frozenset]) -> dict[frozenset, list[int]]:
    """Roots grouped by the producers that write them: one "layer" (a conv, or the convs of a residual stream)."""
    layers: dict[frozenset, list[int]] = defaultdict(list)
    for r, p in producers.items():
        layers[p].append(r)
    return layers


def select(ctx: ChannelContext, ratio: float, criterion: str = "l2", scope: str = "global", align: int = 8,
           min_channels: int = 8, activation: Optional[dict[int, float]] = None) -> tuple[set[int], dict[str, dict]]:
    """Roots to prune, and a per-layer summary (width before/after)."""
    blocked = {ctx.find(i) for i in ctx.blocked}
    score, producers = score_groups(ctx, criterion, activation)
    layers = layers_of(producers)
    norm: dict[int, float] = {}
    for roots in layers.values():
        mean = float(np.mean([score[r] for r in roots])) or 1.0
        for r in roots:
            norm[r] = score[r] / mean
    free = [r for r in norm if r not in blocked]
    threshold = float(np.quantile([norm[r] for r in free], ratio)) if free and scope == "global" else None
    chosen: set[int] = set()
    summary: dict[str, dict] = {}
    for key, roots in layers.items():
        n = len(roots)
        cand = sorted((r for r in roots if r not in blocked), key=lambda r: norm[r])
        want = sum(norm[r] < threshold for r in cand) if threshold is not None else int(round(ratio * n))
        keep = n - want
        keep = min(n, max(keep, min_channels))
        if align > 1:
            keep = min(n, int(np.ceil(keep / align) * align))
        k = min(n - keep, len(cand))
        chosen.update(cand[:k])
        summary[",".join(sorted(key))] = {"width_before": n, "width_after": n - k, "blocked": n - len(cand)}
    return chosen, summary


def structured_prune(model: onnx.ModelProto, ratio: float, criterion: str = "l2", scope: str = "global",
                     align: int = 8, min_channels: int = 8) -> tuple[onnx.ModelProto, PassRecord]:
    """Zero the weakest channel groups to reach `ratio`, then remove them (approximate folding)."""
    r = structured_removal(model, ratio, criterion, scope, align, min_channels)
    return r.model, r.record


def structured_removal(model: onnx.ModelProto, ratio: float, criterion: str = "l2", scope: str = "global",
                       align: int = 8, min_channels: int = 8, macs: MacCounter = own_macs,
                       progress: Progress = None, activation: Optional[Callable[[ChannelContext], dict]] = None) -> Removal:
    """structured_prune, also returning which channel positions each changed tensor kept. `macs` counts
    MACs before and after; `progress(done, total, what)` is told each step (analysis, scoring, removal).
    `activation(ctx)`: root -> activation score, for the activation criteria (sensitivity.activation_scores)."""
    def pick(ctx: ChannelContext) -> tuple[set[int], dict[str, dict], dict]:
        acts = activation(ctx) if activation is not None and criterion.startswith("activation") else None
        chosen, summary = select(ctx, ratio, criterion, scope, align, min_channels, acts)
        return chosen, summary, {"ratio": ratio, "criterion": criterion, "scope": scope}

    return remove_selected(model, pick, macs, progress, f"scoring layers ({criterion}, {scope})", align)


Picker = Callable[[ChannelContext], tuple[set[int], dict[str, dict], dict]]  # ctx -> (roots, layer summary, stats)


def remove_selected(model: onnx.ModelProto, pick: Picker, macs: MacCounter = own_macs, progress: Progress = None,
                    what: str = "choosing channels", align: int = 1) -> Removal:
    """Analyse, let `pick` choose the roots to prune (on that analysis), zero them and remove them. The
    channel ids of every analysis of the same model agree, so a picker may use ids found earlier.
    `align`: dead channels the model came with are removed only where their layer's width stays a
    multiple of it (see aligned_dead)."""
    try:
        return _remove_selected(model, pick, macs, progress or _quiet, what, align)
    except OnnxCompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - the safety net of remove.unchanged
        return unchanged(model, "prune", f"{type(exc).__name__}: {exc}", macs)


def _quiet(done: int, total: int, what: str) -> None:
    pass


def _zero_removable(m: onnx.ModelProto, ctx: ChannelContext, chosen: set[int], why: dict) -> tuple[set[int], set[int]]:
    """Zero the producer rows of the `chosen` roots in `m`, keeping only those the removal will take: a zeroed
    channel still carries its bias, and where that constant cannot be folded into the consumer (a MatMul
    without bias, zero padding) the removal keeps the channel, which would then cost accuracy for nothing.
    The analysis of the zeroed model says which; those are restored and given the removal's reason in
    `why`. Returns (roots zeroed, roots restored). Analyses use the same graph, so channel ids agree."""
    originals = {wname: ctx.index.const(wname) for _, wname, _ in ctx.producers}
    zeroed: set[str] = set()
    lost_all: set[int] = set()
    for _ in range(4):  # each round only shrinks `chosen`
        for node, wname, ids in ctx.producers:
            rows = np.isin(ctx.roots(ids), list(chosen))
            if rows.any():
                ctx.index.set_const(wname, _zero_rows(node, originals[wname], rows))
                zeroed.add(wname)
            elif wname in zeroed:
                ctx.index.set_const(wname, originals[wname])
                zeroed.discard(wname)
        if not chosen:
            break
        check = onnx.ModelProto()
        check.CopyFrom(m)
        removable, reasons = dead_groups(analyze(check, exact=False))
        lost = chosen - removable
        if not lost:
            break
        for r in lost:
            why[r] = reasons.get(r, ("channel pruning", "the zeroed channel would not be removed"))
        lost_all |= lost
        chosen = chosen - lost
    return chosen, lost_all


def aligned_dead(ctx: ChannelContext, chosen: set[int], dead: set[int], align: int) -> set[int]:
    """Dead roots (all-zero weights in the model as it came) that removal would take besides `chosen`, in
    the layers where that would leave the width off a multiple of `align`: those stay (exact either way).
    Why: EfficientNet-Lite0 ships five all-zero depthwise channels; removing them made widths 31/143/479/
    1151 and the 0.7x-MACs model ran at 0.91x FP32 speed (ORT's blocked kernels lose their alignment)."""
    extra = dead - chosen
    if align <= 1 or not extra:
        return set()
    producers: dict[int, set] = defaultdict(set)
    for node, _w, ids in ctx.producers:
        for r in ctx.roots(ids).tolist():
            producers[r].add(node.name or node.output[0])
    keep: set[int] = set()
    for roots in layers_of({r: frozenset(p) for r, p in producers.items()}).values():
        mine = extra.intersection(roots)
        if mine and (len(roots) - len(chosen.intersection(roots)) - len(mine)) % align:
            keep |= mine
    return keep


def _remove_selected(model: onnx.ModelProto, pick: Picker, macs: MacCounter, progress: Callable[[int, int, str], None],
                     what: str, align: int = 1) -> Removal:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    progress(0, 3, f"analysing channel groups of {len(m.graph.node)} nodes")
    ctx = analyze(m, exact=False)
    progress(1, 3, what)
    chosen, summary, stats = pick(ctx)
    dead, _ = dead_groups(ctx)  # removed with the chosen ones: conflicts depend on the whole set
    keep = aligned_dead(ctx, chosen, dead, align)
    dead -= keep
    refused = chosen - resolve_conflicts(ctx, dead | chosen)
    chosen -= refused
    why = {ctx.find(i): reason for i, reason in ctx.blocked.items()}
    chosen, lost = _zero_removable(m, ctx, chosen, why)
    refused |= lost
    progress(2, 3, f"removing {len(chosen)} channel groups")
    result = removal(m, exact=False, macs=macs, keep=frozenset(keep))
    rec = result.record
    failed = next((s for s in rec.skipped if s.reason.startswith(INTERNAL)), None)
    if failed is not None:  # not the zeroed-but-kept model: the input as it was
        return unchanged(model, "prune", failed.reason[len(INTERNAL) + 2:], macs)
    rec.stats["selected_but_kept"] = reasons_summary(why[r] for r in refused)
    for (target, reason), n in Counter(why[r] for r in refused).most_common():
        rec.skip(target, f"{reason} ({n} selected channel{'s' if n > 1 else ''} kept)")
    rec.stats.update(stats)
    rec.stats["layers"] = summary
    rec.stats["channels_selected"] = len(chosen)
    return result
