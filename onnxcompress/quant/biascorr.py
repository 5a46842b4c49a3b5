"""Empirical bias correction of a QDQ model (Nagel et al. 2019, section 4.2; AIMET's "empirical" variant).

Why our own: ONNX Runtime's quantizer has no bias correction (nor cross-layer equalization or SmoothQuant).

Weight rounding makes E[(W - Wq) x] != 0 when E[x] != 0 (after a ReLU it always is): each output channel
of a quantized layer drifts by a constant. We measure the per-channel mean of (fp32 - qdq) on the layer's
output over calibration data and add it to the layer's float bias (Conv/Gemm bias, the Add after a MatMul).
A channel keeps its correction only when it lowers that channel's MSE on held-out samples (2-fold
cross-validation: on the samples it was fitted on it always would).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx

from ..data import Dataset
from ..runtime.budget import read_tensors
from ..runtime.session import with_outputs  # noqa: F401 - tests build instrumented copies through this module
from ..passes.base import PassRecord
from .equalize import Graph, attr, copy_model, name_of


@dataclass
class Target:
    node: onnx.NodeProto  # the quantized Conv / Gemm / MatMul in the QDQ model
    ref: str  # the fp32 tensor to match
    out: str  # the same tensor in the QDQ model (pre-activation: ORT folds a following Relu into the Q)
    bias: tuple[onnx.NodeProto, int]  # node and input index of the float bias (may not exist yet)
    axis: int  # channel axis of `out`: 1 for Conv, -1 otherwise
    scale: float = 1.0  # the bias enters multiplied by this (Gemm beta)


def _through_qdq(g: Graph, t: str) -> Optional[onnx.NodeProto]:
    """The only real consumer of t, looking through a QuantizeLinear -> DequantizeLinear pair."""
    nxt = g.only_consumer(t)
    if nxt is not None and nxt.op_type == "QuantizeLinear":
        dq = g.only_consumer(nxt.output[0])
        nxt = g.only_consumer(dq.output[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    return nxt


def _bias_add(g: Graph, t: str) -> Optional[tuple[onnx.NodeProto, int]]:
    """The Add (after Q -> DQ in a QDQ graph) that adds a constant to t, with the constant's input index."""
    add = _through_qdq(g, t)
    if add is None or add.op_type != "Add":
        return None
    idx = next((i for i in (0, 1) if _bias_value(g, add, i) is not None), None)
    return None if idx is None else (add, idx)


def _shared_dq(g: Graph, node: onnx.NodeProto, idx: int) -> bool:
    """A bias that is the output of a DequantizeLinear read by other nodes too (we would change theirs)."""
    name = node.input[idx] if idx < len(node.input) else ""
    return bool(name) and g.const(name) is None and len(g.consumers.get(name, [])) > 1


def _bias_value(g: Graph, node: onnx.NodeProto, idx: int) -> Optional[np.ndarray]:
    """The float value of a bias input: a constant, or DequantizeLinear of a constant."""
    name = node.input[idx] if idx < len(node.input) else ""
    if not name:
        return None
    if g.const(name) is not None:
        return g.const(name).astype(np.float64)
    dq = g.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or g.const(dq.input[0]) is None:
        return None
    q, scale = g.const(dq.input[0]).astype(np.float64), g.const(dq.input[1]).astype(np.float64)
    zp = g.const(dq.input[2]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[attr(dq, "axis", 1)] = -1
        scale, zp = scale.reshape(shape), np.reshape(zp, shape) if np.size(zp) > 1 else zp
    return (q - zp) * scale


def _set_bias(g: Graph, node: onnx.NodeProto, idx: int, value: np.ndarray) -> None:
    """Write a float bias: in place for a float constant, re-quantized when it comes from DequantizeLinear."""
    name = node.input[idx] if idx < len(node.input) else ""
    dq = g.producer.get(name) if name and g.const(name) is None else None
    if dq is None:
        g.set_input(node, idx, value.astype(g.const(name).dtype if name else np.float32))
        return
    q, scale0 = g.const(dq.input[0]), g.const(dq.input[1])
    scale = scale0.astype(np.float64)
    zp = g.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), q.dtype)
    info = np.iinfo(q.dtype)
    if scale.size > 1:  # per-channel (ORT's int32 bias): keep the scales
        shape = [1] * q.ndim
        shape[attr(dq, "axis", 1)] = -1
        zp_f = zp.astype(np.float64).reshape(shape if zp.size > 1 else ())
        new_q = np.round(value.reshape(q.shape) / scale.reshape(shape)) + zp_f
    elif q.dtype == np.int32:  # per-tensor int32 bias: keep the scale (input scale * weight scale)
        new_q = np.round(value / scale.item()) + float(zp)
    else:  # an 8-bit per-tensor constant (the Add after a MatMul): a new range, same type
        lo, hi = min(float(value.min()), 0.0), max(float(value.max()), 0.0)
        if int(zp) == 0 and info.min < 0:
            step = max(-lo, hi) / info.max or 1.0
        else:
            step = (hi - lo) / (info.max - info.min) or 1.0
            g.set_input(dq, 2, np.asarray(np.clip(np.round(info.min - lo / step), info.min, info.max), q.dtype).reshape(zp.shape))
            zp = g.const(dq.input[2])
        g.set_input(dq, 1, np.full(scale0.shape, step, scale0.dtype))
        new_q = np.round(value / step) + float(zp)
    g.set_input(dq, 0, np.clip(new_q, info.min, info.max).astype(q.dtype))


