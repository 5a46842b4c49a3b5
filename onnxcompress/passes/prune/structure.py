"""Channel-pruning handlers of structure ops: Concat, Split, Slice, Flatten/Reshape, reductions, Squeeze/
Unsqueeze/Transpose, Softmax/LayerNormalization, Shape; channel id lists are concatenated, cut, repeated or
moved to another axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx

from .graph import ChannelContext, Channels
from .handlers import Handler, OneInput, attr, describe, is_last, norm_axis, register, set_attr, set_input_const


@register("Concat")
class Concat(Handler):
    def propagate(self, node, ctx):
        ins = [ctx.tensors.get(i) for i in node.input]
        if all(c is None for c in ins):
            return
        axis = attr(node, "axis")
        rank = ctx.index.rank(node.output[0])
        tracked = [c for c in ins if c is not None]
        ch_axis = norm_axis(tracked[0].axis, rank)
        if norm_axis(axis, rank) != ch_axis or any(norm_axis(c.axis, rank) != ch_axis for c in tracked):
            for c in tracked:
                ctx.block(c.ids, describe(node), "Concat along a non-channel axis")
            return
        parts_ids, parts_const = [], []
        for name, c in zip(node.input, ins):
            if c is None:  # e.g. a graph input: its channels are fixed, give them blocked ids
                shape = ctx.index.shapes.get(name)
                n = shape[ch_axis] if shape and ch_axis is not None and shape[ch_axis] else None
                if n is None:
                    for t in tracked:
                        ctx.block(t.ids, describe(node), "Concat input of unknown channel count")
                    return
                ids = ctx.new_ids(n)
                ctx.block(ids, describe(node), "Concat input that is not prunable")
                c = Channels(tracked[0].axis, ids, np.full(n, np.nan))
                ctx.tensors[name] = c
            parts_ids.append(c.ids)
            parts_const.append(c.const)
        ctx.tensors[node.output[0]] = Channels(tracked[0].axis, np.concatenate(parts_ids), np.concatenate(parts_const))


@register("Split")
class Split(Handler):
    """Split on the channel axis cuts the id list. Sizes come from the `split` input (opset >= 13), the
    `split` attribute (opset < 13), or are equal parts (`num_outputs` at opset 18: ceil-sized parts, the
    last one smaller). After removal the node gets its new sizes written explicitly, in the form its
    opset allows (an equal split whose parts lose different channels is no longer equal; explicit sizes
    are exact at every opset, so no removal needs to be refused to keep the parts equal)."""
    follows = 1

    def _sizes(self, node, ctx, n: int) -> tuple[Optional[list[int]], str]:
        if len(node.input) > 1 and node.input[1]:
            s = ctx.index.const(node.input[1])
            return (None, "Split sizes are not constants") if s is None else ([int(v) for v in s.reshape(-1)], "")
        s = attr(node, "split")
        if s is not None:
            return list(s), ""
        k = attr(node, "num_outputs", len(node.output))
        if n % k == 0:
            return [n // k] * k, ""
        if attr(node, "num_outputs") is None:
            return None, f"equal Split of {n} channels into {k} parts is not exact"
        chunk = -(-n // k)  # opset 18: parts of ceil(n / k), the last one holds the rest
        sizes = [chunk] * (k - 1) + [n - chunk * (k - 1)]
        return (sizes, "") if sizes[-1] > 0 else (None, f"Split of {n} channels into {k} parts leaves one empty")

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None:
            return
        rank = ctx.index.rank(node.input[0])
        if norm_axis(attr(node, "axis", 0), rank) != norm_axis(x.axis, rank) or rank is None:
            ctx.block(x.ids, describe(node), "Split along a non-channel axis")
            return
        sizes, why = self._sizes(node, ctx, len(x.ids))
        if sizes is None or sum(sizes) != len(x.ids) or len(sizes) != len(node.output):
            ctx.block(x.ids, describe(node), why or "Split sizes do not match the channels")
            return
        start = 0
        for out, n in zip(node.output, sizes):
            ctx.tensors[out] = Channels(x.axis, x.ids[start:start + n], x.const[start:start + n])
            start += n

    def apply(self, node, ctx, kept):
        if kept(node.input[0]) is None:
            return
        sizes = np.array([int(kept(o).sum()) if kept(o) is not None else len(ctx.tensors[o].ids)
                          for o in node.output], dtype=np.int64)
        for a in list(node.attribute):
            if a.name == "num_outputs":  # exactly one of num_outputs and split
                node.attribute.remove(a)
        if (ctx.index.opset or 13) < 13:
            set_attr(node, "split", sizes.tolist())
        else:  # the sizes input, made the node's own when the constant is shared (equal C2f blocks share one)
            set_input_const(node, ctx, 1, sizes, "split")


@dataclass
class SliceParams:
    """A Slice's constant parameters, one entry per sliced axis (`axes` as written, maybe negative)."""

    starts: list[int]
    ends: list[int]
    axes: list[int]
    steps: list[int]
    dtype: np.dtype  # of the starts/ends inputs (int64 or int32); attributes (opset < 10) count as int64


