"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights before int8 quantization.

Why our own: ONNX Runtime's quantizer has no SmoothQuant for ONNX QDQ models (nor CLE or bias correction).

Transformers have a few activation channels far larger than the rest; a per-tensor int8 activation scale
then leaves the other channels a handful of levels. For X[..., K] @ W[K, N] we use X' = X / s, W' = s W
(s per channel k): s_k = max|X_k|^alpha / max|W_k,:|^(1 - alpha). 1/s is folded into the producer of X
(LayerNormalization's scale and bias, the gamma/beta of a norm exported as Mul/Add, or the output columns of
a MatMul/Gemm with constant weights), so no node is added and the model computes the same function in FP32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx

from ..data import Dataset
from ..runtime.budget import read_tensors
from ..errors import ConfigError
from ..passes.base import PassRecord
from .equalize import FLOATS, Graph, Layer, as_layer, attr, copy_model, name_of, scale_out, spread

NORMS = ("LayerNormalization", "RMSNormalization")


@dataclass
class Group:
    tensor: str  # the activation X (output of `producer`)
    producer: str  # name of the node(s) absorbing 1/s
    layer: Optional[Layer]  # when X comes from a MatMul/Gemm (+ Add) with constant weights: 1/s on its columns
    slots: list[tuple[onnx.NodeProto, int]]  # otherwise: per-channel constants divided by s (norm scale/bias, ...)
    consumers: list[onnx.NodeProto] = field(default_factory=list)


def _consumer_weight(node: onnx.NodeProto, g: Graph) -> Optional[np.ndarray]:
    """The constant weight of a MatMul/Gemm reading an activation, as [K, N] (K = the activation's channels)."""
    if node.op_type == "Conv" or len(node.input) < 2 or g.const(node.input[0]) is not None:
        return None
    layer, _ = as_layer(node, g)
    return None if layer is None else layer.in_out(g.const(layer.weight))


def _passes_channels(node: onnx.NodeProto) -> bool:
    """Ops that keep the channel (last) axis last and do not mix channels."""
    if node.op_type == "Identity":
        return True
    perm = attr(node, "perm", None)
    return node.op_type == "Transpose" and perm is not None and perm[-1] == len(perm) - 1


def _users(g: Graph, t: str) -> tuple[list[onnx.NodeProto], list[str]]:
    """(MatMul/Gemm reading t as their activation, the other readers) looking through channel-preserving ops."""
    good: list[onnx.NodeProto] = []
    bad = ["the graph output"] if t in g.outputs else []
    for n in g.consumers.get(t, []):
        if n.op_type == "Shape":
            continue  # reads only the shape, which does not change
        if _passes_channels(n) and n.input[0] == t:
            more_good, more_bad = _users(g, n.output[0])
            good += more_good
            bad += more_bad
        elif _consumer_weight(n, g) is not None and n.input[0] == t:
            good.append(n)
        else:
            bad.append(f"{n.op_type} '{n.name}'")
    return good, bad


def _source(g: Graph, x: str) -> str:
    """Walk back from a MatMul's activation through channel-preserving ops."""
    while x in g.producer and _passes_channels(g.producer[x]):
        x = g.producer[x].input[0]
    return x


def _channel_const(g: Graph, node: onnx.NodeProto, idx: int) -> bool:
    """A constant input holding one value per last-axis channel (or one for all)."""
    v = g.const(node.input[idx]) if idx < len(node.input) and node.input[idx] else None
    return v is not None and v.dtype in FLOATS and (v.size == 1 or v.size == v.shape[-1])


def _absorber(g: Graph, prod: onnx.NodeProto, t: str) -> tuple[Optional[Layer], list[tuple[onnx.NodeProto, int]], str]:
    """How X = prod(...) can absorb 1/s: (layer, [], name) or (None, constant slots, name); slots [] = it cannot."""
    mm = prod
    if prod.op_type == "Add":
        mm = next((g.producer[i] for i in prod.input if i in g.producer and g.producer[i].op_type == "MatMul"), prod)
    layer, _ = as_layer(mm, g)
    if layer is not None and layer.kind == "dense" and layer.out == t:
        return layer, [], name_of(mm)
    if prod.op_type in NORMS:  # LN(x) * scale + bias, per channel when scale/bias are per channel
        ins = [i for i in (1, 2) if i < len(prod.input) and prod.input[i]]
        return None, [(prod, i) for i in ins] if all(_channel_const(g, prod, i) for i in ins) else [], name_of(prod)
    # x * gamma (+ beta): a LayerNorm/RMSNorm exported as primitive ops (opset < 17)
    add = prod if prod.op_type == "Add" else None
    slots: list[tuple[onnx.NodeProto, int]] = []
    if add is not None:
        c = next((i for i in (0, 1) if _channel_const(g, add, i)), None)
        mul = g.producer.get(add.input[1 - c]) if c is not None else None
        if mul is None or g.only_consumer(mul.output[0]) is not add:
            return None, [], name_of(prod)
        slots, prod = [(add, c)], mul
    if prod.op_type == "Mul":
        c = next((i for i in (0, 1) if _channel_const(g, prod, i)), None)
        if c is not None and g.const(prod.input[1 - c]) is None:
            return None, slots + [(prod, c)], name_of(prod) if add is None else f"{name_of(prod)} + {name_of(add)}"
    return None, [], name_of(prod)


