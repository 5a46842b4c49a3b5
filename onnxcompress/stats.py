"""Model statistics: parameters, per-sample MACs (from shape inference), op histogram, size."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx

from .io import is_big

_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
_INT8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


def _weights(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    out = list(model.graph.initializer)
    for n in model.graph.node:
        if n.op_type == "Constant":
            out += [a.t for a in n.attribute if a.name == "value"]
    return out


def count_params(model: onnx.ModelProto) -> int:
    """Elements of float and int8 weight tensors (a quantized weight counts once, not with its scale)."""
    qparams = {i for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in n.input[1:]}
    total = 0
    for t in _weights(model):
        if t.name in qparams:
            continue
        if t.data_type in _FLOAT | _INT8:
            n = int(np.prod(t.dims)) if t.dims else 1
            total += n if n > 1 else 0  # scalars (scales, zero points, eps) are not parameters
    return total


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True) if not is_big(model) else model
    except Exception:  # noqa: BLE001 - shape inference failure only means fewer MACs are known
        inferred = model
    shapes: dict[str, list] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = dims  # symbolic dims (batch) count as 1: MACs are per sample
    for t in _weights(model):
        shapes.setdefault(t.name, list(t.dims))
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)
    return shapes


def _weight_source(model: onnx.ModelProto) -> dict[str, str]:
    """Map a DequantizeLinear output back to its quantized weight so QDQ models count like float ones."""
    return {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}


def count_macs(model: onnx.ModelProto) -> tuple[int, list[str]]:
    """Per-sample multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul (+ their int8 kernels).

    Returns (macs, names of nodes whose shapes were unknown and so were not counted)."""
    per_node, unknown = node_macs(model)
    return sum(per_node.values()), unknown


def node_macs(model: onnx.ModelProto) -> tuple[dict[str, int], list[str]]:
    """MACs per compute node (keyed by node name, or first output when unnamed), and unknown nodes."""
    shapes = _shapes(model)
    unknown: list[str] = []
    result: dict[str, int] = {}
    for n in model.graph.node:
        key = n.name or n.output[0]
        op = n.op_type
        if op in ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger"):
            w_name = n.input[3] if op == "QLinearConv" else n.input[1]
            out = shapes.get(n.output[0])
            w = shapes.get(w_name)
            if not out or not w or len(w) < 3:
                unknown.append(n.name or n.output[0])
                continue
            if op == "ConvTranspose":
                inp = shapes.get(n.input[0])
                if not inp:
                    unknown.append(n.name or n.output[0])
                    continue
                result[key] = int(np.prod(inp[2:])) * int(np.prod(w))  # every input pixel scatters a kernel
            else:
                result[key] = int(np.prod(out[1:])) * int(np.prod(w[1:]))  # out elems x (Cin/groups * k*k)
        elif op in ("Gemm", "MatMul", "MatMulInteger", "QGemm", "QLinearMatMul"):
            a_name = n.input[0]
            b_name = n.input[3] if op in ("QGemm", "QLinearMatMul") else n.input[1]
            a, b, out = shapes.get(a_name), shapes.get(b_name), shapes.get(n.output[0])
            if not a or not b or not out:
                unknown.append(n.name or n.output[0])
                continue
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            k = a[-2] if (op == "Gemm" and trans_a) else a[-1]
            per_sample = out[1:] if len(out) >= 2 else out  # leading axis = batch
            result[key] = int(np.prod(per_sample)) * int(k)
    return result, unknown


def model_stats(model: onnx.ModelProto) -> dict[str, Any]:
    macs, unknown = count_macs(model)
    return {
        "params": count_params(model),
        "macs": macs,
        "macs_unknown_nodes": unknown,
        "nodes": len(model.graph.node),
        "ops": dict(Counter(n.op_type for n in model.graph.node).most_common()),
    }
