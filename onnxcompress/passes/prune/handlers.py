"""Per-op channel-pruning behaviour: one registry of handlers keyed by op_type.

`propagate(node, ctx)` says how channels flow through the op (new ids, united ids, blocked ids with a
reason) and what constant a dead channel holds after it; `apply(node, ctx, kept)` slices the op's
parameters once the groups to remove are known; `fold(...)` (consumers only) adds the constant of a
removed input channel into the consumer's bias.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import ChannelContext, Channels, Read

Kept = Callable[[str], Optional[np.ndarray]]  # tensor -> bool mask of kept positions (None: untouched)


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _norm_axis(axis: int, rank: Optional[int]) -> Optional[int]:
    if axis >= 0:
        return axis
    return None if rank is None else rank + axis


def _target(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


class Handler:
    """Default: an op we cannot follow. Channels reaching it are blocked; its outputs are untracked."""

    def propagate(self, node, ctx: ChannelContext) -> None:
        for name in node.input:
            if name in ctx.tensors:
                ctx.block_tensor(name, _target(node), f"{node.op_type} is not handled by channel pruning")

    def apply(self, node, ctx: ChannelContext, kept: Kept) -> None:
        pass


class Ignore(Handler):
    """Ops whose output does not depend on the channel count in a way we must edit (Shape, Size)."""

    def propagate(self, node, ctx):
        pass


# ----------------------------------------------------------------------------- producers / consumers

def _weight_ok(node, ctx: ChannelContext, name: str) -> Optional[np.ndarray]:
    w = ctx.index.const(name)
    if w is None:
        return None
    if ctx.index.uses(name) > 1:
        return None
    return w


def _bias(node, ctx, idx: int) -> tuple[bool, Optional[np.ndarray]]:
    """(ok, bias) - ok False when a bias input exists but is not a constant."""
    if len(node.input) <= idx or not node.input[idx]:
        return True, None
    b = ctx.index.const(node.input[idx])
    return (b is not None and ctx.index.uses(node.input[idx]) == 1), b


def _add_bias(node, ctx, idx: int, value: np.ndarray) -> None:
    name = f"{node.output[0]}__folded_bias"
    ctx.index.model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    ctx.index.inits[name] = ctx.index.model.graph.initializer[-1]
    while len(node.input) < idx:
        node.input.append("")
    node.input.append(name)


def _slice_in_out(node, ctx, kept: Kept):
    """Slice a weight laid out [in, out, ...] (ConvTranspose, MatMul) by the kept input and output channels."""
    w = ctx.index.const(node.input[1])
    ko, ki = kept(node.output[0]), kept(node.input[0])
    if ki is not None:
        w = w[ki]
    if ko is not None:
        w = w[:, ko]
    ctx.index.set_const(node.input[1], w)
    return ko


class Conv(Handler):
    def _padded(self, node, w) -> bool:
        pads = attr(node, "pads", [])
        auto = attr(node, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        return any(p > 0 for p in pads) or auto in ("SAME_UPPER", "SAME_LOWER")

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        w = _weight_ok(node, ctx, node.input[1])
        ok, b = _bias(node, ctx, 2)
        out = node.output[0]
        if w is None or not ok:
            super().propagate(node, ctx)
            reason = "weight or bias is not a constant used by this node alone"
            if x is not None:
                ctx.block(x.ids, _target(node), reason)
            return
        group = attr(node, "group", 1)
        cout = w.shape[0]
        if x is not None and x.axis != 1:
            ctx.block(x.ids, _target(node), "input channel axis is not axis 1")
            x = None
        bias = b if b is not None else np.zeros(cout)
        rows_zero = ~w.reshape(cout, -1).any(axis=1)
        padded = self._padded(node, w)
        if group == 1:
            if x is not None:
                ctx.reads.append(Read(node, node.input[0], exact_fold=not padded, can_fold=True))
            ids = ctx.new_ids(cout)
            ctx.producers.append((node, node.input[1], ids))
            ctx.tensors[out] = Channels(1, ids, np.where(rows_zero, bias, np.nan).astype(np.float64))
        elif x is not None and group == len(x.ids) == cout and w.shape[1] == 1:  # depthwise
            ctx.producers.append((node, node.input[1], x.ids))
            ksum = w.reshape(cout, -1).sum(axis=1)
            c = x.const
            exact_ok = (~padded) | (c == 0) if ctx.exact else np.ones_like(c, dtype=bool)
            through = np.where(np.isnan(c) | ~exact_ok, np.nan, c * ksum + bias)
            const = np.where(rows_zero, bias, through)
            ctx.tensors[out] = Channels(1, x.ids, const.astype(np.float64))
        else:
            if x is not None:
                ctx.block(x.ids, _target(node), f"grouped conv (group={group}) couples channels in groups")
            ids = ctx.new_ids(cout)
            ctx.block(ids, _target(node), f"grouped conv (group={group}) output")
            ctx.tensors[out] = Channels(1, ids, np.full(cout, np.nan))

    def apply(self, node, ctx, kept):
        w = ctx.index.const(node.input[1])
        ko, ki = kept(node.output[0]), kept(node.input[0])
        group = attr(node, "group", 1)
        _, b = _bias(node, ctx, 2)
        if group > 1:  # depthwise: in and out are the same channels
            if ko is None:
                return
            w = w[ko]
            set_attr(node, "group", int(ko.sum()))
        else:
            if ki is not None:
                w = w[:, ki]
            if ko is not None:
                w = w[ko]
        ctx.index.set_const(node.input[1], w)
        if b is not None and ko is not None:
            ctx.index.set_const(node.input[2], b[ko])

    def fold(self, node, ctx, removed: np.ndarray, const: np.ndarray) -> None:
        w = ctx.index.const(node.input[1])
        delta = w[:, removed].reshape(w.shape[0], int(removed.sum()), -1).sum(axis=2) @ const[removed]
        _, b = _bias(node, ctx, 2)
        if b is None:
            _add_bias(node, ctx, 2, delta)
        else:
            ctx.index.set_const(node.input[2], b + delta)


class ConvTranspose(Conv):
    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        w = _weight_ok(node, ctx, node.input[1])
        ok, b = _bias(node, ctx, 2)
        if w is None or not ok or attr(node, "group", 1) != 1 or (x is not None and x.axis != 1):
            if x is not None:
                ctx.block(x.ids, _target(node), "ConvTranspose with grouped/non-constant weights")
            return
        cout = w.shape[1]
        if x is not None:  # a constant input does not give a constant output at the borders
            ctx.reads.append(Read(node, node.input[0], exact_fold=False, can_fold=True))
        bias = b if b is not None else np.zeros(cout)
        rows_zero = ~np.moveaxis(w, 1, 0).reshape(cout, -1).any(axis=1)
        ids = ctx.new_ids(cout)
        ctx.producers.append((node, node.input[1], ids))
        ctx.tensors[node.output[0]] = Channels(1, ids, np.where(rows_zero, bias, np.nan))

    def apply(self, node, ctx, kept):
        ko = _slice_in_out(node, ctx, kept)
        _, b = _bias(node, ctx, 2)
        if b is not None and ko is not None:
            ctx.index.set_const(node.input[2], b[ko])

    def fold(self, node, ctx, removed, const):
        w = ctx.index.const(node.input[1])
        delta = np.einsum("i,io->o", const[removed], w[removed].reshape(int(removed.sum()), w.shape[1], -1).sum(axis=2))
        _, b = _bias(node, ctx, 2)
        if b is None:
            _add_bias(node, ctx, 2, delta)
        else:
            ctx.index.set_const(node.input[2], b + delta)


def _is_last(ch: Channels, ctx, name: str) -> bool:
    r = ctx.index.rank(name)
    return ch.axis == -1 or (r is not None and ch.axis == r - 1)


class Gemm(Handler):
    def _matrix(self, node, ctx) -> Optional[np.ndarray]:
        """B as a [K, N] matrix."""
        b = ctx.index.const(node.input[1])
        return None if b is None else (b.T if attr(node, "transB", 0) else b)

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        bm = self._matrix(node, ctx) if ctx.index.uses(node.input[1]) == 1 else None
        ok, c = _bias(node, ctx, 2)
        if bm is None or not ok or attr(node, "transA", 0) or (c is not None and c.size not in (1, bm.shape[1])):
            if x is not None:
                ctx.block(x.ids, _target(node), "Gemm with transA, shared or non-constant B/C")
            return
        if x is not None:
            if not _is_last(x, ctx, node.input[0]) or len(x.ids) != bm.shape[0]:
                ctx.block(x.ids, _target(node), "input features do not map to Gemm's K axis")
            else:
                ctx.reads.append(Read(node, node.input[0], exact_fold=True, can_fold=True))
        n = bm.shape[1]
        beta = attr(node, "beta", 1.0)
        bias = np.zeros(n) if c is None else np.broadcast_to(c.reshape(-1), (n,)) * beta
        ids = ctx.new_ids(n)
        ctx.producers.append((node, node.input[1], ids))
        ctx.tensors[node.output[0]] = Channels(-1, ids, np.where(~bm.any(axis=0), bias, np.nan))

    def apply(self, node, ctx, kept):
        bm = self._matrix(node, ctx)
        ko, ki = kept(node.output[0]), kept(node.input[0])
        if ki is not None:
            bm = bm[ki]
        if ko is not None:
            bm = bm[:, ko]
        ctx.index.set_const(node.input[1], bm.T if attr(node, "transB", 0) else bm)
        _, c = _bias(node, ctx, 2)
        if c is not None and ko is not None:
            c = np.broadcast_to(c.reshape(-1), (len(ko),)) if c.size == 1 else c.reshape(-1)
            ctx.index.set_const(node.input[2], np.ascontiguousarray(c[ko]))

    def fold(self, node, ctx, removed, const):
        bm = self._matrix(node, ctx)
        delta = attr(node, "alpha", 1.0) * (const[removed] @ bm[removed]) / attr(node, "beta", 1.0)
        _, c = _bias(node, ctx, 2)
        if c is None:
            set_attr(node, "beta", 1.0)
            _add_bias(node, ctx, 2, delta * attr(node, "beta", 1.0))
        else:
            ctx.index.set_const(node.input[2], np.broadcast_to(c.reshape(-1), delta.shape) + delta)


class MatMul(Handler):
    """x @ W with constant 2-D W: MLP layers and transformer feed-forward blocks (hidden = last axis)."""

    def _bias_add(self, node, ctx) -> Optional[onnx.NodeProto]:
        cons = ctx.index.consumers.get(node.output[0], [])
        if len(cons) == 1 and cons[0].op_type == "Add":
            other = [i for i in cons[0].input if i != node.output[0]]
            if len(other) == 1 and ctx.index.const(other[0]) is not None and ctx.index.const(other[0]).ndim == 1 \
                    and ctx.index.uses(other[0]) == 1:
                return cons[0]
        return None

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        w = ctx.index.const(node.input[1])
        if w is None or w.ndim != 2 or ctx.index.uses(node.input[1]) != 1:
            for name in node.input:
                if name in ctx.tensors:
                    ctx.block_tensor(name, _target(node), "MatMul of two activations (e.g. attention) couples channels")
            return
        if x is not None:
            if not _is_last(x, ctx, node.input[0]) or len(x.ids) != w.shape[0]:
                ctx.block(x.ids, _target(node), "input features do not map to MatMul's K axis")
            else:
                ctx.reads.append(Read(node, node.input[0], exact_fold=True, can_fold=self._bias_add(node, ctx) is not None))
        ids = ctx.new_ids(w.shape[1])
        ctx.producers.append((node, node.input[1], ids))
        ctx.tensors[node.output[0]] = Channels(-1, ids, np.where(~w.any(axis=0), 0.0, np.nan))

    def apply(self, node, ctx, kept):
        _slice_in_out(node, ctx, kept)

    def fold(self, node, ctx, removed, const):
        w = ctx.index.const(node.input[1])
        add = self._bias_add(node, ctx)
        name = next(i for i in add.input if i != node.output[0])
        ctx.index.set_const(name, ctx.index.const(name) + const[removed] @ w[removed])


# ----------------------------------------------------------------------------- channel-wise ops

def _relu(x, n):
    return np.maximum(x, 0)


def _clip(x, n, ctx=None):
    lo = attr(n, "min", -np.inf)
    hi = attr(n, "max", np.inf)
    return np.clip(x, lo, hi)


UNARY: dict[str, Callable] = {
    "Relu": _relu,
    "LeakyRelu": lambda x, n: np.where(x >= 0, x, x * attr(n, "alpha", 0.01)),
    "Sigmoid": lambda x, n: 1 / (1 + np.exp(-x)),
    "HardSigmoid": lambda x, n: np.clip(attr(n, "alpha", 0.2) * x + attr(n, "beta", 0.5), 0, 1),
    "HardSwish": lambda x, n: x * np.clip(x / 6 + 0.5, 0, 1),
    "Tanh": lambda x, n: np.tanh(x),
    "Identity": lambda x, n: x,
    "Dropout": lambda x, n: x,
    "Elu": lambda x, n: np.where(x > 0, x, attr(n, "alpha", 1.0) * (np.exp(x) - 1)),
    "Softplus": lambda x, n: np.log1p(np.exp(x)),
    "Neg": lambda x, n: -x,
    "Abs": lambda x, n: np.abs(x),
    "Erf": lambda x, n: np.vectorize(lambda v: math.erf(v) if not np.isnan(v) else np.nan)(x),
    "Gelu": lambda x, n: 0.5 * x * (1 + np.vectorize(lambda v: math.erf(v / math.sqrt(2)) if not np.isnan(v) else np.nan)(x)),
    "Cast": lambda x, n: x,
}


class Unary(Handler):
    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None:
            return
        if node.op_type == "Clip" and len(node.input) > 1:
            bounds = [ctx.index.const(i) if i else None for i in node.input[1:3]]
            if any(i and b is None for i, b in zip(node.input[1:3], bounds)):
                ctx.block(x.ids, _target(node), "Clip bounds are not constants")
                return
            lo = bounds[0] if len(bounds) > 0 and bounds[0] is not None else -np.inf
            hi = bounds[1] if len(bounds) > 1 and bounds[1] is not None else np.inf
            const = np.clip(x.const, lo, hi)
        elif node.op_type == "Clip":
            const = _clip(x.const, node)
        else:
            with np.errstate(all="ignore"):
                const = UNARY[node.op_type](x.const, node)
        ctx.tensors[node.output[0]] = Channels(x.axis, x.ids, np.asarray(const, dtype=np.float64))


class Shaped(Handler):
    """Pools, Resize, Pad: channel axis 1 passes through; constants survive unless padding changes them."""

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None:
            return
        if x.axis != 1:
            ctx.block(x.ids, _target(node), "channel axis is not axis 1")
            return
        const = x.const.copy()
        op = node.op_type
        if op == "Pad":
            pads = ctx.index.const(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "pads")
            mode = attr(node, "mode", b"constant")
            if pads is None or len(pads) < 4 or pads[1] != 0 or pads[len(pads) // 2 + 1] != 0:
                ctx.block(x.ids, _target(node), "Pad on the channel axis or with non-constant pads")
                return
            value = 0.0
            if len(node.input) > 2 and node.input[2]:
                v = ctx.index.const(node.input[2])
                value = float(v) if v is not None else np.nan
            if (mode in (b"constant", "constant")) and ctx.exact:
                const = np.where(const == value, const, np.nan)
        elif op == "AveragePool" and any(p > 0 for p in attr(node, "pads", [])) and attr(node, "count_include_pad", 0) and ctx.exact:
            const = np.where(const == 0, const, np.nan)
        elif op == "Resize":
            scales = ctx.index.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            sizes = ctx.index.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            if sizes is not None and sizes.size or (scales is not None and scales.size and scales[1] != 1):
                ctx.block(x.ids, _target(node), "Resize with explicit sizes or channel scaling")
                return
        elif op == "LpPool" or op == "GlobalLpPool":
            const = np.full_like(const, np.nan)
        ctx.tensors[node.output[0]] = Channels(1, x.ids, const)


class BatchNorm(Handler):
    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None:
            return
        params = [ctx.index.const(i) for i in node.input[1:5]]
        if x.axis != 1 or any(p is None for p in params) or any(ctx.index.uses(i) > 1 for i in node.input[1:5]):
            ctx.block(x.ids, _target(node), "BatchNormalization with non-constant or shared parameters")
            return
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + attr(node, "epsilon", 1e-5))
        ctx.tensors[node.output[0]] = Channels(1, x.ids, (x.const - mean) * scale + beta)

    def apply(self, node, ctx, kept):
        k = kept(node.input[0])
        if k is not None:
            for name in node.input[1:5]:
                ctx.index.set_const(name, ctx.index.const(name)[k])


def _const_axis(c: np.ndarray, axis: int, out_rank: Optional[int]) -> Optional[int]:
    """Which axis of the broadcast constant `c` lines up with the channel axis (None: it doesn't vary)."""
    if c.ndim == 0:
        return None
    a = _norm_axis(axis, out_rank)
    if a is None:
        return c.ndim - 1 if axis == -1 else None
    ca = a - (out_rank - c.ndim)
    return ca if ca >= 0 else None


_BIN = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


class Binary(Handler):
    def propagate(self, node, ctx):
        a, b = (ctx.tensors.get(i) for i in node.input[:2])
        if a is None and b is None:
            return
        out_rank = ctx.index.rank(node.output[0])
        fn = _BIN[node.op_type]
        if a is not None and b is not None:
            if len(a.ids) != len(b.ids) or _norm_axis(a.axis, out_rank) != _norm_axis(b.axis, out_rank) \
                    or ctx.index.rank(node.input[0]) != ctx.index.rank(node.input[1]):
                ctx.block(a.ids, _target(node), "operands broadcast across the channel axis")
                ctx.block(b.ids, _target(node), "operands broadcast across the channel axis")
                return
            ctx.union(a.ids, b.ids)
            with np.errstate(all="ignore"):
                const = fn(a.const, b.const)
            if node.op_type == "Mul":  # 0 * anything finite is 0
                const = np.where((a.const == 0) | (b.const == 0), 0.0, const)
            ctx.tensors[node.output[0]] = Channels(a.axis, a.ids, const)
            return
        x, xi = (a, 0) if a is not None else (b, 1)
        other = node.input[1 - xi]
        c = ctx.index.const(other)
        if c is None:
            ctx.block(x.ids, _target(node), f"{node.op_type} with a non-constant operand that is not tracked")
            return
        ca = _const_axis(c, x.axis, out_rank)
        if ca is not None and c.shape[ca] not in (1, len(x.ids)):
            ctx.block(x.ids, _target(node), "constant operand does not broadcast per channel")
            return
        if ca is not None and c.shape[ca] == len(x.ids):
            if ctx.index.uses(other) > 1:
                ctx.block(x.ids, _target(node), "per-channel constant is shared with another node")
                return
            if c.size != len(x.ids):
                ctx.tensors[node.output[0]] = Channels(x.axis, x.ids, np.full(len(x.ids), np.nan))
                return
            cv = c.reshape(-1).astype(np.float64)
        else:
            if c.size != 1:  # varies along a non-channel axis: constant channels stop being constant
                ctx.tensors[node.output[0]] = Channels(x.axis, x.ids, np.where(
                    (node.op_type == "Mul") & (x.const == 0), 0.0, np.nan))
                return
            cv = np.full(len(x.ids), float(c.reshape(-1)[0]))
        with np.errstate(all="ignore"):
            const = fn(x.const, cv) if xi == 0 else fn(cv, x.const)
        ctx.tensors[node.output[0]] = Channels(x.axis, x.ids, const)

    def apply(self, node, ctx, kept):
        for xi in (0, 1):
            k = kept(node.input[xi])
            other = node.input[1 - xi]
            c = ctx.index.const(other)
            if k is None or c is None or other in ctx.tensors:
                continue
            ca = _const_axis(c, ctx.tensors[node.input[xi]].axis, ctx.index.rank(node.output[0]))
            if ca is not None and c.shape[ca] == len(k):
                ctx.index.set_const(other, np.compress(k, c, axis=ca))


# ----------------------------------------------------------------------------- structure ops

class Concat(Handler):
    def propagate(self, node, ctx):
        ins = [ctx.tensors.get(i) for i in node.input]
        if all(c is None for c in ins):
            return
        axis = attr(node, "axis")
        rank = ctx.index.rank(node.output[0])
        tracked = [c for c in ins if c is not None]
        ch_axis = _norm_axis(tracked[0].axis, rank)
        if _norm_axis(axis, rank) != ch_axis or any(_norm_axis(c.axis, rank) != ch_axis for c in tracked):
            for c in tracked:
                ctx.block(c.ids, _target(node), "Concat along a non-channel axis")
            return
        parts_ids, parts_const = [], []
        for name, c in zip(node.input, ins):
            if c is None:  # e.g. a graph input: its channels are fixed, give them blocked ids
                shape = ctx.index.shapes.get(name)
                n = shape[ch_axis] if shape and ch_axis is not None and shape[ch_axis] else None
                if n is None:
                    for t in tracked:
                        ctx.block(t.ids, _target(node), "Concat input of unknown channel count")
                    return
                ids = ctx.new_ids(n)
                ctx.block(ids, _target(node), "Concat input that is not prunable")
                c = Channels(tracked[0].axis, ids, np.full(n, np.nan))
                ctx.tensors[name] = c
            parts_ids.append(c.ids)
            parts_const.append(c.const)
        ctx.tensors[node.output[0]] = Channels(tracked[0].axis, np.concatenate(parts_ids), np.concatenate(parts_const))


class Split(Handler):
    def _sizes(self, node, ctx, n: int) -> Optional[list[int]]:
        if len(node.input) > 1 and node.input[1]:
            s = ctx.index.const(node.input[1])
            return None if s is None else [int(v) for v in s]
        s = attr(node, "split")
        if s is not None:
            return list(s)
        k = len(node.output)
        return [n // k] * k if n % k == 0 else None

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None:
            return
        rank = ctx.index.rank(node.input[0])
        if _norm_axis(attr(node, "axis", 0), rank) != _norm_axis(x.axis, rank) or rank is None:
            ctx.block(x.ids, _target(node), "Split along a non-channel axis")
            return
        sizes = self._sizes(node, ctx, len(x.ids))
        if sizes is None or sum(sizes) != len(x.ids):
            ctx.block(x.ids, _target(node), "Split sizes are not constant")
            return
        start = 0
        for out, n in zip(node.output, sizes):
            ctx.tensors[out] = Channels(x.axis, x.ids[start:start + n], x.const[start:start + n])
            start += n

    def apply(self, node, ctx, kept):
        if kept(node.input[0]) is None:
            return
        x = ctx.tensors[node.input[0]]
        sizes = [int(kept(o).sum()) if kept(o) is not None else len(ctx.tensors[o].ids) for o in node.output]
        del x
        if len(node.input) > 1 and node.input[1]:
            ctx.index.set_const(node.input[1], np.array(sizes, dtype=np.int64))
        elif attr(node, "split") is not None:
            set_attr(node, "split", sizes)
        else:  # equal split no longer equal: give explicit sizes
            name = f"{node.output[0]}__split_sizes"
            ctx.index.model.graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), name))
            ctx.index.inits[name] = ctx.index.model.graph.initializer[-1]
            while len(node.input) < 2:
                node.input.append("")
            node.input[1] = name
            for a in list(node.attribute):
                if a.name == "num_outputs":
                    node.attribute.remove(a)


