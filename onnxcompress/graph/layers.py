"""The one weight-layer matcher: Conv / Gemm / MatMul with a constant weight, its channel axes and its bias.

Written as onnxscript's rewriter writes a rule: a pattern (the op types), a check (constant float weight, no
transA, a bias we can rewrite), and the rewrite left to the pass, which edits weights along `out_axis` /
`in_axis`. A failed check is data, `Mismatch(target, reason)`, that a pass records as a skip.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import onnx

from .view import GraphView, attr, node_name

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
FLOATS = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class Mismatch:
    """Why a node is not a weight layer (same fields as passes.base.Skip)."""

    target: str
    reason: str

    def __bool__(self) -> bool:  # `if match_layer(...)` reads as "did it match"
        return False


@dataclass(frozen=True)
class WeightLayer:
    """A Conv/Gemm/MatMul whose weight (input 1) is constant.

    `out_axis` / `in_axis` are the weight's output- and input-channel axes; a Conv's input channels are
    `groups * shape[1]` (`in_channels`). `bias` = (node, input index) of its bias constant: the Conv/Gemm bias
    input, or the constant side of the one Add that follows a MatMul; `out` is the tensor holding the result
    (that Add's output)."""

    node: onnx.NodeProto
    shape: tuple[int, ...]
    groups: int
    out_axis: int
    in_axis: int
    bias: Optional[tuple[onnx.NodeProto, int]]
    out: str

    @property
    def weight(self) -> str:
        return self.node.input[1]

    @property
    def kind(self) -> str:
        """"conv" (channels on axis 1 of the activations) or "dense" (channels on the last axis)."""
        return "conv" if self.node.op_type == "Conv" else "dense"

    @property
    def out_channels(self) -> int:
        return self.shape[self.out_axis]

    @property
    def in_channels(self) -> int:
        return self.groups * self.shape[self.in_axis]

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.shape[1] == 1 and self.groups == self.out_channels

    def in_out(self, w: np.ndarray) -> np.ndarray:
        """The dense weight as [K, N] (see `in_out`)."""
        return in_out(self.node, w)


def weight_axes(node: onnx.NodeProto, rank: int = 2) -> tuple[int, int]:
    """(output-channel axis, input-channel axis) of the weight (input 1) of a Conv/ConvTranspose/Gemm/MatMul of
    rank `rank`: the pattern half of the matcher, for code that already holds the constant weight."""
    if node.op_type == "Conv":
        return 0, 1
    if node.op_type == "ConvTranspose":
        return 1, 0
    if node.op_type == "Gemm":
        return (0, 1) if attr(node, "transB", 0) else (1, 0)
    return rank - 1, rank - 2


def in_out(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """A Gemm/MatMul weight as MatMul reads it, [..., K, N]; applied to that, it gives the stored layout back."""
    out_axis, in_axis = weight_axes(node, w.ndim)
    return np.swapaxes(w, in_axis, out_axis) if in_axis > out_axis else w


def match_layer(node: onnx.NodeProto, g: GraphView) -> Union[WeightLayer, Mismatch]:
    """The node as a weight layer, or a Mismatch saying why not."""
    name = node_name(node)
    if node.op_type not in WEIGHT_OPS or node.domain not in ("", "ai.onnx"):
        return Mismatch(name, f"{node.op_type} has no weight")
    w = g.const(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.dtype not in FLOATS:
        return Mismatch(name, f"{node.op_type} '{node.name}' has no constant float weight")
    if node.op_type == "Conv":
        bias = (node, 2) if len(node.input) > 2 and node.input[2] else None
        if bias and g.const(node.input[2]) is None:
            return Mismatch(name, f"Conv '{node.name}' bias is not a constant")
        return WeightLayer(node, w.shape, int(attr(node, "group", 1)), 0, 1, bias, node.output[0])
    if w.ndim < 2:
        return Mismatch(name, f"{node.op_type} '{node.name}' weight is 1-D")
    if node.op_type == "Gemm":
        if attr(node, "transA", 0):
            return Mismatch(name, f"Gemm '{node.name}' has transA=1")
        out_axis, in_axis = weight_axes(node)
        has_c = len(node.input) > 2 and bool(node.input[2])
        c = g.const(node.input[2]) if has_c else np.zeros(0, w.dtype)
        n_out = w.shape[out_axis]
        if c is None or c.size not in (0, 1, n_out) or (c.size > 1 and c.shape[-1] != n_out):
            return Mismatch(name, f"Gemm '{node.name}' bias is not a per-column constant")
        return WeightLayer(node, w.shape, 1, out_axis, in_axis, (node, 2) if has_c else None, node.output[0])
    out_axis, in_axis = weight_axes(node, w.ndim)
    layer = WeightLayer(node, w.shape, 1, out_axis, in_axis, None, node.output[0])
    add = g.only_consumer(node.output[0])
    if add is not None and add.op_type == "Add":
        other = 1 if add.input[0] == node.output[0] else 0
        b = g.const(add.input[other])
        if b is not None and (b.size == 1 or b.size == b.shape[-1] == w.shape[-1]):
            return WeightLayer(node, w.shape, 1, out_axis, in_axis, (add, other), add.output[0])
    return layer
