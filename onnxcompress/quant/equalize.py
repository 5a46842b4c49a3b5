"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization").

Why our own: ONNX Runtime's quantizer has no cross-layer equalization (nor bias correction or SmoothQuant).

For Conv1 -> [Relu | LeakyRelu | PRelu | pooling]* -> Conv2 (also -> GAP -> Flatten -> Gemm, and MLP pairs), output
channel i of Conv1 is divided by s_i and input channel i of Conv2 multiplied by s_i. The ops in between are
positively homogeneous per channel (f(x / s) = f(x) / s for s > 0), so the function is unchanged, while
s_i = sqrt(r1_i / r2_i) gives both layers the same per-channel weight range: per-tensor int8 weights then
waste far fewer levels. Run it on the FP32 model after BatchNorm folding (ORT's quant_pre_process).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

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


def attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class Graph:
    """Consumers / producers of a graph's tensors and its initializers as numpy arrays.

    Writes (`set`) are collected and flushed by `write`; an initializer another node also reads is
    duplicated under a new name, so only the node being rewritten sees the new values."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.arrays = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.identity = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input[0] in self.arrays}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        self.uses = Counter(i for n in g.node for i in n.input) + Counter(self.outputs)
        self.dirty: set[str] = set()

    def const(self, name: str) -> Optional[np.ndarray]:
        """The value of an initializer (also seen through Identity nodes), None for activations."""
        return self.arrays.get(self.identity.get(name, name)) if name else None

    def only_consumer(self, tensor: str) -> Optional[onnx.NodeProto]:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def set(self, node: onnx.NodeProto, idx: int, value: np.ndarray) -> None:
        name = node.input[idx] if idx < len(node.input) else ""
        if not name or name in self.identity or self.uses[name] > 1 or name not in self.arrays:
            base = self.identity.get(name, name) or f"{node.name or node.output[0]}_in{idx}"
            new, k = base + "_eq", 0
            while new in self.arrays or new in self.producer:
                k += 1
                new = f"{base}_eq{k}"
            if name:
                self.uses[name] -= 1
            while len(node.input) <= idx:
                node.input.append("")
            node.input[idx] = name = new
            self.uses[name] += 1
        self.arrays[name] = value
        self.dirty.add(name)

    def write(self) -> onnx.ModelProto:
        g = self.model.graph
        done = set()
        for i, init in enumerate(g.initializer):
            if init.name in self.dirty:
                g.initializer[i].CopyFrom(numpy_helper.from_array(self.arrays[init.name], init.name))
                done.add(init.name)
        g.initializer.extend(numpy_helper.from_array(self.arrays[n], n) for n in sorted(self.dirty - done))
        self.dirty.clear()
        return self.model


@dataclass
class Layer:
    """A Conv/Gemm/MatMul with a constant float weight; `bias` = (node, input index) of its bias constant."""

    node: onnx.NodeProto
    kind: str  # "conv" (channels on axis 1) | "dense" (channels on the last axis)
    bias: Optional[tuple[onnx.NodeProto, int]]
    out: str  # the tensor holding the layer's result (the Add's output for MatMul + Add)

    @property
    def weight(self) -> str:
        return self.node.input[1]


def as_layer(node: onnx.NodeProto, g: Graph) -> tuple[Optional[Layer], str]:
    """The node as a weight layer, or (None, why not)."""
    if node.op_type not in ("Conv", "Gemm", "MatMul"):
        return None, f"{node.op_type} has no weight"
    w = g.const(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.dtype not in FLOATS:
        return None, f"{node.op_type} '{node.name}' has no constant float32 weight"
    if node.op_type == "Conv":
        bias = (node, 2) if len(node.input) > 2 and node.input[2] else None
        if bias and g.const(node.input[2]) is None:
            return None, f"Conv '{node.name}' bias is not a constant"
        return Layer(node, "conv", bias, node.output[0]), ""
    if w.ndim != 2:
        return None, f"{node.op_type} '{node.name}' weight is not 2-D"
    if node.op_type == "Gemm":
        if attr(node, "transA", 0):
            return None, f"Gemm '{node.name}' has transA=1"
        has_c = len(node.input) > 2 and bool(node.input[2])
        c = g.const(node.input[2]) if has_c else np.zeros(0, w.dtype)
        n_out = w.shape[0] if attr(node, "transB", 0) else w.shape[1]
        if c is None or c.size not in (0, 1, n_out) or (c.size > 1 and c.shape[-1] != n_out):
            return None, f"Gemm '{node.name}' bias is not a per-column constant"
        return Layer(node, "dense", (node, 2) if has_c else None, node.output[0]), ""
    add = g.only_consumer(node.output[0])
    if add is not None and add.op_type == "Add":
        other = 1 if add.input[0] == node.output[0] else 0
        b = g.const(add.input[other])
        if b is not None and (b.size == 1 or b.size == b.shape[-1] == w.shape[1]):
            return Layer(node, "dense", (add, other), add.output[0]), ""
    return Layer(node, "dense", None, node.output[0]), ""


def out_channels(layer: Layer, g: Graph) -> int:
    w = g.const(layer.weight)
    return w.shape[0] if layer.kind == "conv" or attr(layer.node, "transB", 0) else w.shape[1]


def _out_axis(layer: Layer) -> int:
    return 0 if layer.kind == "conv" or attr(layer.node, "transB", 0) else 1


def out_ranges(layer: Layer, g: Graph) -> np.ndarray:
    """max |w| per output channel."""
    w = np.moveaxis(g.const(layer.weight), _out_axis(layer), 0)
    return np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)


def _grouped(layer: Layer, w: np.ndarray) -> np.ndarray:
    """Conv weight [Cout, Cin/G, ...] as [G, Cout/G, Cin/G, -1]: input channel i = (i // (Cin/G), i % (Cin/G))."""
    groups = attr(layer.node, "group", 1)
    return w.reshape(groups, w.shape[0] // groups, w.shape[1], -1)


def in_channels(layer: Layer, g: Graph) -> int:
    w = g.const(layer.weight)
    if layer.kind == "conv":
        return attr(layer.node, "group", 1) * w.shape[1]
    return w.shape[1] if attr(layer.node, "transB", 0) and layer.node.op_type == "Gemm" else w.shape[0]


def in_ranges(layer: Layer, g: Graph) -> np.ndarray:
    """max |w| per input channel."""
    w = g.const(layer.weight)
    if layer.kind == "conv":
        return np.abs(_grouped(layer, w)).max(axis=(1, 3)).reshape(-1).astype(np.float64)
    axis = 1 if layer.node.op_type == "Gemm" and attr(layer.node, "transB", 0) else 0
    return np.abs(np.moveaxis(w, axis, 0)).max(axis=1).astype(np.float64)


def scale_out(layer: Layer, g: Graph, s: np.ndarray) -> None:
    """Divide output channel i (weights and bias) by s[i]."""
    w = g.const(layer.weight)
    shape = [1] * w.ndim
    shape[_out_axis(layer)] = -1
    g.set(layer.node, 1, (w / s.reshape(shape)).astype(w.dtype))
    if layer.bias is not None:
        node, idx = layer.bias
        b = g.const(node.input[idx]) if idx < len(node.input) and node.input[idx] else None
        if b is not None and b.size:
            b = np.broadcast_to(b.reshape(-1), s.shape) if b.size == 1 else b
            g.set(node, idx, (b / s.reshape(b.shape)).astype(w.dtype))


def scale_in(layer: Layer, g: Graph, s: np.ndarray) -> None:
    """Multiply the weights of input channel i by s[i]."""
    w = g.const(layer.weight)
    if layer.kind == "conv":
        grouped = _grouped(layer, w)
        new = grouped * s.reshape(grouped.shape[0], 1, grouped.shape[2], 1)
    else:
        axis = 1 if layer.node.op_type == "Gemm" and attr(layer.node, "transB", 0) else 0
        new = w * (s.reshape(-1, 1) if axis == 0 else s.reshape(1, -1))
    g.set(layer.node, 1, new.reshape(w.shape).astype(w.dtype))


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


def name_of(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _spread(r: np.ndarray) -> float:
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
    before = {n: _spread(out_ranges(layer, g)) for n, layer in layers.items()}
    for _ in range(max(iterations, 0)):
        for l1, l2 in pairs:
            s = scales(out_ranges(l1, g), in_ranges(l2, g))
            scale_out(l1, g, s)
            scale_in(l2, g, s)
    after = {n: _spread(out_ranges(layer, g)) for n, layer in layers.items()}
    rec.changed = [f"{name_of(a.node)} -> {name_of(b.node)}" for a, b in pairs] if iterations > 0 else []
    rec.stats.update(pairs=len(pairs), iterations=iterations, range_spread_before=before, range_spread_after=after,
                     max_range_spread_before=max(before.values(), default=1.0),
                     max_range_spread_after=max(after.values(), default=1.0))
    return g.write(), rec
