"""Model-family defaults: what to quantize when the user does not say.

Measured here (benchmarks/bench_quant.py, section 5): on encoders built from torch.nn.TransformerEncoder,
quantizing only the MatMul/Gemm projections (LayerNorm, Softmax, GELU/Erf and residual Adds stay
float) is both more accurate and at least as fast as quantizing every op ORT can: each extra Q/DQ
pair around LayerNorm, Softmax or an Add costs a requantization and adds rounding where the
activation ranges are widest. CNNs keep ORT's full op set (pools, Adds and Concats fuse into int8).
"""
from __future__ import annotations

import onnx

TRANSFORMER_OPS = ("MatMul", "Gemm")


def model_family(model: onnx.ModelProto) -> str:
    """'transformer' when the graph has attention (Softmax fed by a MatMul) or LayerNorm with MatMuls;
    'cnn' when it has Conv; otherwise 'other'."""
    ops = {n.op_type for n in model.graph.node}
    prod = {o: n.op_type for n in model.graph.node for o in n.output}
    attention = any(n.op_type == "Softmax" and _from(prod, model, n.input[0], "MatMul") for n in model.graph.node)
    if attention or ("MatMul" in ops and ({"LayerNormalization", "SimplifiedLayerNormalization"} & ops)):
        return "transformer"
    if "Conv" in ops:
        return "cnn"
    return "other"


def _from(prod: dict[str, str], model: onnx.ModelProto, tensor: str, op: str, depth: int = 4) -> bool:
    """Is `tensor` produced by `op` within `depth` elementwise steps (scale Div/Mul, mask Add)?"""
    by_out = {o: n for n in model.graph.node for o in n.output}
    for _ in range(depth):
        node = by_out.get(tensor)
        if node is None:
            return False
        if node.op_type == op:
            return True
        if node.op_type not in ("Div", "Mul", "Add", "Where", "Cast"):
            return False
        tensor = node.input[0]
    return False


def attention_matmuls(model: onnx.ModelProto) -> tuple[str, ...]:
    """MatMuls of two activations (attention scores Q.K^T and context P.V). Measured on both encoders in
    bench_quant: keeping them FP32 is more accurate (softmax probabilities span many decades, uint8
    keeps few) and faster (each needs two run-time QuantizeLinear for ~2% of the MACs)."""
    inits = {i.name for i in model.graph.initializer}
    consts = inits | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return tuple(n.name for n in model.graph.node
                 if n.op_type == "MatMul" and n.name and not any(i in consts for i in n.input))


def default_op_types(model: onnx.ModelProto, requested: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """The op types to quantize and why (empty tuple = every op ORT can quantize)."""
    if requested:
        return tuple(requested), f"--op-types {', '.join(requested)}"
    family = model_family(model)
    if family == "transformer":
        return TRANSFORMER_OPS, ("transformer detected (attention/LayerNorm): only MatMul/Gemm with constant weights "
                                 "quantized; attention MatMuls, LayerNorm, Softmax, GELU/Erf and residual Adds stay FP32 "
                                 "(more accurate and faster, measured)")
    return (), f"{family} model: every op ONNX Runtime can quantize"
