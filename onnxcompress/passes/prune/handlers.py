"""Per-op channel-pruning behaviour: ONE registry of handlers keyed by op_type.

`propagate(node, ctx)` says how channels flow through the op (new ids, united ids, blocked ids with a
reason) and what constant a dead channel holds after it; `apply(node, ctx, kept)` slices the op's
parameters once the groups to remove are known; `fold(...)` (consumers only) adds the constant of a
removed input channel into the consumer's bias.

The handlers live in themed modules that register into `HANDLERS` with `@register(op, ...)` when
imported: `layers` (Conv, ConvTranspose, Gemm, MatMul), `channelwise` (activations, PRelu, pools,
BatchNormalization, InstanceNormalization, elementwise binary ops) and `structure` (Concat, Split, Slice, Flatten/Reshape,
reductions, axis moves, normalizations, Shape). The package `__init__` imports them (via `remove`), so the
registry is complete whenever anything in `onnxcompress.passes.prune` is imported.
"""
from __future__ import annotations

from typing import Callable, Optional, TypeVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...graph.view import attr, set_attr  # noqa: F401 - the handlers read attributes through the one attr
from .graph import ChannelContext, Channels

Kept = Callable[[str], Optional[np.ndarray]]  # tensor -> bool mask of kept positions (None: untouched)


def norm_axis(axis: int, rank: Optional[int]) -> Optional[int]:
    if axis >= 0:
        return axis
    return None if rank is None else rank + axis


def describe(node: onnx.NodeProto) -> str:
    """How a node is named in block reasons and pass records."""
    return f"{node.op_type} '{node.name or node.output[0]}'"


def is_last(ch: Channels, ctx: ChannelContext, name: str) -> bool:
    """Whether the channel axis of tensor `name` is its last axis."""
    r = ctx.index.rank(name)
    return ch.axis == -1 or (r is not None and ch.axis == r - 1)


def add_initializer(ctx: ChannelContext, name: str, value: np.ndarray) -> str:
    """A new initializer (name made unique) that `ctx.index.const` / `set_const` know about."""
    base, i = name, 1
    while name in ctx.index.inits or name in ctx.index.producer:
        name, i = f"{base}_{i}", i + 1
    ctx.index.model.graph.initializer.append(numpy_helper.from_array(value, name))
    ctx.index.inits[name] = ctx.index.model.graph.initializer[-1]
    return name


def set_input_const(node: onnx.NodeProto, ctx: ChannelContext, pos: int, value: np.ndarray, what: str) -> None:
    """Make input `pos` of `node` the constant `value`: in place when the node owns its constant, else a
    new initializer (a shared constant, e.g. one [0] used by several Slices, is left to its other users)."""
    name = node.input[pos] if len(node.input) > pos else ""
    if name:
        old = ctx.index.const(name)
        if old is not None and old.shape == value.shape and np.array_equal(old, value):
            return
        if ctx.index.uses(name) == 1 and (name in ctx.index.inits or name in ctx.index.const_nodes):
            ctx.index.set_const(name, value)
            return
        users = ctx.index.consumers.get(name, [])
        if node in users:
            users.remove(node)
        if not users and name in ctx.index.inits and name not in ctx.index.graph_outputs:  # now unused
            ctx.index.model.graph.initializer.remove(ctx.index.inits.pop(name))
    new = add_initializer(ctx, f"{node.name or node.output[0]}__{what}", value)
    ctx.index.consumers.setdefault(new, []).append(node)
    while len(node.input) <= pos:
        node.input.append("")
    node.input[pos] = new


class Handler:
    """Default: an op we cannot follow. Channels reaching it are blocked; its outputs are untracked."""

    follows: Optional[int] = None  # how many leading inputs carry channels `propagate` follows (None: all);
    # tracked tensors in the others (weights, pads, axes... computed from channels) are blocked

    def propagate(self, node: onnx.NodeProto, ctx: ChannelContext) -> None:
        for name in node.input:
            if name in ctx.tensors:
                ctx.block_tensor(name, describe(node), f"{node.op_type} is not handled by channel pruning")

    def apply(self, node: onnx.NodeProto, ctx: ChannelContext, kept: Kept) -> None:
        pass

    def conflicts(self, node: onnx.NodeProto, ctx: ChannelContext, removed: set[int]) -> Optional[tuple[np.ndarray, str]]:
        """Channel ids that must stay, and why, for `apply` to be possible once the roots `removed` go
        (None: no conflict). Only ops whose edit depends on the exact removal set override this."""
        return None



class OneInput(Handler):
    """An op whose channels come from its first input: `flow(node, ctx, x)` runs when that input carries them."""

    follows = 1

    def propagate(self, node: onnx.NodeProto, ctx: ChannelContext) -> None:
        x = ctx.tensors.get(node.input[0])
        if x is not None:
            self.flow(node, ctx, x)

    def flow(self, node: onnx.NodeProto, ctx: ChannelContext, x: Channels) -> None:
        raise NotImplementedError


HANDLERS: dict[str, Handler] = {}
DEFAULT = Handler()

H = TypeVar("H", bound=type[Handler])


def register(*op_types: str) -> Callable[[H], H]:
    """Class decorator: one (stateless) instance of the handler serves every op type named."""

    def deco(cls: H) -> H:
        inst = cls()
        for op in op_types:
            if op in HANDLERS:
                raise ValueError(f"a channel-pruning handler for {op} is registered twice")
            HANDLERS[op] = inst
        return cls

    return deco