_INT_MAX = (2**31 - 1, 2**63 - 1)


def slice_range(n: int, start: int, end: int, step: int) -> range:
    """The positions ONNX Slice selects on an axis of length n: negative indices count from the end,
    starts/ends are clamped to [0, n] (step > 0) or [0, n-1] / [-1, n-1] (step < 0)."""
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        return range(min(max(start, 0), n), min(max(end, 0), n), step)
    return range(min(max(start, 0), n - 1), min(max(end, -1), n - 1), step)


def strided_range(keep: np.ndarray, idx: np.ndarray, step: int) -> Optional[tuple[int, int, int]]:
    """(start, end, step) selecting, in the tensor that remains after dropping the positions where `keep`
    is False, exactly the kept positions of `idx` in the same order; None when they are not one strided
    range there. A negative end stands for "before position 0" (the caller writes the dtype's minimum)."""
    new_pos = np.cumsum(keep) - 1
    pos = new_pos[idx[keep[idx]]] if len(idx) else np.zeros(0, dtype=np.int64)
    if len(pos) == 0:
        return 0, 0, step
    d = int(pos[1] - pos[0]) if len(pos) > 1 else step
    if len(pos) > 1 and np.any(np.diff(pos) != d):
        return None
    first, last = int(pos[0]), int(pos[-1])
    return first, last + (1 if d > 0 else -1), d


