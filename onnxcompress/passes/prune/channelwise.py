"""Channel-pruning handlers of channel-wise ops: activations, pools/Resize/Pad, BatchNormalization and
elementwise binary ops (Add/Sub/Mul/Div, which unite the channels of two tracked operands).

Channels pass through unchanged; the handlers compute the constant a dead channel holds afterwards.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from .graph import Channels
from .handlers import Handler, attr, describe, norm_axis, register


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


@register("Clip", *UNARY)
class Unary(Handler):
    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None:
            return
        if node.op_type == "Clip" and len(node.input) > 1:
            bounds = [ctx.index.const(i) if i else None for i in node.input[1:3]]
            if any(i and b is None for i, b in zip(node.input[1:3], bounds)):
                ctx.block(x.ids, describe(node), "Clip bounds are not constants")
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


@register("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Pad", "LpPool",
          "GlobalLpPool")
class Shaped(Handler):
    """Pools, Resize, Pad: channel axis 1 passes through; constants survive unless padding changes them."""

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None:
            return
        if x.axis != 1:
            ctx.block(x.ids, describe(node), "channel axis is not axis 1")
            return
        const = x.const.copy()
        op = node.op_type
        if op == "Pad":
            pads = ctx.index.const(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "pads")
            mode = attr(node, "mode", b"constant")
            if pads is None or len(pads) < 4 or pads[1] != 0 or pads[len(pads) // 2 + 1] != 0:
                ctx.block(x.ids, describe(node), "Pad on the channel axis or with non-constant pads")
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
                ctx.block(x.ids, describe(node), "Resize with explicit sizes or channel scaling")
                return
        elif op == "LpPool" or op == "GlobalLpPool":
            const = np.full_like(const, np.nan)
        ctx.tensors[node.output[0]] = Channels(1, x.ids, const)


@register("BatchNormalization")
class BatchNorm(Handler):
    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None:
            return
        params = [ctx.index.const(i) for i in node.input[1:5]]
        if x.axis != 1 or any(p is None for p in params) or any(ctx.index.uses(i) > 1 for i in node.input[1:5]):
            ctx.block(x.ids, describe(node), "BatchNormalization with non-constant or shared parameters")
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
    a = norm_axis(axis, out_rank)
    if a is None:
        return c.ndim - 1 if axis == -1 else None
    ca = a - (out_rank - c.ndim)
    return ca if ca >= 0 else None


_BIN = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


@register(*_BIN)
class Binary(Handler):
    def propagate(self, node, ctx):
        a, b = (ctx.tensors.get(i) for i in node.input[:2])
        if a is None and b is None:
            return
        out_rank = ctx.index.rank(node.output[0])
        fn = _BIN[node.op_type]
        if a is not None and b is not None:
            if len(a.ids) != len(b.ids) or norm_axis(a.axis, out_rank) != norm_axis(b.axis, out_rank) \
                    or ctx.index.rank(node.input[0]) != ctx.index.rank(node.input[1]):
                ctx.block(a.ids, describe(node), "operands broadcast across the channel axis")
                ctx.block(b.ids, describe(node), "operands broadcast across the channel axis")
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
            ctx.block(x.ids, describe(node), f"{node.op_type} with a non-constant operand that is not tracked")
            return
        ca = _const_axis(c, x.axis, out_rank)
        if ca is not None and c.shape[ca] not in (1, len(x.ids)):
            ctx.block(x.ids, describe(node), "constant operand does not broadcast per channel")
            return
        if ca is not None and c.shape[ca] == len(x.ids):
            if ctx.index.uses(other) > 1:
                ctx.block(x.ids, describe(node), "per-channel constant is shared with another node")
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
