"""Fold a constant per-channel affine after a Conv into the Conv (exact): Conv -> Mul(c) -> Add(d).

PaddlePaddle exports (PP-LCNetV3's learnable affine blocks, BatchNorm written as Mul/Add) put a scalar
or per-channel scale and shift after convs, often with the constant as the first operand and shaped [1].
ORT's ConvMulFusion/ConvAddFusion skip those (constant second, [C,1,1] or scalar only), so each stays a
separate op: in int8 two more requantizations per conv (measured on PP-OCRv4 rec: 11/24 CTC strings equal
to FP32 with them, see tests) and two more kernels. Folding changes no result beyond float rounding.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from ..passes.base import PassRecord


def _per_channel(v: np.ndarray, channels: int, rank: int) -> Optional[np.ndarray]:
    """`v` as a [channels] vector when it broadcasts along the output-channel axis only, else None."""
    if v.dtype != np.float32 or v.ndim > rank:
        return None
    shape = (1,) * (rank - v.ndim) + v.shape
    if any(s != 1 for i, s in enumerate(shape) if i != 1):
        return None
    if shape[1] not in (1, channels):
        return None
    return np.broadcast_to(v.reshape(-1) if v.size > 1 else v.reshape(1), (channels,)).astype(np.float32)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read inside the subgraphs (If/Loop/Scan bodies) of `graph`'s nodes, recursively:
    outer-scope values they use must keep their names and producers."""
    out: set[str] = set()
    for n in graph.node:
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                out |= {i for m in g.node for i in m.input} | _subgraph_reads(g)
    return out


def fold_conv_affine(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassRecord]:
    """A copy of `model` with every Conv -> Mul(const) / Add(const) chain folded into the Conv."""
    rec = PassRecord("fold-affine")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    outputs = {o.name for o in g.output} | _subgraph_reads(g)  # names that must stay as they are
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node  # Constant nodes (Paddle's scalars)
              if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"}
    changed = True
    while changed:
        changed = False
        cons: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                cons.setdefault(i, []).append(n)
        for conv in g.node:
            if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in inits:
                continue
            nxt = cons.get(conv.output[0], [])
            if len(nxt) != 1 or conv.output[0] in outputs or nxt[0].op_type not in ("Mul", "Add") or nxt[0].domain:
                continue
            op = nxt[0]
            other = [i for i in op.input if i != conv.output[0]]
            if len(op.input) != 2 or len(other) != 1 or (other[0] not in inits and other[0] not in consts):
                continue
            w = numpy_helper.to_array(inits[conv.input[1]])
            if w.dtype != np.float32:
                continue
            v = _per_channel(numpy_helper.to_array(inits[other[0]]) if other[0] in inits else consts[other[0]],
                             w.shape[0], w.ndim)
            if v is None:
                continue
            b = (numpy_helper.to_array(inits[conv.input[2]]) if len(conv.input) > 2 and conv.input[2]
                 else np.zeros(w.shape[0], np.float32))
            if op.op_type == "Mul":
                w = w * v.reshape((-1,) + (1,) * (w.ndim - 1))
                b = b * v
            else:
                b = b + v
            suffix = f"_folded_{op.name or op.output[0]}"
            wn, bn = conv.input[1] + suffix, (conv.input[2] if len(conv.input) > 2 and conv.input[2] else conv.name + "_b") + suffix
            g.initializer.extend([numpy_helper.from_array(w.astype(np.float32), wn),
                                  numpy_helper.from_array(b.astype(np.float32), bn)])
            inits[wn], inits[bn] = g.initializer[-2], g.initializer[-1]
            conv.input[1] = wn
            if len(conv.input) > 2:
                conv.input[2] = bn
            else:
                conv.input.append(bn)
            gone = conv.output[0]  # the conv takes over the op's output name: its readers need no change
            conv.output[0] = op.output[0]
            stale = [v for v in g.value_info if v.name == gone]
            for v in stale:
                g.value_info.remove(v)
            g.node.remove(op)
            rec.changed.append(f"{op.op_type} {op.name} folded into {conv.name}")
            changed = True
            break
    used = {i for n in g.node for i in n.input} | outputs
    for n in [n for n in g.node if n.op_type == "Constant" and n.output[0] in consts and n.output[0] not in used]:
        g.node.remove(n)  # constants only the folded ops read
    keep = [i for i in g.initializer if i.name in used or i.name in {x.name for x in g.input}]
    del g.initializer[:]
    g.initializer.extend(keep)
    rec.stats["folded"] = len(rec.changed)
    return m, rec


def flat_gemm_bias(model: onnx.ModelProto) -> int:
    """Gemm biases of shape [1, N] become [N], in place (the same broadcast over [M, N]). ORT's
    pre-processing writes MatMul + Add(bias [1, N]) as such a Gemm, and ORT's quantizer then fails on it
    (ValueError in _adjust_weight_scale_for_int32_bias: it reads the bias as a vector). Returns the count."""
    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    for name in _subgraph_reads(model.graph):
        readers[name] = readers.get(name, 0) + 1
    done = 0
    for n in model.graph.node:
        if n.op_type != "Gemm" or len(n.input) < 3 or n.input[2] not in inits or readers.get(n.input[2]) != 1:
            continue
        t = inits[n.input[2]]
        if len(t.dims) == 2 and t.dims[0] == 1:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(-1), t.name))
            done += 1
    return done


def subgraph_reads_dq(qmodel: onnx.ModelProto, fp32: onnx.ModelProto) -> list[str]:
    """Point If/Loop/Scan bodies at the dequantized tensor where ORT's quantizer changed what the outer name holds.

    ORT's QDQ quantizer drops a Relu (or Clip) after a Conv and gives the Conv the Relu's output name: the
    Q/DQ pair that follows clamps at the zero point, so every main-graph reader (which reads the DQ) still sees
    the activation. A subgraph reading that outer-scope name is not rewired: it reads the raw Conv output,
    negative values and all (silero-vad's LSTM in an If: -13 dB, decision agreement 0.69). Such a read now
    goes to the DQ output, as every other reader's does. In place; returns the tensors rewired."""
    g = qmodel.graph
    reads = _subgraph_reads(g)
    if not reads:
        return []
    from ..graph import GraphView

    before, after = GraphView(fp32).producer, GraphView(qmodel)
    dq_of: dict[str, str] = {}
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in reads:
            dq = [d for d in after.consumers.get(n.output[0], []) if d.op_type == "DequantizeLinear"]
            if dq:
                dq_of[n.input[0]] = dq[0].output[0]
    changed = {t: dq for t, dq in dq_of.items()
               if t in before and getattr(after.producer.get(t), "op_type", None) != before[t].op_type}
    if not changed:
        return []

    def rewire(graph: onnx.GraphProto) -> None:
        for n in graph.node:
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    local = {o for m in sub.node for o in m.output} | {i.name for i in sub.input}
                    for m in sub.node:
                        for k, i in enumerate(m.input):
                            if i in changed and i not in local:
                                m.input[k] = changed[i]
                    rewire(sub)

    rewire(g)
    return sorted(changed)
