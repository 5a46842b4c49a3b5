"""Channel-pruning handlers of the compute layers: Conv, ConvTranspose, Gemm, MatMul.

They create channel ids (producers: output channels, scored and sliced with the weight) and read them
(consumers: input channels, sliced from the weight; constants of removed inputs folded into the bias).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx

from ...graph import in_out
from .graph import ChannelContext, Channels, Read
from .handlers import Handler, Kept, add_initializer, attr, describe, is_last, register, set_attr


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
    w = ctx.index.inits.get(node.input[1])  # the bias has the weight's type (float16 models)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(w.data_type) if w is not None else np.float32
    name = add_initializer(ctx, f"{node.output[0]}__folded_bias", value.astype(dtype))
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


def _add_to_bias(node: onnx.NodeProto, ctx: ChannelContext, delta: np.ndarray) -> None:
    """Add what removed constant input channels contributed to the layer's bias (input 2), creating it if absent."""
    _, b = _bias(node, ctx, 2)
    if b is None:
        _add_bias(node, ctx, 2, delta)
    else:
        ctx.index.set_const(node.input[2], b + delta)


@register("Conv")
class Conv(Handler):
    follows = 1

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
            if x is not None:  # first, so the recorded reason is this one (a block keeps its first reason)
                ctx.block(x.ids, describe(node), "weight or bias is not a constant used by this node alone")
            super().propagate(node, ctx)
            return
        group = attr(node, "group", 1)
        cout = w.shape[0]
        if x is not None and x.axis != 1:
            ctx.block(x.ids, describe(node), "input channel axis is not axis 1")
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
                ctx.block(x.ids, describe(node), f"grouped conv (group={group}) couples channels in groups")
            ids = ctx.new_ids(cout)
            ctx.block(ids, describe(node), f"grouped conv (group={group}) output")
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
        _add_to_bias(node, ctx, w[:, removed].reshape(w.shape[0], int(removed.sum()), -1).sum(axis=2) @ const[removed])


@register("ConvTranspose")
class ConvTranspose(Conv):
    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        w = _weight_ok(node, ctx, node.input[1])
        ok, b = _bias(node, ctx, 2)
        if w is None or not ok or attr(node, "group", 1) != 1 or (x is not None and x.axis != 1):
            if x is not None:
                ctx.block(x.ids, describe(node), "ConvTranspose with grouped/non-constant weights")
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
        _add_to_bias(node, ctx, np.einsum("i,io->o", const[removed],
                                          w[removed].reshape(int(removed.sum()), w.shape[1], -1).sum(axis=2)))


@register("Gemm")
class Gemm(Handler):
    follows = 1

    def _matrix(self, node, ctx) -> Optional[np.ndarray]:
        """B as a [K, N] matrix."""
        b = ctx.index.const(node.input[1])
        return None if b is None else in_out(node, b)

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        bm = self._matrix(node, ctx) if ctx.index.uses(node.input[1]) == 1 else None
        ok, c = _bias(node, ctx, 2)
        if bm is None or not ok or attr(node, "transA", 0) or (c is not None and c.size not in (1, bm.shape[1])):
            if x is not None:
                ctx.block(x.ids, describe(node), "Gemm with transA, shared or non-constant B/C")
            return
        if x is not None:
            if not is_last(x, ctx, node.input[0]) or len(x.ids) != bm.shape[0]:
                ctx.block(x.ids, describe(node), "input features do not map to Gemm's K axis")
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
        ctx.index.set_const(node.input[1], in_out(node, bm))
        _, c = _bias(node, ctx, 2)
        if c is not None and ko is not None:
            c = np.broadcast_to(c.reshape(-1), (len(ko),)) if c.size == 1 else c.reshape(-1)
            ctx.index.set_const(node.input[2], np.ascontiguousarray(c[ko]))

    def fold(self, node, ctx, removed, const):
        bm = self._matrix(node, ctx)
        delta = attr(node, "alpha", 1.0) * (const[removed] @ bm[removed])  # what the output loses
        _, c = _bias(node, ctx, 2)
        beta = attr(node, "beta", 1.0)
        if c is not None and beta != 0:
            ctx.index.set_const(node.input[2], np.broadcast_to(c.reshape(-1), delta.shape) + delta / beta)
            return
        set_attr(node, "beta", 1.0)  # no C (or C scaled by 0): delta becomes C, unscaled
        if c is None:
            _add_bias(node, ctx, 2, delta)
        else:
            ctx.index.set_const(node.input[2], delta)


@register("MatMul")
class MatMul(Handler):
    """x @ W with constant 2-D W: MLP layers and transformer feed-forward blocks (hidden = last axis)."""
    follows = 1

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
                    ctx.block_tensor(name, describe(node), "MatMul of two activations (e.g. attention) couples channels")
            return
        if x is not None:
            if not is_last(x, ctx, node.input[0]) or len(x.ids) != w.shape[0]:
                ctx.block(x.ids, describe(node), "input features do not map to MatMul's K axis")
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