class Flatten(Handler):
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

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None:
            return
        if node.op_type == "Reshape" and _is_last(x, ctx, node.input[0]):
            src = self._last_dim_source(node, ctx)
            if src is not None and src[1].size and int(src[1].reshape(-1)[-1]) == len(x.ids):
                ctx.tensors[node.output[0]] = Channels(-1, x.ids, x.const)
                return
            ctx.block(x.ids, _target(node), "Reshape that changes the last (channel) axis")
            return
        shape = ctx.index.shapes.get(node.input[0])
        if node.op_type == "Flatten":
            ok = attr(node, "axis", 1) == 1
        else:  # Reshape to [N, -1] / [0, -1] / [N, C*H*W]; N may come from Shape (dynamo: Concat(Shape..., [C*H*W]))
            target = ctx.index.const(node.input[1])
            ok = target is not None and target.size == 2 and (attr(node, "allowzero", 0) == 0 or 0 not in target)
            if target is None and ctx.index.rank(node.output[0]) == 2 and shape is not None \
                    and all(d is not None for d in shape[2:]):
                src = self._last_dim_source(node, ctx)
                flat = len(x.ids) * (int(np.prod(shape[2:])) if len(shape) > 2 else 1)
                ok = src is not None and int(src[1].reshape(-1)[-1]) in (-1, flat)
        if not ok or x.axis != 1 or shape is None or any(d is None for d in shape[2:]):
            ctx.block(x.ids, _target(node), f"{node.op_type} that does not flatten [N, C, ...] with known spatial size")
            return
        spatial = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        ctx.tensors[node.output[0]] = Channels(-1, np.repeat(x.ids, spatial), np.repeat(x.const, spatial))

    def apply(self, node, ctx, kept):
        k = kept(node.output[0])
        if node.op_type != "Reshape" or k is None:
            return
        x = ctx.tensors[node.input[0]]
        if len(x.ids) == len(ctx.tensors[node.output[0]].ids) and _is_last(x, ctx, node.input[0]):
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


