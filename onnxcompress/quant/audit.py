"""Fusion audit: which Conv/MatMul/Gemm of a QDQ model ONNX Runtime actually runs on int8 kernels.

"Quantized but not faster" happens when ORT leaves DequantizeLinear -> float op -> QuantizeLinear
islands. We let ORT write its optimized graph for the EP and map every compute node of the QDQ model to
the kernel it became, weighted by MACs. (ORT's own tools do not report this.)
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx

from ..runtime.session import make_session, session_options
from ..stats import node_macs, shapes_or_none

COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
INT8_KERNELS = {"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "MatMulIntegerToFloat",
                "DynamicQuantizeMatMul", "QAttention", "QLinearConvTranspose", "MatMulNBits"}
FLOAT_KERNELS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose", "NchwcConv"}


def _is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger") for n in model.graph.node)


def audit(model: onnx.ModelProto, provider: str = "cpu", feed: Optional[dict] = None,
          input_shapes: Optional[dict] = None, optimized: Optional[onnx.ModelProto] = None) -> dict[str, Any]:
    """Per compute node: MACs and the kernel ORT runs it with; the int8 share of MACs. MACs come from the
    shapes measured on `feed` (one sample of the data) or `input_shapes` (stats.model_shapes); when dynamic
    spatial/sequence dims leave them unknown, node MACs are None and the shares count nodes instead
    (`share_basis` says which, `macs_note` what is needed)."""
    shapes, macs_note = shapes_or_none(model, feed, input_shapes)
    macs = node_macs(model, shapes)[0] if shapes is not None else None
    if optimized is None:  # given: the graph ORT optimized elsewhere (an emulated target, onnxcompress.platform)
        with tempfile.TemporaryDirectory(prefix="onnxcompress-audit-") as d:
            opt_path = str(Path(d) / "optimized.onnx")
            make_session(model, provider, threads=1, optimize=True, optimized_path=opt_path)
            if not Path(opt_path).exists():
                return {"provider": provider, "available": False,
                        "reason": f"the {provider} execution provider compiles the graph and does not expose kernels"}
            optimized = onnx.load(opt_path)
    opt_nodes = [(n.name, n.op_type) for n in optimized.graph.node]
    used: set[int] = set()

    def match(name: str):
        for i, (oname, op) in enumerate(opt_nodes):
            if i not in used and (oname == name or oname.startswith((name + "_token", name + "_quant"))):
                used.add(i)
                return op
        return None

    compute = [n for n in model.graph.node if n.op_type in COMPUTE or n.op_type in INT8_KERNELS]
    quantized = _quantized_nodes(model, compute)
    kernels = {id(n): match(n.name or n.output[0]) for n in compute}
    for n in compute:  # already-integer ops (dynamic / QOperator models) cannot run in float, whatever ORT renames them
        if n.op_type in INT8_KERNELS and kernels[id(n)] not in INT8_KERNELS:
            kernels[id(n)] = n.op_type
    # Unmatched nodes were rewritten under new names (NCHWc convs are named after their output, fused
    # activations change outputs); ORT keeps a trace of the name in every int8 fusion, so these ran in
    # float: pair them in graph order with the unmatched float compute kernels.
    leftovers = [op for i, (_, op) in enumerate(opt_nodes) if i not in used and op in FLOAT_KERNELS]
    rows = []
    for n in compute:
        name = n.name or n.output[0]
        kernel = kernels[id(n)] or (leftovers.pop(0) if leftovers else "unknown")
        is_int8 = kernel in INT8_KERNELS
        rows.append({"node": name, "op": n.op_type, "macs": macs.get(name, 0) if macs is not None else None,
                     "kernel": kernel, "int8": is_int8,
                     "role": "int8" if is_int8 else ("island" if id(n) in quantized else "fp32")})
    weight = (lambda r: r["macs"]) if macs is not None else (lambda r: 1)  # noqa: E731 - nodes when MACs are unknown
    total = sum(weight(r) for r in rows)
    int8 = sum(weight(r) for r in rows if r["int8"])
    meant = sum(weight(r) for r in rows if r["role"] != "fp32")
    return {
        "provider": provider, "available": True, "quantized": _is_quantized(model),
        "compute_nodes": len(rows), "int8_nodes": sum(r["int8"] for r in rows),
        # of all compute MACs; of the MACs the quantizer gave Q/DQ (what --require-fusion gates: layers
        # kept in FP32 on purpose, such as attention score MatMuls or fallback exclusions, are not islands)
        "int8_mac_share": (int8 / total) if total else 0.0,
        "fused_share": (int8 / meant) if meant else 0.0,
        "macs_total": total if macs is not None else None, "macs_quantized": meant if macs is not None else None,
        "share_basis": "MACs" if macs is not None else "nodes", **({"macs_note": macs_note} if macs_note else {}),
        "float_islands": [r for r in rows if r["role"] == "island"],
        "kept_fp32": [r for r in rows if r["role"] == "fp32"], "nodes": rows,
    }


def _quantized_nodes(model: onnx.ModelProto, compute: list) -> set[int]:
    """Compute nodes the quantizer meant to run in int8: an input (through data-movement ops) comes
    from DequantizeLinear, or, for dynamic quantization, the node is already an integer op."""
    prod = {o: n for n in model.graph.node for o in n.output}
    passthrough = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"}

    def from_dq(name: str, depth: int = 0) -> bool:
        n = prod.get(name)
        if n is None or depth > 4:
            return False
        if n.op_type == "DequantizeLinear":
            return True
        return n.op_type in passthrough and from_dq(n.input[0], depth + 1)

    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    # a layer kept FP32 keeps float weights: reading a DequantizeLinear'd activation (an int8 Conv's output,
    # see qdq.int8_conv_outputs) does not make it an island
    return {id(n) for n in compute if n.op_type in INT8_KERNELS or (
        any(from_dq(i) for i in n.input if i) and not (len(n.input) > 1 and n.input[1] in floats))}


SLOWER_THAN_FP32 = 1.25  # an int8 layer this much slower than in FP32 (timing noise stays below) is a candidate
MIN_LOSS_US = 5.0  # ... and by at least this: below it, a layer kept FP32 costs more in Q/DQ than it saves


def _is_int8_op(op: str) -> bool:
    return op in INT8_KERNELS or op.startswith("QLinear")


def _profile(model: onnx.ModelProto, feed: dict, runs: int) -> tuple[dict[str, float], onnx.ModelProto]:
    """ORT's per-node kernel times (us per run, batch 1, one thread) by optimized node name, and the optimized graph."""
    import json
    import os

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="onnxcompress-prof-") as d:
        opts = session_options(threads=1)  # one thread: per-node times comparable between the two models
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(d) / "prof")
        opts.optimized_model_filepath = str(Path(d) / "opt.onnx")
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, feed)
        trace = sess.end_profiling()
        events = json.loads(Path(trace).read_text())
        optimized = onnx.load(str(Path(d) / "opt.onnx"))
        os.unlink(trace)
    samples: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            samples.setdefault(e["name"][: -len("_kernel_time")], []).append(float(e.get("dur", 0)))
    # a low percentile, not the mean: other processes on a shared machine inflate some runs, never shorten them
    return {k: float(np.percentile(v, 25)) * len(v) / runs for k, v in samples.items()}, optimized


