"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization").

Why our own: ONNX Runtime's quantizer has no cross-layer equalization (nor bias correction or SmoothQuant).

For Conv1 -> [Relu | LeakyRelu | PRelu | pooling]* -> Conv2 (also -> GAP -> Flatten -> Gemm, and MLP pairs), output
channel i of Conv1 is divided by s_i and input channel i of Conv2 multiplied by s_i. The ops in between are
positively homogeneous per channel (f(x / s) = f(x) / s for s > 0), so the function is unchanged, while
s_i = sqrt(r1_i / r2_i) gives both layers the same per-channel weight range: per-tensor int8 weights then
waste far fewer levels. Run it on the FP32 model after BatchNorm folding (ORT's quant_pre_process).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx

from ..graph import GraphView, Mismatch, WeightLayer, attr, match_layer, node_name
from ..passes.base import PassRecord

ELEMENTWISE = {"Relu", "LeakyRelu", "PRelu", "Identity", "Dropout"}  # f(x / s) = f(x) / s for any s > 0
HOMOGENEOUS = ELEMENTWISE | {"MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool"}  # per channel on NCHW
NOT_HOMOGENEOUS = {"Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Elu", "Selu", "Celu", "Softplus",
                   "Mish", "Sin", "Cos", "Exp", "Log", "Sqrt", "Swish"}
FLOATS = (np.float32, np.float64)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


Graph = GraphView  # the quant passes' name for the shared view
Layer = WeightLayer


def as_layer(node: onnx.NodeProto, g: GraphView) -> tuple[Optional[WeightLayer], str]:
    """The node as a weight layer with a float32/64 weight, 2-D when dense, or (None, why not)."""
    m = match_layer(node, g)
    if isinstance(m, Mismatch):
        return None, m.reason
    if g.const(m.weight).dtype not in FLOATS:
        return None, f"{node.op_type} '{node.name}' has no constant float32 weight"
    if m.kind == "dense" and len(m.shape) != 2:
        return None, f"{node.op_type} '{node.name}' weight is not 2-D"
    return m, ""


def out_channels(layer: WeightLayer, g: GraphView) -> int:
    return layer.out_channels


def out_ranges(layer: Layer, g: Graph) -> np.ndarray:
    """max |w| per output channel."""
    w = np.moveaxis(g.const(layer.weight), layer.out_axis, 0)
    return np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)