class Reduce(Handler):
    def _axes(self, node, ctx) -> Optional[list[int]]:
        if len(node.input) > 1 and node.input[1]:
            a = ctx.index.const(node.input[1])
            return None if a is None else [int(v) for v in a]
        return attr(node, "axes")

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None:
            return
        rank = ctx.index.rank(node.input[0])
        axes = self._axes(node, ctx)
        ca = _norm_axis(x.axis, rank)
        if rank is None or axes is None or ca is None:
            ctx.block(x.ids, _target(node), "reduction over unknown axes")
            return
        axes = [_norm_axis(a, rank) for a in axes]
        if ca in axes:
            ctx.block(x.ids, _target(node), "reduction over the channel axis couples channels")
            return
        new_axis = ca if attr(node, "keepdims", 1) else ca - sum(a < ca for a in axes)
        const = x.const if node.op_type in ("ReduceMean", "ReduceMax", "ReduceMin") else np.full_like(x.const, np.nan)
        ctx.tensors[node.output[0]] = Channels(new_axis if x.axis >= 0 else x.axis, x.ids, const)


class Reshaping(Handler):
    """Squeeze / Unsqueeze / Transpose: the channel axis moves, the channels stay."""

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None:
            return
        rank = ctx.index.rank(node.input[0])
        ca = _norm_axis(x.axis, rank)
        out_rank = ctx.index.rank(node.output[0])
        if ca is None or out_rank is None:
            ctx.block(x.ids, _target(node), f"{node.op_type} with unknown rank")
            return
        if node.op_type == "Transpose":
            perm = attr(node, "perm", list(range(rank))[::-1])
            new = list(perm).index(ca)
        else:
            axes = attr(node, "axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                c = ctx.index.const(node.input[1])
                axes = None if c is None else [int(v) for v in c]
            if axes is None and node.op_type == "Squeeze":
                shape = ctx.index.shapes.get(node.input[0]) or []
                axes = [i for i, d in enumerate(shape) if d == 1]
            if axes is None:
                ctx.block(x.ids, _target(node), f"{node.op_type} with unknown axes")
                return
            if node.op_type == "Squeeze":
                axes = [_norm_axis(a, rank) for a in axes]
                if ca in axes:
                    ctx.block(x.ids, _target(node), "Squeeze of the channel axis")
                    return
                new = ca - sum(a < ca for a in axes)
            else:
                axes = sorted(_norm_axis(a, out_rank) for a in axes)
                new = ca
                for a in axes:
                    if a <= new:
                        new += 1
        ctx.tensors[node.output[0]] = Channels(new, x.ids, x.const)


class AxisOp(Handler):
    """Softmax / LayerNormalization: fine along other axes, coupling along the channel axis."""

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None:
            return
        rank = ctx.index.rank(node.input[0])
        axis = _norm_axis(attr(node, "axis", -1), rank)
        ca = _norm_axis(x.axis, rank)
        if node.op_type == "LayerNormalization":
            coupled = axis is None or ca is None or ca >= axis
        else:
            coupled = axis is None or ca is None or ca == axis
        if coupled:
            ctx.block(x.ids, _target(node), f"{node.op_type} normalizes across the channel axis")
            return
        for i in node.input[1:]:
            if i in ctx.tensors:
                ctx.block_tensor(i, _target(node), "normalization parameters are activations")
        ctx.tensors[node.output[0]] = Channels(x.axis, x.ids, np.full(len(x.ids), np.nan))


HANDLERS: dict[str, Handler] = {
    "Conv": Conv(), "ConvTranspose": ConvTranspose(), "Gemm": Gemm(), "MatMul": MatMul(),
    "BatchNormalization": BatchNorm(), "Clip": Unary(),
    **{op: Unary() for op in UNARY},
    **{op: Shaped() for op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Pad",
                               "LpPool", "GlobalLpPool")},
    **{op: Binary() for op in _BIN},
    "Concat": Concat(), "Split": Split(), "Flatten": Flatten(), "Reshape": Flatten(),
    **{op: Reduce() for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum")},
    **{op: Reshaping() for op in ("Squeeze", "Unsqueeze", "Transpose")},
    "Softmax": AxisOp(), "LogSoftmax": AxisOp(), "LayerNormalization": AxisOp(),
    "Shape": Ignore(), "Size": Ignore(),
}
DEFAULT = Handler()
