"""Model-family defaults: what to quantize when the user does not say, chosen per region of the graph.

Measured here (benchmarks/bench_quant.py, section 5): on encoders built from torch.nn.TransformerEncoder,
quantizing only the MatMul/Gemm projections (LayerNorm, Softmax, GELU/Erf and residual Adds stay
float) is both more accurate and at least as fast as quantizing every op ORT can: each extra Q/DQ
pair around LayerNorm, Softmax or an Add costs a requantization and adds rounding where the
activation ranges are widest. CNNs keep ORT's full op set (pools, Adds and Concats fuse into int8).
A hybrid (conv backbone + transformer encoder, e.g. an OCR recognizer) gets both: every node is given
to the region of its nearest anchor (Conv -> CNN; LayerNorm, Softmax, GELU/Erf, MatMul -> transformer).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import onnx

TRANSFORMER_OPS = ("MatMul", "Gemm")
CNN_ANCHORS = {"Conv", "ConvTranspose"}
# a hybrid's conv region keeps these FP32: each int8 elementwise op re-quantizes, and a recognizer's backbone
# has many (PP-LCNetV3's learnable scale/bias after every activation, hardswish, SE gates): PP-OCRv4 rec agreed
# with FP32 on 17/24 strings with them int8, 21/24 with them FP32 (MatMul-only: 23/24, but its convs FP32)
HYBRID_FLOAT_ARITHMETIC = {"Add", "Sub", "Mul", "Div", "Sigmoid", "HardSigmoid", "Tanh"}
TRANSFORMER_ANCHORS = {"LayerNormalization", "SimplifiedLayerNormalization", "Softmax", "Erf", "Gelu", "MatMul"}


@dataclass
class OpPlan:
    """What ORT is asked to quantize. `op_types` empty = every op it can, minus `float_nodes`."""

    op_types: tuple[str, ...]
    why: str
    family: str
    attention: tuple[str, ...] = ()  # attention MatMuls: kept FP32 by default (excluded, inputs rewired to float)
    float_nodes: tuple[str, ...] = ()  # transformer-region nodes of a hybrid that ORT must leave float
    regions: dict[str, int] = field(default_factory=dict)  # nodes per region (hybrids)
    spectral: tuple[str, ...] = ()  # an STFT/mel front end written as fixed Conv/MatMul kernels: kept FP32


_SPECTRAL_CHAIN = {"Slice", "Pow", "Mul", "Add", "Sqrt", "Abs", "Transpose", "Reshape", "Unsqueeze", "Squeeze",
                   "Concat", "Split", "Clip", "Log", "Max", "Div", "Sub", "Identity", "Cast"}
_TO_INPUT = {"Pad", "Unsqueeze", "Reshape", "Cast", "Identity", "Slice", "Squeeze", "Transpose"}
SPECTRAL_WHY = ("kept FP32: spectral front end (an STFT as a Conv with fixed DFT kernels on the raw audio, its "
                "power/magnitude and mel filterbank): the spectrum spans decades, and int8 steps erase its quiet bins")


def spectral_front_end(model: onnx.ModelProto) -> tuple[str, ...]:
    """Nodes of an STFT front end: a 1-D Conv with one input channel and a window-long kernel (>= 64 taps) reading a
    graph input (through Pad/Unsqueeze/Reshape), then the magnitude/power chain after it (Slice, Pow, Add, Sqrt,
    ..., Log), a MatMul by a non-negative constant matrix on that chain (a mel filterbank), and the first learned
    layer reading the spectrum before any Log (one int8 scale for loud and quiet frames). Later layers stay
    quantized. (silero-vad, openwakeword's melspectrogram: measured loss of the
    quiet frames' decisions with the front end in int8.)"""
    inits = {i.name: i for i in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    prod = {o: n for n in model.graph.node for o in n.output}
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for t in n.input:
            cons.setdefault(t, []).append(n)

    def from_input(t: str) -> bool:
        for _ in range(8):
            if t in inputs:
                return True
            n = prod.get(t)
            if n is None or n.op_type not in _TO_INPUT:
                return False
            t = n.input[0]
        return False

    found: list[str] = []
    for n in model.graph.node:
        w = inits.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        if w is None or len(w.dims) != 3 or w.dims[1] != 1 or w.dims[2] < 64 or not n.name or not from_input(n.input[0]):
            continue
        todo, seen = [(n, False)], set()
        while todo:
            m, logged = todo.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            if m.name and m.name not in found:
                found.append(m.name)
            for c in (c for o in m.output for c in cons.get(o, [])):
                weights = inits.get(c.input[1]) if len(c.input) > 1 else None
                if c.op_type in _SPECTRAL_CHAIN:
                    todo.append((c, logged or c.op_type == "Log"))
                elif c.op_type in ("MatMul", "Gemm") and weights is not None and (
                        onnx.numpy_helper.to_array(weights) >= 0).all():
                    todo.append((c, logged))  # a mel filterbank
                elif c.op_type in ("Conv", "MatMul", "Gemm") and weights is not None and not logged and c.name:
                    found.append(c.name)  # the first learned layer reading the linear spectrum: its int8 input
                    # would share one scale between loud and quiet frames (the quiet ones rounded to 0)
    return tuple(found)


def model_family(model: onnx.ModelProto) -> str:
    """'transformer' when the graph has attention (Softmax fed by a MatMul of two activations, Q.K^T; a
    classifier head's MatMul with weights + Softmax is not attention) or LayerNorm with MatMuls; 'hybrid'
    when it also has Conv; 'cnn' when it has Conv only; otherwise 'other'."""
    ops = {n.op_type for n in model.graph.node}
    by_out = {o: n for n in model.graph.node for o in n.output}
    scores = set(attention_matmuls(model))
    attention = any(n.op_type == "Softmax" and _from(by_out, n.input[0], "MatMul", scores) for n in model.graph.node)
    norm = bool({"LayerNormalization", "SimplifiedLayerNormalization"} & ops) or bool(decomposed_norms(model))
    if attention or ("MatMul" in ops and norm):
        return "hybrid" if ops & CNN_ANCHORS else "transformer"
    if "Conv" in ops:
        return "cnn"
    return "other"


def _from(by_out: dict[str, onnx.NodeProto], tensor: str, op: str, names: set, depth: int = 6) -> bool:
    """Is `tensor` produced by an `op` node named in `names` within `depth` elementwise steps (scale Div/Mul, mask Add) or reshapes
    (PaddlePaddle's opset-11/12 exports flatten the scores to 2-D around Softmax)?"""
    for _ in range(depth):
        node = by_out.get(tensor)
        if node is None:
            return False
        if node.op_type == op:
            return node.name in names
        if node.op_type not in ("Div", "Mul", "Add", "Where", "Cast", "Flatten", "Reshape", "Transpose", "Squeeze",
                                "Unsqueeze", "Identity"):
            return False
        tensor = node.input[0]
    return False


_RESHAPES = {"Expand", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Identity"}


def decomposed_norms(model: onnx.ModelProto) -> set[str]:
    """Sqrt nodes of a LayerNorm/RMSNorm written out in elementwise ops (jax2tf, tf2onnx, older exporters):
    Sqrt(ReduceMean/ReduceSum(...) [+ eps]). They anchor a transformer region like LayerNormalization:
    quantized on ORT's defaults, the mean/variance chain's Sub/Mul/ReduceSum rounded a real byte-level
    classifier (magika) to 46% agreement with FP32; with only MatMul/Conv quantized, 100%."""
    by_out = {o: n for n in model.graph.node for o in n.output}
    found = set()
    for n in model.graph.node:
        if n.op_type != "Sqrt" or not n.name:
            continue
        t = n.input[0]
        frontier = [t]
        for _ in range(8):  # variance = E[x^2] - E[x]^2 (Sub), clamped (Max), + eps (Add), scaled, broadcast
            producers = [by_out[x] for x in frontier if x in by_out]
            if any(p.op_type in ("ReduceMean", "ReduceSum") for p in producers):
                found.add(n.name)
                break
            frontier = [x for p in producers if p.op_type in ("Add", "Sub", "Mul", "Div", "Max") for x in p.input]
            frontier += [p.input[0] for p in producers if p.op_type in _RESHAPES]
            if not frontier:
                break
    return found


def attention_matmuls(model: onnx.ModelProto) -> tuple[str, ...]:
    """MatMuls of two activations (attention scores Q.K^T and context P.V). Measured on both encoders in
    bench_quant: keeping them FP32 is more accurate (softmax probabilities span many decades, uint8
    keeps few) and faster (each needs two run-time QuantizeLinear for ~2% of the MACs)."""
    inits = {i.name for i in model.graph.initializer}
    consts = inits | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return tuple(n.name for n in model.graph.node
                 if n.op_type == "MatMul" and n.name and not any(i in consts for i in n.input))


def regions(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> 'cnn' | 'transformer': the region of its nearest anchor, counted in graph hops
    (producer and consumer edges alike). A tie goes to 'transformer' (the float choice)."""
    nodes = [n for n in model.graph.node if n.name]
    cons: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            cons.setdefault(t, []).append(i)
    prod = {o: i for i, n in enumerate(nodes) for o in n.output}
    adj = [[prod[t] for t in n.input if t in prod] + [j for o in n.output for j in cons.get(o, [])] for n in nodes]
    label: dict[int, tuple[int, str]] = {}
    queue: deque[int] = deque()
    norms = decomposed_norms(model)
    for i, n in enumerate(nodes):  # transformer anchors first: at equal distance they win
        if n.op_type in TRANSFORMER_ANCHORS or n.name in norms:
            label[i] = (0, "transformer")
            queue.append(i)
    for i, n in enumerate(nodes):
        if n.op_type in CNN_ANCHORS:
            label[i] = (0, "cnn")
            queue.append(i)
    while queue:  # multi-source BFS: first come (shortest distance, transformer first on ties) wins
        i = queue.popleft()
        d, r = label[i]
        for j in adj[i]:
            if j not in label:
                label[j] = (d + 1, r)
                queue.append(j)
    return {nodes[i].name: label[i][1] if i in label else "cnn" for i in range(len(nodes))}


def default_plan(model: onnx.ModelProto, requested: tuple[str, ...]) -> OpPlan:
    """The op types (or, in a hybrid, the nodes) to quantize, and why."""
    family = model_family(model)
    if requested:
        return OpPlan(tuple(requested), f"--op-types {', '.join(requested)}", family)
    plan = _family_plan(model, family)
    plan.spectral = spectral_front_end(model)
    return plan


def _family_plan(model: onnx.ModelProto, family: str) -> OpPlan:
    if family == "transformer":
        return OpPlan(TRANSFORMER_OPS, "transformer detected (attention/LayerNorm): only MatMul/Gemm with constant "
                      "weights quantized; attention MatMuls, LayerNorm, Softmax, GELU/Erf and residual Adds stay FP32 "
                      "(more accurate and faster, measured)", family, attention_matmuls(model))
    if family == "hybrid":
        region = regions(model)
        attention = attention_matmuls(model)
        float_nodes = tuple(n.name for n in model.graph.node if n.name and (
            (region.get(n.name) == "transformer" and n.op_type not in TRANSFORMER_OPS)
            or (region.get(n.name) == "cnn" and n.op_type in HYBRID_FLOAT_ARITHMETIC)))
        counts = {r: sum(1 for v in region.values() if v == r) for r in ("cnn", "transformer")}
        return OpPlan((), f"CNN + transformer detected: in the conv region ({counts['cnn']} nodes) convs, pools and "
                      "data movement quantized, its elementwise arithmetic (affine scale/bias, swish, SE gates, residual "
                      f"Adds) FP32; in the transformer region ({counts['transformer']} nodes) only "
                      "MatMul/Gemm with constant weights, attention MatMuls, LayerNorm, Softmax, GELU/Erf and residual "
                      "Adds stay FP32", family, attention, float_nodes, counts)
    return OpPlan((), f"{family} model: every op ONNX Runtime can quantize", family)


def default_op_types(model: onnx.ModelProto, requested: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """The op types to quantize and why (empty tuple = every op ORT can quantize, see default_plan for hybrids)."""
    plan = default_plan(model, requested)
    return plan.op_types, plan.why


def mixed_range_concats(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]],
                        ratio: float = 16.0) -> list[tuple[str, str]]:
    """Concats that join tensors whose calibrated spans differ by more than `ratio`, as (node, reason).

    A QDQ Concat has one scale for its output: an input spanning 1/ratio of it keeps fewer than
    256/ratio levels. A YOLOv8 head concatenates box coordinates (0..640) with class scores (0..1):
    with one uint8 scale every score rounds to 0 or 2.5 and all detections vanish while the cosine of
    the output stays 0.998 (measured on a real YOLOv8n). Kept FP32, the Concat reads float inputs."""
    out = []
    for n in model.graph.node:
        if n.op_type != "Concat" or not n.name:
            continue
        spans = [ranges[t][1] - ranges[t][0] for t in n.input if t in ranges]
        if len(spans) < 2 or min(spans) <= 0:
            continue
        if max(spans) > ratio * min(spans):
            out.append((n.name, f"kept FP32: joins tensors whose ranges differ {max(spans) / min(spans):.0f}x "
                                f"(one int8 scale would leave the smallest fewer than {256 * min(spans) / max(spans):.0f} levels)"))
    return out
