"""Channel-pruning handlers of channel-wise ops: activations, pools/Resize/Pad, BatchNormalization and
elementwise binary ops (Add/Sub/Mul/Div, which unite the channels of two tracked operands).

Channels pass through unchanged; the handlers compute the constant a dead channel holds afterwards.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import onnx

from .graph import Channels
from .handlers import Handler, OneInput, attr, describe, norm_axis, register


def _relu(x, n):
    return np.maximum(x, 0)


def _clip(x, n, ctx=None):
    lo = attr(n, "min", -np.inf)
    hi = attr(n, "max", np.inf)
    return np.clip(x, lo, hi)


def _erf(x):
    return np.vectorize(lambda v: math.erf(v) if not np.isnan(v) else np.nan, otypes=[np.float64])(x)


def _gelu(x, n):
    if attr(n, "approximate", "none") in ("tanh", b"tanh"):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _cast(x, n):
    """The constant after Cast: rounded/truncated to the target type (NaN stays unknown)."""
    try:
        to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(attr(n, "to")))
    except Exception:  # noqa: BLE001 - a type numpy does not know: the value is unknown
        return np.full_like(x, np.nan)
    if to.kind not in "fiub":
        return np.full_like(x, np.nan)
    with np.errstate(all="ignore"):
        out = x.astype(to).astype(np.float64) if to.kind == "f" else np.where(np.isnan(x), 0, x).astype(to).astype(np.float64)
    return np.where(np.isnan(x), np.nan, out)


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
    "Erf": lambda x, n: _erf(x),
    "Gelu": _gelu,
    "Cast": _cast,
}


@register("Clip", *UNARY)
class Unary(OneInput):

    def flow(self, node, ctx, x):
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
        elif node.op_type == "Dropout" and len(node.input) > 2 and node.input[2] and \
                ((mode := ctx.index.const(node.input[2])) is None or mode.any()):
            ctx.block(x.ids, describe(node), "Dropout in training mode (or with a non-constant mode)")
            return
        else:
            with np.errstate(all="ignore"):
                const = UNARY[node.op_type](x.const, node)
        ctx.tensors[node.output[0]] = Channels(x.axis, x.ids, np.asarray(const, dtype=np.float64))


@register("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Pad", "LpPool",
          "GlobalLpPool")
class Shaped(OneInput):
    """Pools, Resize, Pad: channel axis 1 passes through; constants survive unless padding changes them."""

    def flow(self, node, ctx, x):
        if x.axis != 1:
            ctx.block(x.ids, describe(node), "channel axis is not axis 1")
            return
        const = x.const.copy()
        op = node.op_type
        if op == "Pad":
            pads = ctx.index.const(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "pads")
            mode = attr(node, "mode", b"constant")
            axes = ctx.index.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            rank = ctx.index.rank(node.input[0])
            if pads is not None and axes is not None:  # opset 18: pads of the listed axes only
                full = np.zeros(2 * rank, dtype=np.int64) if rank is not None else None
                if full is not None and len(pads) == 2 * len(axes.reshape(-1)):
                    for j, a in enumerate(int(v) % rank for v in axes.reshape(-1)):
                        full[a], full[a + rank] = pads[j], pads[j + len(pads) // 2]
                pads = full
            elif len(node.input) > 3 and node.input[3]:
                pads = None  # non-constant axes
            if pads is None or len(pads) < 4 or pads[1] != 0 or pads[len(pads) // 2 + 1] != 0:
                ctx.block(x.ids, describe(node), "Pad on the channel axis or with non-constant pads")
                return
            value = float(attr(node, "value", 0.0))  # opset < 11: an attribute
            if len(node.input) > 2 and node.input[2]:
                v = ctx.index.const(node.input[2])
                value = float(v.reshape(-1)[0]) if v is not None and v.size == 1 else np.nan
            if (mode in (b"constant", "constant")) and ctx.exact:
                const = np.where(const == value, const, np.nan)
        elif op == "AveragePool" and attr(node, "count_include_pad", 0) and ctx.exact and \
                (any(p > 0 for p in attr(node, "pads", [])) or attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")):
            const = np.where(const == 0, const, np.nan)
        elif op == "Resize":
            at = 1 if (ctx.index.opset or 11) < 11 else 2  # opset 10: Resize(X, scales)
            scales = ctx.index.const(node.input[at]) if len(node.input) > at and node.input[at] else None
            sizes = ctx.index.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            if sizes is not None and sizes.size or (scales is not None and scales.size and scales[1] != 1) \
                    or attr(node, "axes") is not None or (len(node.input) > 1 and not all(
                        ctx.index.const(i) is not None for i in node.input[1:] if i)):
                ctx.block(x.ids, describe(node), "Resize with explicit sizes, axes or channel scaling")
                return
        elif op == "LpPool" or op == "GlobalLpPool":
            const = np.full_like(const, np.nan)
        ctx.tensors[node.output[0]] = Channels(1, x.ids, const)


class _PerChannelParams(Handler):
    """An op on NCHW channels with `n_params` per-channel constant inputs after X, sliced with the channel."""
    follows = 1
    n_params = 0

    def params(self, node, ctx, x: Channels) -> Optional[list[np.ndarray]]:
        names = node.input[1:1 + self.n_params]
        values = [ctx.index.const(i) for i in names]
        if norm_axis(x.axis, ctx.index.rank(node.input[0])) != 1 or any(v is None or v.shape != x.ids.shape for v in values) \
                or any(ctx.index.uses(i) > 1 for i in names):
            ctx.block(x.ids, describe(node), f"{node.op_type} with non-constant, shared or non-per-channel parameters")
            return None
        return [v.astype(np.float64) for v in values]

    def apply(self, node, ctx, kept):
        k = kept(node.input[0])
        if k is not None:
            for name in node.input[1:1 + self.n_params]:
                ctx.index.set_const(name, ctx.index.const(name)[k])


@register("BatchNormalization")
class BatchNorm(_PerChannelParams):
    n_params = 4

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None or (params := self.params(node, ctx, x)) is None:
            return
        if attr(node, "training_mode", 0):
            ctx.block(x.ids, describe(node), "BatchNormalization in training mode (batch statistics)")
            return
        gamma, beta, mean, var = params
        scale = gamma / np.sqrt(var + attr(node, "epsilon", 1e-5))
        ctx.tensors[node.output[0]] = Channels(1, x.ids, (x.const - mean) * scale + beta)


@register("InstanceNormalization")
class InstanceNorm(_PerChannelParams):
    """Per-channel statistics over the spatial axes, per-channel scale and shift: channels stay
    independent. A dead channel (all zeros) comes out as its shift B exactly; a dead channel holding a
    non-zero constant is kept (x - mean is then only approximately 0)."""
    n_params = 2

    def propagate(self, node, ctx):
        x = ctx.tensors.get(node.input[0])
        if x is None or (params := self.params(node, ctx, x)) is None:
            return
        ctx.tensors[node.output[0]] = Channels(1, x.ids, np.where(x.const == 0, params[1], np.nan))


def _from_end(ch: Channels, rank: Optional[int]) -> Optional[int]:
    """The channel axis counted from the end (negative): what broadcasting keeps. None: unknown rank."""
    if ch.axis < 0:
        return ch.axis
    return None if rank is None else ch.axis - rank


def _const_axis(c: np.ndarray, from_end: int) -> Optional[int]:
    """Which axis of the broadcast constant `c` lines up with the channel axis (None: it doesn't vary)."""
    ca = c.ndim + from_end
    return ca if ca >= 0 else None


def _prelu(x, slope):
    return np.where(x >= 0, x, slope * x)


# PRelu's slope broadcasts to X like a Mul operand: a per-channel slope is sliced with the channel
_BIN = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "PRelu": _prelu}


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
        end = _from_end(x, ctx.index.rank(node.input[xi]))
        if end is None and c.ndim:
            ctx.block(x.ids, describe(node), f"{node.op_type} operand of unknown rank")
            return
        if end is None:  # a scalar: the axes stay as they are
            out_axis, ca = x.axis, None
        else:
            out_axis = end if out_rank is None else out_rank + end  # a constant of higher rank adds leading axes
            ca = _const_axis(c, end)
        if ca is not None and c.shape[ca] not in (1, len(x.ids)):
            ctx.block(x.ids, describe(node), "constant operand does not broadcast per channel")
            return
        if ca is not None and c.shape[ca] == len(x.ids):
            if ctx.index.uses(other) > 1:
                ctx.block(x.ids, describe(node), "per-channel constant is shared with another node")
                return
            if c.size != len(x.ids):
                ctx.tensors[node.output[0]] = Channels(out_axis, x.ids, np.full(len(x.ids), np.nan))
                return
            cv = c.reshape(-1).astype(np.float64)
        else:
            if c.size != 1:  # varies along a non-channel axis: constant channels stop being constant
                zero = (node.op_type == "Mul") & (x.const == 0) & bool(np.isfinite(c).all())
                ctx.tensors[node.output[0]] = Channels(out_axis, x.ids, np.where(zero, 0.0, np.nan))
                return
            cv = np.full(len(x.ids), float(c.reshape(-1)[0]))
        with np.errstate(all="ignore"):
            const = fn(x.const, cv) if xi == 0 else fn(cv, x.const)
        ctx.tensors[node.output[0]] = Channels(out_axis, x.ids, const)

    def apply(self, node, ctx, kept):
        for xi in (0, 1):
            k = kept(node.input[xi])
            other = node.input[1 - xi]
            c = ctx.index.const(other)
            if k is None or c is None or other in ctx.tensors:
                continue
            end = _from_end(ctx.tensors[node.input[xi]], ctx.index.rank(node.input[xi]))
            ca = None if end is None else _const_axis(c, end)
            if ca is not None and c.shape[ca] == len(k):
                ctx.index.set_const(other, np.compress(k, c, axis=ca))
