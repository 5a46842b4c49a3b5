"""Model statistics: parameters, per-sample MACs (shape inference, or one run where it falls short), ops."""
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


_COMPUTE = {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "Gemm", "MatMul", "MatMulInteger", "QGemm",
            "QLinearMatMul"}


def _shapes(model: onnx.ModelProto) -> tuple[dict[str, list], int]:
    """Tensor shapes and the batch size they are for. Shape inference first; when it leaves a compute
    node's dims unknown (Reshape targets computed from Shape ops, as exported transformers have), one
    ORT run on a zero batch of 1 gives the real shapes (symbolic input dims = 1)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True) if not is_big(model) else model
    except Exception:  # noqa: BLE001 - shape inference failure only means fewer MACs are known
        inferred = model
    shapes: dict[str, list] = {}
    unknown: set[str] = set()
    inputs = [i for i in model.graph.input if i.type.tensor_type.shape.dim]
    batch_dim = inputs[0].type.tensor_type.shape.dim[0].dim_param if inputs else ""
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            dims = list(vi.type.tensor_type.shape.dim)
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
            # an unknown dim other than the model's batch (e.g. batch*tokens after a Reshape) would count as 1
            lead_other = bool(dims) and not dims[0].HasField("dim_value") and dims[0].dim_param != batch_dim
            if lead_other or any(not d.HasField("dim_value") for d in dims[1:]):
                unknown.add(vi.name)
    for t in _weights(model):
        shapes.setdefault(t.name, list(t.dims))
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)
    vague = any(t in unknown or (t and t not in shapes) for n in model.graph.node if n.op_type in _COMPUTE
                for t in [*n.input[:2], n.output[0]])
    if vague and not is_big(model):
        measured = _run_shapes(model)
        if measured is not None:
            shapes.update(measured[0])
            return shapes, measured[1]
    return shapes, 1


def _run_shapes(model: onnx.ModelProto) -> "tuple[dict[str, list], int] | None":
    from .data import input_specs
    from .errors import OnnxCompressError
    from .evaluate.runner import make_session, with_outputs

    specs = input_specs(model)
    first = specs[0].shape[0] if specs and specs[0].shape else 1
    batch = first if isinstance(first, int) and first > 0 else 1
    feeds = {s.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in s.shape], s.dtype) for s in specs}
    names = list(dict.fromkeys(o for n in model.graph.node if n.op_type != "Constant" for o in n.output if o))
    try:
        sess = make_session(with_outputs(model, names), optimize=False)
        outs = sess.run(names, feeds)
    except (OnnxCompressError, Exception):  # noqa: BLE001 - a model ORT cannot run keeps inferred shapes
        return None
    return {n: list(o.shape) for n, o in zip(names, outs) if hasattr(o, "shape")}, batch


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
    shapes, batch = _shapes(model)
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
            # all rows of the output, per sample (a Gemm on [batch*tokens, d] has no batch axis of its own)
            result[key] = int(np.prod(out)) * int(k) // max(batch, 1) if len(out) >= 2 else int(np.prod(out)) * int(k)
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