@register("Slice")
class Slice(OneInput):
    """Channel ids pass through a Slice on other axes; on the channel axis the output carries the selected
    sub-list of ids (like Split). Removing channels rewrites starts/ends (and steps) so the Slice still
    selects the surviving channels; when they are no longer one strided range the removal is refused."""

    def params(self, node: onnx.NodeProto, ctx: ChannelContext) -> tuple[Optional[SliceParams], str]:
        """(parameters, "") or (None, reason). Axes may be known while starts/ends are not: then the
        returned starts/ends are empty and the caller decides whether the channel axis is touched."""
        if len(node.input) < 2:  # opset < 10: attributes
            starts, ends = list(attr(node, "starts", [])), list(attr(node, "ends", []))
            axes = list(attr(node, "axes", range(len(starts))))
            return SliceParams(starts, ends, axes, [1] * len(starts), np.dtype(np.int64)), ""
        values: list[Optional[np.ndarray]] = []
        for pos in range(1, 5):
            name = node.input[pos] if len(node.input) > pos else ""
            values.append(ctx.index.const(name) if name else np.zeros(0, dtype=np.int64))
        starts, ends, axes, steps = values
        n = len(starts) if starts is not None else (ctx.index.shapes.get(node.input[1]) or [None])[0]
        if axes is not None and axes.size == 0:
            axes = None if n is None else np.arange(n)
        if axes is None:
            return None, "Slice axes are not constants"
        known = starts is not None and ends is not None and steps is not None
        dtype = starts.dtype if starts is not None else np.dtype(np.int64)
        if not known:
            return SliceParams([], [], [int(a) for a in axes], [], dtype), ""
        steps = np.ones(len(axes), dtype=np.int64) if steps.size == 0 else steps
        return SliceParams(*([int(v) for v in a.reshape(-1)] for a in (starts, ends, axes, steps)), dtype), ""

    def selection(self, node: onnx.NodeProto, ctx: ChannelContext, x: Channels
                  ) -> tuple[Optional[tuple[SliceParams, int, np.ndarray]], str]:
        """((params, j, selected positions) when axes[j] is the channel axis, or None when the Slice
        does not touch it; "") or (None, reason when the channels cannot be followed)."""
        p, why = self.params(node, ctx)
        if p is None:
            return None, why
        rank = ctx.index.rank(node.input[0])
        ca, axes = norm_axis(x.axis, rank), [norm_axis(a, rank) for a in p.axes]
        if ca is None or None in axes:  # unknown rank: comparable only when written the same way
            if any((a < 0) != (x.axis < 0) for a in p.axes):
                return None, "Slice axes relative to an unknown rank"
            ca, axes = x.axis, p.axes
        if ca not in axes:
            return None, ""
        if not p.starts:
            return None, "Slice starts/ends/steps on the channel axis are not constants"
        j = axes.index(ca)
        if p.steps[j] == 0:
            return None, "Slice with step 0"
        if p.steps[j] < 0 and p.ends[j] in _INT_MAX:
            return None, "Slice with a negative step ending at INT_MAX (ONNX Runtime and the spec disagree)"
        idx = np.array(slice_range(len(x.ids), p.starts[j], p.ends[j], p.steps[j]), dtype=np.int64)
        return (p, j, idx), ""

    def flow(self, node, ctx, x):
        sel, why = self.selection(node, ctx, x)
        if why:
            ctx.block(x.ids, describe(node), why)
        elif sel is None:
            ctx.tensors[node.output[0]] = Channels(x.axis, x.ids, x.const)
        else:
            idx = sel[2]
            ctx.tensors[node.output[0]] = Channels(x.axis, x.ids[idx], x.const[idx])

    def conflicts(self, node, ctx, removed):
        x = ctx.tensors.get(node.input[0])
        sel = self.selection(node, ctx, x)[0] if x is not None and node.output[0] in ctx.tensors else None
        if sel is None or not len(sel[2]):
            return None
        p, j, idx = sel
        keep = ~np.isin(ctx.roots(x.ids), list(removed))
        if strided_range(keep, idx, p.steps[j]) is not None:
            return None
        hull = np.arange(int(idx.min()), int(idx.max()) + 1)
        return x.ids[hull[~keep[hull]]], (f"Slice with step {p.steps[j]} on the channel axis: the surviving "
                                          "channels would not be one strided range")

    def apply(self, node, ctx, kept):
        keep = kept(node.input[0])
        sel = self.selection(node, ctx, ctx.tensors[node.input[0]])[0] if keep is not None else None
        if sel is None:
            return
        p, j, idx = sel
        new = strided_range(keep, idx, p.steps[j])
        assert new is not None, "Slice conflicts are resolved before removal"
        start, end, step = new
        n = int(keep.sum())
        if list(slice_range(n, p.starts[j], p.ends[j], p.steps[j])) == list(range(start, end, step)):
            return  # the Slice as written still selects the survivors (e.g. 4:INT_MAX)
        if end < 0:
            end = int(np.iinfo(p.dtype).min)
        starts, ends, steps = list(p.starts), list(p.ends), list(p.steps)
        starts[j], ends[j], steps[j] = start, end, step
        if len(node.input) < 2:
            set_attr(node, "starts", starts)
            set_attr(node, "ends", ends)
            return
        set_input_const(node, ctx, 1, np.array(starts, dtype=p.dtype), "starts")
        set_input_const(node, ctx, 2, np.array(ends, dtype=p.dtype), "ends")
        if steps != p.steps or (len(node.input) > 4 and node.input[4]):
            set_input_const(node, ctx, 3, np.array(p.axes, dtype=p.dtype), "axes")  # all of one type, Tind
            set_input_const(node, ctx, 4, np.array(steps, dtype=p.dtype), "steps")