def fp32_layer_times(model: onnx.ModelProto, feed: dict, runs: int = 20) -> dict[str, float]:
    """Per compute layer of an FP32 model: its kernel time (us, batch 1, one thread). ORT names a fused kernel
    after its first node, an NCHWc conv after its output tensor (+ '_nchwc', the tensor of the last activation
    fused into it): both are traced back to the Conv/Gemm/MatMul that produced them."""
    times, optimized = _profile(model, feed, runs)
    names = {n.name for n in model.graph.node if n.name}
    prod = {o: n for n in model.graph.node for o in n.output}
    out: dict[str, float] = {}
    for n in optimized.graph.node:
        layer = n.name.split("_token_")[0]
        if layer not in names:
            tensor = n.name[: -len("_nchwc")] if n.name.endswith("_nchwc") else (n.output[0] if n.output else "")
            p = prod.get(tensor)
            for _ in range(4):  # back through fused BatchNormalization / activations to the compute node
                if p is None or p.op_type in COMPUTE:
                    break
                p = prod.get(p.input[0]) if p.input else None
            layer = p.name if p is not None and p.op_type in COMPUTE else None
        if layer:
            out[layer] = out.get(layer, 0.0) + times.get(n.name, 0.0)
    return out


def slow_layers(model: onnx.ModelProto, feed: dict, runs: int = 20,
                reference: Optional[onnx.ModelProto] = None) -> list[dict[str, Any]]:
    """Quantized nodes that ORT likely runs slower than in FP32, from a per-node profile at batch 1 on
    one thread: float islands (Q/DQ but a float kernel: pure overhead), int8 kernels whose run-time
    QuantizeLinear/DequantizeLinear (not fused away: the neighbours are float) take longer than the kernel
    itself, and, given the FP32 `reference` (profiled too), int8 layers whose kernel plus own Q/DQ take
    longer than the same layer in FP32 (ORT's generic int8 depthwise kernel: channels not a multiple of 16;
    a 3-channel stem conv; 1x1-spatial squeeze-excite convs). Candidates only: the caller keeps them FP32
    and re-measures. (ORT's profiler gives per-node times of its optimized graph; nothing in ORT maps them
    back to the layers of the QDQ model.)"""
    names = {n.name for n in model.graph.node if n.name}
    times, optimized = _profile(model, feed, runs)
    nodes = list(optimized.graph.node)
    prod = {o: n for n in nodes for o in n.output}
    cons: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            cons.setdefault(i, []).append(n)

    def owner(n) -> Optional[str]:  # the QDQ-model layer an optimized node came from
        name = n.name
        for suffix in ("_quant",):
            name = name[: -len(suffix)] if name.endswith(suffix) else name
        if "_token_" in name:
            name = name[: name.rindex("_token_")]
        return name if name in names else None

    cost: dict[str, dict[str, float]] = {}
    for n in nodes:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            peers = cons.get(n.output[0], []) if n.op_type == "QuantizeLinear" else [prod.get(n.input[0])]
            if n.op_type == "DequantizeLinear" and (peers[0] is None or not _is_int8_op(peers[0].op_type)):
                peers = cons.get(n.output[0], [])  # DQ feeding a float op: overhead of that op
            if n.op_type == "QuantizeLinear" and not any(_is_int8_op(p.op_type) for p in peers):
                peers = [prod.get(n.input[0])]  # Q after a float op (an island): overhead of that op
            peers = [p for p in peers if p is not None and owner(p)]
            for p in peers:
                c = cost.setdefault(owner(p), {"kernel_us": 0.0, "qdq_us": 0.0, "kernel": p.op_type})
                c["qdq_us"] += times.get(n.name, 0.0) / len(peers)
        elif owner(n):
            c = cost.setdefault(owner(n), {"kernel_us": 0.0, "qdq_us": 0.0, "kernel": n.op_type})
            c["kernel_us"] += times.get(n.name, 0.0)
            c["kernel"] = n.op_type
    fusion = audit(model)
    islands = {r["node"] for r in fusion.get("float_islands", [])}
    for r in fusion.get("float_islands", []):  # renamed by ORT beyond recognition: still an island
        cost.setdefault(r["node"], {"kernel_us": 0.0, "qdq_us": 0.0, "kernel": r["kernel"]})
    ops = {n.name: n.op_type for n in model.graph.node}
    out = []
    for name, c in cost.items():
        if name in islands:
            why = f"float island: Q/DQ around a float {c['kernel']} kernel ({c['qdq_us']:.0f} us of Q/DQ per run)"
        elif _is_int8_op(c["kernel"]) and c["qdq_us"] > c["kernel_us"] > 0:
            why = (f"Q/DQ overhead dominates: {c['qdq_us']:.0f} us of run-time Q/DQ for a {c['kernel_us']:.0f} us "
                   f"{c['kernel']} kernel")
        else:
            continue
        out.append({"node": name, "op": ops.get(name, "?"), "kernel": c["kernel"], "kernel_us": round(c["kernel_us"], 1),
                    "qdq_us": round(c["qdq_us"], 1), "why": why})
    out.sort(key=lambda r: -(r["qdq_us"] - r["kernel_us"]))
    if reference is not None:
        ref = fp32_layer_times(reference, feed, runs)
        found = {r["node"] for r in out}
        slower = []
        for name, c in cost.items():
            total, fp32 = c["kernel_us"] + c["qdq_us"], ref.get(name)
            if name in found or not fp32 or not _is_int8_op(c["kernel"]) or total < SLOWER_THAN_FP32 * fp32 + MIN_LOSS_US:
                continue
            slower.append({"node": name, "op": ops.get(name, "?"), "kernel": c["kernel"], "kernel_us": round(c["kernel_us"], 1),
                           "qdq_us": round(c["qdq_us"], 1), "fp32_us": round(fp32, 1),
                           "why": f"{c['kernel']} + its Q/DQ take {total:.0f} us, the FP32 layer {fp32:.0f} us"})
        out += sorted(slower, key=lambda r: -(r["kernel_us"] + r["qdq_us"] - r["fp32_us"]))
    return out