def find_targets(fp32: onnx.ModelProto, g: Graph) -> tuple[list[Target], list[tuple[str, str]]]:
    """Quantized layers of the QDQ model with their fp32 counterparts, and (node, reason) for the others."""
    f = Graph(fp32)
    by_name = {n.name: n for n in fp32.graph.node if n.name}
    by_weight = {n.input[1]: n for n in fp32.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1}
    targets, skipped = [], []
    for node in g.model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        dq = g.producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or g.const(dq.input[0]) is None:
            continue  # not a quantized-weight layer (activation x activation, or kept in FP32)
        ref = by_name.get(node.name)
        ref = ref if ref is not None and ref.op_type == node.op_type else by_weight.get(dq.input[0].removesuffix("_quantized"))
        name = name_of(node)
        if ref is None:
            skipped.append((name, "no matching node in the fp32 model"))
            continue
        after = f.only_consumer(ref.output[0])
        if after is not None and after.op_type == "BatchNormalization":
            skipped.append((name, "the fp32 model still has BatchNormalization here; pass the pre-processed model"))
            continue
        if node.op_type == "Conv":
            targets.append(Target(node, ref.output[0], node.output[0], (node, 2), 1))
        elif node.op_type == "Gemm":
            beta = float(attr(node, "beta", 1.0))
            c = _bias_value(g, node, 2) if len(node.input) > 2 and node.input[2] else np.zeros(0)
            if beta == 0 or c is None or c.size > 1 and c.size != c.shape[-1]:
                skipped.append((name, "Gemm bias is not a per-column constant (or beta is 0)"))
                continue
            targets.append(Target(node, ref.output[0], node.output[0], (node, 2), -1, beta))
        else:
            qadd, fadd = _bias_add(g, node.output[0]), f.only_consumer(ref.output[0])
            if qadd is None or fadd is None or fadd.op_type != "Add" or qadd[0].name and fadd.name and qadd[0].name != fadd.name:
                skipped.append((name, "MatMul without a constant bias Add: nothing to correct"))
                continue
            targets.append(Target(node, fadd.output[0], qadd[0].output[0], qadd, -1))
        if _shared_dq(g, *targets[-1].bias):
            skipped.append((name, "its quantized bias is shared with other nodes"))
            targets.pop()
    return targets, skipped


def _levels(g: Graph, targets: list[Target]) -> list[list[Target]]:
    """Rounds of layers: none in a round is downstream of another quantized target in the same round."""
    # Exact and cheaper than one layer at a time: a correction changes only what is downstream of it,
    # so measuring a round after all earlier rounds are corrected equals the sequential scheme, while
    # correcting every layer from one measurement would count an upstream drift twice (here and above).
    level: dict[str, int] = {}
    of = {t.node.output[0]: t for t in targets}
    rounds: dict[int, list[Target]] = {}
    for node in g.model.graph.node:
        lv = max((level.get(i, 0) for i in node.input), default=0)
        if node.output and node.output[0] in of:
            rounds.setdefault(lv, []).append(of[node.output[0]])
            lv += 1
        for o in node.output:
            level[o] = lv
    return [rounds[k] for k in sorted(rounds)]