def find_groups(g: Graph) -> tuple[list[Group], list[tuple[str, str]]]:
    """Activations feeding only constant-weight MatMul/Gemm nodes, with a producer that can absorb 1/s."""
    groups: dict[str, Group] = {}
    skipped: dict[str, tuple[str, str]] = {}
    for node in g.model.graph.node:
        if _consumer_weight(node, g) is None:
            continue
        t = _source(g, node.input[0])
        if t in groups or t in skipped:
            continue
        prod = g.producer.get(t)
        good, bad = _users(g, t)
        layer, slots, pname = _absorber(g, prod, t) if prod is not None else (None, [], "")
        if prod is None:
            skipped[t] = (name_of(node), f"its input '{t}' is a graph input: no producer to fold 1/s into")
        elif bad:
            skipped[t] = (name_of(node), f"'{t}' also feeds {bad[0]}, which cannot absorb the scales")
        elif layer is None and not slots:
            why = f"'{t}' comes from {prod.op_type} '{prod.name}', which has no per-channel constant to fold 1/s into"
            skipped[t] = (name_of(node), why + " (no Mul is inserted)")
        else:
            groups[t] = Group(t, pname, layer, slots, good)
    return list(groups.values()), list(skipped.values())


def activation_max(model: onnx.ModelProto, tensors: list[str], data: Dataset, samples: int,
                   batch_size: int) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel, streamed over batches of an instrumented copy (passes and batches sized
    to the data's memory budget: runtime.budget)."""
    out: dict[str, np.ndarray] = {}
    for p, _feed, (values,) in read_tensors([model], [tensors], data, batch_size, samples):
        for name, v in zip((tensors[i] for i in p.units), values):
            m = np.abs(v.reshape(-1, v.shape[-1])).max(axis=0).astype(np.float64)
            out[name] = np.maximum(out[name], m) if name in out else m
    return out


def smooth_scales(act: np.ndarray, w: np.ndarray, alpha: float, lo: float = 1e-5, hi: float = 1e5) -> np.ndarray:
    """s_k = act_k^alpha / w_k^(1 - alpha); 1 where either is zero."""
    ok = (act > 0) & (w > 0)
    s = np.ones_like(act)
    s[ok] = act[ok] ** alpha / w[ok] ** (1 - alpha)
    return np.clip(s, lo, hi)


def _apply(g: Graph, grp: Group, s: np.ndarray) -> None:
    if grp.layer is not None:
        scale_out(grp.layer, g, s)
    for node, idx in grp.slots:
        v = g.const(node.input[idx])
        new = np.broadcast_to(v.reshape(-1), s.shape) / s  # a single value becomes one per channel
        g.set_input(node, idx, new.reshape(v.shape if v.size > 1 else s.shape).astype(v.dtype))
    for n in grp.consumers:
        w = g.const(n.input[1])
        row = s.reshape(-1, 1) if as_layer(n, g)[0].in_axis == 0 else s.reshape(1, -1)
        g.set_input(n, 1, (w * row).astype(w.dtype))


def smooth_quant(model: onnx.ModelProto, data: Dataset, alpha: float = 0.5, samples: int = 128,
                 batch_size: int = 16) -> tuple[onnx.ModelProto, PassRecord]:
    """SmoothQuant on the FP32 model before calibration; returns a new model computing the same function."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"SmoothQuant alpha {alpha} is out of range; use a value in [0, 1], e.g. 0.5")
    rec = PassRecord("smooth_quant")
    g = Graph(copy_model(model))
    groups, skipped = find_groups(g)
    for target, why in skipped:
        rec.skip(target, why)
    amax = activation_max(model, [grp.tensor for grp in groups], data, samples, batch_size) if groups else {}
    rows: list[dict] = []
    for grp in groups:
        act = amax.get(grp.tensor)
        rows_max = [np.abs(_consumer_weight(n, g)).max(axis=1).astype(np.float64) for n in grp.consumers]
        if act is None or any(r.shape != act.shape for r in rows_max):
            rec.skip(grp.producer, f"'{grp.tensor}' channels do not match its consumers' weight rows")
            continue
        wmax = np.max(rows_max, axis=0)
        s = smooth_scales(act, wmax, alpha)
        _apply(g, grp, s)
        names = [name_of(n) for n in grp.consumers]
        rec.changed.append(f"{grp.producer} -> {', '.join(names)}")
        rows.append({"tensor": grp.tensor, "producer": grp.producer, "consumers": names,
                     "act_spread_before": spread(act), "act_spread_after": spread(act / s),
                     "s_min": float(s.min()), "s_max": float(s.max())})
    rec.stats.update(alpha=alpha, samples=min(samples, len(data)), groups=rows)
    return g.write(), rec