def _grouped(layer: Layer, w: np.ndarray) -> np.ndarray:
    """Conv weight [Cout, Cin/G, ...] as [G, Cout/G, Cin/G, -1]: input channel i = (i // (Cin/G), i % (Cin/G))."""
    return w.reshape(layer.groups, w.shape[0] // layer.groups, w.shape[1], -1)


def in_channels(layer: WeightLayer, g: GraphView) -> int:
    return layer.in_channels


def in_ranges(layer: Layer, g: Graph) -> np.ndarray:
    """max |w| per input channel."""
    w = g.const(layer.weight)
    if layer.kind == "conv":
        return np.abs(_grouped(layer, w)).max(axis=(1, 3)).reshape(-1).astype(np.float64)
    return np.abs(np.moveaxis(w, layer.in_axis, 0)).max(axis=1).astype(np.float64)


def scale_out(layer: Layer, g: Graph, s: np.ndarray) -> None:
    """Divide output channel i (weights and bias) by s[i]."""
    w = g.const(layer.weight)
    shape = [1] * w.ndim
    shape[layer.out_axis] = -1
    g.set_input(layer.node, 1, (w / s.reshape(shape)).astype(w.dtype))
    if layer.bias is not None:
        node, idx = layer.bias
        b = g.const(node.input[idx]) if idx < len(node.input) and node.input[idx] else None
        if b is not None and b.size:
            b = np.broadcast_to(b.reshape(-1), s.shape) if b.size == 1 else b
            g.set_input(node, idx, (b / s.reshape(b.shape)).astype(w.dtype))


def scale_in(layer: Layer, g: Graph, s: np.ndarray) -> None:
    """Multiply the weights of input channel i by s[i]."""
    w = g.const(layer.weight)
    if layer.kind == "conv":
        grouped = _grouped(layer, w)
        new = grouped * s.reshape(grouped.shape[0], 1, grouped.shape[2], 1)
    else:
        new = w * (s.reshape(-1, 1) if layer.in_axis == 0 else s.reshape(1, -1))
    g.set_input(layer.node, 1, new.reshape(w.shape).astype(w.dtype))


def scales(r1: np.ndarray, r2: np.ndarray, lo: float = 1e-6, hi: float = 1e6) -> np.ndarray:
    """s_i = sqrt(r1_i * r2_i) / r2_i; 1 for dead channels (a zero range on either side)."""
    ok = (r1 > 0) & (r2 > 0)
    s = np.ones_like(r1)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    return np.clip(s, lo, hi)


def _walk(l1: Layer, g: Graph) -> tuple[str, str, Optional[onnx.NodeProto], str]:
    """Follow l1's output through positively homogeneous ops: (tensor, its channel layout, its only consumer,
    why we stopped). A Flatten turns NCHW into [N, features]: channel i stays feature i when H = W = 1 (a global
    pool before it), which the channel count check of the pair confirms."""
    t, kind = l1.out, l1.kind
    while True:
        nxt = g.only_consumer(t)
        if nxt is None:
            n = len(g.consumers.get(t, []))
            why = f"output '{t}' is a graph output" if t in g.outputs else f"output '{t}' has {n} consumers"
            return t, kind, None, why
        if nxt.op_type == "BatchNormalization":
            return t, kind, None, f"BatchNormalization '{nxt.name}' follows: fold it first (ORT's quant_pre_process does)"
        flatten = nxt.op_type == "Flatten" and attr(nxt, "axis", 1) == 1 and kind == "conv"
        if not (flatten or nxt.op_type in (HOMOGENEOUS if kind == "conv" else ELEMENTWISE)) or nxt.input[0] != t:
            return t, kind, nxt, ""
        if any(nxt.output[1:]):
            return t, kind, None, f"{nxt.op_type} '{nxt.name}' has a second output"
        t, kind = nxt.output[0], "dense" if flatten else kind


def find_pairs(g: Graph) -> tuple[list[tuple[Layer, Layer]], list[tuple[str, str]]]:
    """(producer, consumer) layer pairs that can be equalized, and (node, reason) for those that cannot."""
    pairs, skipped = [], []
    for node in g.model.graph.node:
        l1, _ = as_layer(node, g)
        if l1 is None:
            continue
        t, kind, nxt, why = _walk(l1, g)
        l2, _ = as_layer(nxt, g) if nxt is not None else (None, "")
        if why:
            pass
        elif l2 is None and nxt.op_type in NOT_HOMOGENEOUS:
            why = f"{nxt.op_type} '{nxt.name}' follows: not positively homogeneous (f(x/s) != f(x)/s)"
        elif l2 is None or nxt.input[0] != t:
            why = f"feeds {nxt.op_type} '{nxt.name}', not the data input of a layer with a constant weight"
        elif l2.kind != kind:
            why = f"{node.op_type} -> {nxt.op_type}: channel axes differ"
        elif in_channels(l2, g) != out_channels(l1, g):
            why = f"{nxt.op_type} '{nxt.name}' does not consume all {out_channels(l1, g)} channels"
        if why:
            skipped.append((name_of(node), why))
        else:
            pairs.append((l1, l2))
    return pairs, skipped


name_of = node_name


def spread(r: np.ndarray) -> float:
    """max / min of the non-zero ranges (1 when none): how unevenly a per-tensor scale serves the channels."""
    nz = r[r > 0]
    return float(nz.max() / nz.min()) if nz.size else 1.0


def equalize(model: onnx.ModelProto, iterations: int = 4) -> tuple[onnx.ModelProto, PassRecord]:
    """Cross-layer equalization of every Conv/Gemm/MatMul pair joined by positively homogeneous ops.

    Returns a new model (the input is not modified) computing the same function in FP32."""
    rec = PassRecord("equalize")
    g = Graph(copy_model(model))
    pairs, skipped = find_pairs(g)
    for target, why in skipped:
        rec.skip(target, why)
    layers = {name_of(layer.node): layer for pair in pairs for layer in pair}
    before = {n: spread(out_ranges(layer, g)) for n, layer in layers.items()}
    for _ in range(max(iterations, 0)):
        for l1, l2 in pairs:
            s = scales(out_ranges(l1, g), in_ranges(l2, g))
            scale_out(l1, g, s)
            scale_in(l2, g, s)
    after = {n: spread(out_ranges(layer, g)) for n, layer in layers.items()}
    rec.changed = [f"{name_of(a.node)} -> {name_of(b.node)}" for a, b in pairs] if iterations > 0 else []
    rec.stats.update(pairs=len(pairs), iterations=iterations, range_spread_before=before, range_spread_after=after,
                     max_range_spread_before=max(before.values(), default=1.0),
                     max_range_spread_after=max(after.values(), default=1.0))
    return g.write(), rec