@register("Flatten", "Reshape")
class Flatten(OneInput):
    """[N, C, H, W] -> [N, C*H*W]: one channel becomes a block of H*W features (channel-major).
    Also Reshape that keeps the last (channel) axis, e.g. [N*S, C] <-> [N, S, C] around a Gemm."""

    def _last_dim_source(self, node, ctx) -> Optional[tuple[str, np.ndarray]]:
        """(constant holding the target shape's last element, its value) for a Reshape."""
        name = node.input[1]
        c = ctx.index.const(name)
        if c is not None:
            return name, c
        prod = ctx.index.producer.get(name)
        if prod is not None and prod.op_type == "Concat" and attr(prod, "axis", 0) == 0:
            tail = ctx.index.const(prod.input[-1])
            if tail is not None and ctx.index.uses(prod.input[-1]) == 1:
                return prod.input[-1], tail
        return None

    @staticmethod
    def _to_batch_by_features(target: list[int], shape: Optional[list], channels: int) -> bool:
        """Whether a Reshape to `target` (2 values) of [N, C, ...] gives [N, C*...]: the second value is
        the feature count (or -1 with the first keeping N), not e.g. [N*C, H*W]."""
        if shape is None or any(d is None for d in shape[2:]):
            return False
        flat = channels * (int(np.prod(shape[2:])) if len(shape) > 2 else 1)
        first, second = target
        if second == flat or (second == 0 and flat == channels):
            return True
        return second == -1 and (first == 0 or (shape[0] is not None and first == shape[0]))

    def flow(self, node, ctx, x):
        if node.op_type == "Reshape" and is_last(x, ctx, node.input[0]):
            src = self._last_dim_source(node, ctx)
            if src is not None and src[1].size and int(src[1].reshape(-1)[-1]) == len(x.ids):
                ctx.tensors[node.output[0]] = Channels(-1, x.ids, x.const)
                return
            ctx.block(x.ids, describe(node), "Reshape that changes the last (channel) axis")
            return
        shape = ctx.index.shapes.get(node.input[0])
        if node.op_type == "Flatten":
            ok = attr(node, "axis", 1) == 1
        else:  # Reshape to [N, -1] / [0, -1] / [N, C*H*W]; N may come from Shape (dynamo: Concat(Shape..., [C*H*W]))
            target = ctx.index.const(node.input[1])
            ok = target is not None and target.size == 2 and (attr(node, "allowzero", 0) == 0 or 0 not in target) \
                and self._to_batch_by_features(target.reshape(-1).tolist(), shape, len(x.ids))
            if target is None and ctx.index.rank(node.output[0]) == 2 and shape is not None \
                    and all(d is not None for d in shape[2:]):
                src = self._last_dim_source(node, ctx)
                flat = len(x.ids) * (int(np.prod(shape[2:])) if len(shape) > 2 else 1)
                ok = src is not None and int(src[1].reshape(-1)[-1]) in (-1, flat)
        if not ok or x.axis != 1 or shape is None or any(d is None for d in shape[2:]):
            ctx.block(x.ids, describe(node), f"{node.op_type} that does not flatten [N, C, ...] with known spatial size")
            return
        spatial = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        ctx.tensors[node.output[0]] = Channels(-1, np.repeat(x.ids, spatial), np.repeat(x.const, spatial))

    def apply(self, node, ctx, kept):
        k = kept(node.output[0])
        if node.op_type != "Reshape" or k is None:
            return
        x = ctx.tensors[node.input[0]]
        if len(x.ids) == len(ctx.tensors[node.output[0]].ids) and is_last(x, ctx, node.input[0]):
            name, value = self._last_dim_source(node, ctx)
            value = value.copy()
            value.reshape(-1)[-1] = int(k.sum())
            ctx.index.set_const(name, value)
            return
        target = ctx.index.const(node.input[1])
        if target is None:  # dynamic batch: the feature count is the constant tail of a Concat
            name, tail = self._last_dim_source(node, ctx)
            if int(tail.reshape(-1)[-1]) != -1:
                tail = tail.copy()
                tail.reshape(-1)[-1] = int(k.sum())
                ctx.index.set_const(name, tail)
            return
        target = target.copy()
        if target[1] not in (-1, 0):
            target[1] = -1 if target[0] not in (-1,) else int(k.sum())
            ctx.index.set_const(node.input[1], target)


@register("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum")
class Reduce(OneInput):

    def _axes(self, node, ctx, rank: int) -> Optional[list[int]]:
        if len(node.input) > 1 and node.input[1]:
            a = ctx.index.const(node.input[1])
            if a is None:
                return None
            axes = [int(v) for v in a.reshape(-1)]
        else:
            axes = list(attr(node, "axes", []))
        if not axes:  # no axes: all of them, unless noop_with_empty_axes
            return [] if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
        return axes

    def flow(self, node, ctx, x):
        rank = ctx.index.rank(node.input[0])
        axes = None if rank is None else self._axes(node, ctx, rank)
        ca = norm_axis(x.axis, rank)
        if rank is None or axes is None or ca is None:
            ctx.block(x.ids, describe(node), "reduction over unknown axes")
            return
        axes = [norm_axis(a, rank) for a in axes]
        if ca in axes:
            ctx.block(x.ids, describe(node), "reduction over the channel axis couples channels")
            return
        new_axis = ca if attr(node, "keepdims", 1) else ca - sum(a < ca for a in axes)
        const = x.const if node.op_type in ("ReduceMean", "ReduceMax", "ReduceMin") else np.full_like(x.const, np.nan)
        ctx.tensors[node.output[0]] = Channels(new_axis, x.ids, const)