def _measure(fp32: onnx.ModelProto, qdq: onnx.ModelProto, group: list[Target], data: Dataset, samples: int,
             batch_size: int) -> list[np.ndarray]:
    """Per target: array [2 folds, 3 (count, sum e, sum e^2), channels] of e = fp32 - qdq, in float64."""
    # ORT's optimizations on: upstream layers run the int8 kernels they will run when deployed (an output
    # we read keeps its own layer unfused, so we see its float result), and it is 2-4x faster
    # read in passes and batches sized to the data's memory budget (runtime.budget)
    acc: list[Optional[np.ndarray]] = [None] * len(group)
    seen = b = 0
    current = None
    for p, feed, (ref, got) in read_tensors([fp32, qdq], [[t.ref for t in group], [t.out for t in group]], data,
                                            batch_size, samples, optimize=True):
        seen, b = (seen, b + 1) if p is current else (0, 0)  # each pass reads the samples from the start
        current = p
        n = feed.samples
        for i, t, r, q in ((i, group[i], r, q) for i, r, q in zip(p.units, ref, got)):
            ax = t.axis % r.ndim
            if acc[i] is None:
                acc[i] = np.zeros((2, 3, r.shape[ax]))
            if ax > 0 and r.shape[0] == n:  # one sample at a time: float64 temporaries of one sample, not the batch
                for s in range(n):
                    e = np.moveaxis(r[s].astype(np.float64) - q[s].astype(np.float64), ax - 1, -1).reshape(-1, r.shape[ax])
                    acc[i][(seen + s) % 2] += [np.full(e.shape[-1], e.shape[0]), e.sum(0), (e ** 2).sum(0)]
                continue
            e = np.moveaxis(r.astype(np.float64) - q.astype(np.float64), t.axis, -1)
            fold = (seen + np.arange(n)) % 2 if e.shape[0] == n else np.full(e.shape[0], b % 2)
            for k in (0, 1):
                part = e[fold == k].reshape(-1, e.shape[-1])
                acc[i][k] += [np.full(e.shape[-1], part.shape[0]), part.sum(0), (part ** 2).sum(0)]
        seen += n
    return acc


def _decide(acc: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(per-channel correction, MSE before, cross-validated MSE after)."""
    (na, s1a, s2a), (nb, s1b, s2b) = acc
    da, db = s1a / na, s1b / nb
    cv = (s2b - 2 * da * s1b + da ** 2 * nb) + (s2a - 2 * db * s1a + db ** 2 * na)  # fit on one fold, test on the other
    base = s2a + s2b
    keep = cv < base * (1 - 1e-9)
    d = np.where(keep, (s1a + s1b) / (na + nb), 0.0)
    total = float((na + nb).sum())
    return d, float(base.sum() / total), float(np.where(keep, cv, base).sum() / total)


def _add(old: Optional[np.ndarray], d: np.ndarray) -> np.ndarray:
    """old bias (None, a scalar or one value per channel in any shape) + per-channel d."""
    if old is None or old.size == 1:
        return d + (0.0 if old is None else old.item())
    return old + d.reshape(old.shape)


def bias_correct(fp32: onnx.ModelProto, qdq: onnx.ModelProto, data: Dataset, samples: int = 256,
                 batch_size: int = 32) -> tuple[onnx.ModelProto, PassRecord]:
    """Correct the float biases of `qdq` (from `fp32`, the pre-processed model it was quantized from).

    Returns a new model; neither input is modified."""
    rec = PassRecord("bias_correction")
    g = Graph(copy_model(qdq))
    targets, skipped = find_targets(fp32, g)
    for target, why in skipped:
        rec.skip(target, why)
    layers = []
    if min(samples, len(data)) < 2:
        for t in targets:
            rec.skip(name_of(t.node), "bias correction needs at least 2 samples (one to fit, one to check)")
        targets = []
    rounds = _levels(g, targets)
    for group in rounds:
        stats = _measure(fp32, g.write(), group, data, samples, batch_size)
        for t, acc in zip(group, stats):
            if acc is None or acc[0, 0].min() == 0 or acc[1, 0].min() == 0:
                rec.skip(name_of(t.node), "too few samples in a fold to check the correction")
                continue
            d, before, after = _decide(acc)
            kept = int(np.count_nonzero(d))
            layers.append({"layer": name_of(t.node), "tensor": t.ref, "mean_shift": float(np.mean(np.abs(d))),
                           "max_shift": float(np.max(np.abs(d))), "channels": kept, "of": int(d.size),
                           "mse_before": before, "mse_after": after})
            if not kept:
                rec.skip(name_of(t.node), "no channel's correction lowers its MSE on held-out samples")
                continue
            node, idx = t.bias
            _set_bias(g, node, idx, _add(_bias_value(g, node, idx), d / t.scale))
            rec.changed.append(f"{name_of(t.node)}: {kept}/{d.size} channels")
    rec.stats.update(layers=layers, rounds=len(rounds), samples=min(samples, len(data)))
    return g.write(), rec