@register("Squeeze", "Unsqueeze", "Transpose")
class Reshaping(OneInput):
    """Squeeze / Unsqueeze / Transpose: the channel axis moves, the channels stay."""

    def flow(self, node, ctx, x):
        rank = ctx.index.rank(node.input[0])
        ca = norm_axis(x.axis, rank)
        out_rank = ctx.index.rank(node.output[0])
        if ca is None or out_rank is None:
            ctx.block(x.ids, describe(node), f"{node.op_type} with unknown rank")
            return
        if node.op_type == "Transpose":
            perm = attr(node, "perm", list(range(rank))[::-1])
            new = list(perm).index(ca)
        else:
            axes = attr(node, "axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                c = ctx.index.const(node.input[1])
                axes = None if c is None else [int(v) for v in c]
            if axes is None and node.op_type == "Squeeze":  # squeezes every 1: only known with all dims known
                shape = ctx.index.shapes.get(node.input[0])
                axes = None if shape is None or None in shape else [i for i, d in enumerate(shape) if d == 1]
            if axes is None:
                ctx.block(x.ids, describe(node), f"{node.op_type} with unknown axes")
                return
            if node.op_type == "Squeeze":
                axes = [norm_axis(a, rank) for a in axes]
                if ca in axes:
                    ctx.block(x.ids, describe(node), "Squeeze of the channel axis")
                    return
                new = ca - sum(a < ca for a in axes)
            else:
                axes = sorted(norm_axis(a, out_rank) for a in axes)
                new = ca
                for a in axes:
                    if a <= new:
                        new += 1
        ctx.tensors[node.output[0]] = Channels(new, x.ids, x.const)


@register("Softmax", "LogSoftmax", "LayerNormalization")
class AxisOp(OneInput):
    """Softmax / LayerNormalization: fine along other axes, coupling along the channel axis."""

    def flow(self, node, ctx, x):
        rank = ctx.index.rank(node.input[0])
        legacy = node.op_type != "LayerNormalization" and (ctx.index.opset or 13) < 13
        axis = norm_axis(attr(node, "axis", 1 if legacy else -1), rank)
        ca = norm_axis(x.axis, rank)
        if node.op_type == "LayerNormalization" or legacy:  # before opset 13 Softmax covers axis..end
            coupled = axis is None or ca is None or ca >= axis
        else:
            coupled = axis is None or ca is None or ca == axis
        if coupled:
            ctx.block(x.ids, describe(node), f"{node.op_type} normalizes across the channel axis")
            return
        for i in node.input[1:]:
            if i in ctx.tensors:
                ctx.block_tensor(i, describe(node), "normalization parameters are activations")
        ctx.tensors[node.output[0]] = Channels(x.axis, x.ids, np.full(len(x.ids), np.nan))


@register("Shape")
class ShapeOf(OneInput):
    """Shape(x): the channel count is in the shape vector, so removal changes its value. Allowed only when
    every consumer reads other entries (e.g. the batch size: Gather 0, Slice 0:1); Size is never allowed."""

    def _reads_only_other(self, node: onnx.NodeProto, ctx: ChannelContext, shape: str, n: int, pos: int) -> bool:
        """Whether `node` reads the shape vector `shape` (n entries) only at entries other than `pos`."""
        if node.input[0] != shape or shape in node.input[1:]:
            return False
        if node.op_type == "Gather" and attr(node, "axis", 0) == 0:
            idx = ctx.index.const(node.input[1])
            return idx is not None and pos not in {int(i) % n for i in idx.reshape(-1).tolist()}
        if node.op_type == "Slice":
            p, _ = Slice().params(node, ctx)
            if p is None or not p.starts or [norm_axis(a, 1) for a in p.axes] != [0] or p.steps[0] == 0:
                return False
            return pos not in slice_range(n, p.starts[0], p.ends[0], p.steps[0])
        return False

    def flow(self, node, ctx, x):
        rank = ctx.index.rank(node.input[0])
        if rank is None:
            ctx.block(x.ids, describe(node), "Shape of a tensor of unknown rank")
            return
        ca = norm_axis(x.axis, rank)
        start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (attr(node, "start", 0), attr(node, "end", rank)))
        if not start <= ca < end:
            return
        users = ctx.index.consumers.get(node.output[0], [])
        if node.output[0] in ctx.index.graph_outputs or \
                not all(self._reads_only_other(u, ctx, node.output[0], end - start, ca - start) for u in users):
            ctx.block(x.ids, describe(node), "the channel count is read from the tensor's shape")
