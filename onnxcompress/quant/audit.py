"""Fusion audit: which Conv/MatMul/Gemm of a QDQ model ONNX Runtime actually runs on int8 kernels.

"Quantized but not faster" happens when ORT leaves DequantizeLinear -> float op -> QuantizeLinear
islands. We let ORT write its optimized graph for the EP and map every compute node of the QDQ model to
the kernel it became, weighted by MACs. (ORT's own tools do not report this.)
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import onnx

from ..evaluate.runner import make_session
from ..stats import node_macs

COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
INT8_KERNELS = {"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "MatMulIntegerToFloat",
                "DynamicQuantizeMatMul", "QAttention", "QLinearConvTranspose", "MatMulNBits"}
FLOAT_KERNELS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose", "NchwcConv"}


def _is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger") for n in model.graph.node)


def audit(model: onnx.ModelProto, provider: str = "cpu") -> dict[str, Any]:
    """Per compute node: MACs and the kernel ORT runs it with; the int8 share of MACs."""
    macs, _ = node_macs(model)
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

    compute = [n for n in model.graph.node if n.op_type in COMPUTE]
    kernels = {id(n): match(n.name or n.output[0]) for n in compute}
    # Unmatched nodes were rewritten under new names (NCHWc convs are named after their output, fused
    # activations change outputs); ORT keeps a trace of the name in every int8 fusion, so these ran in
    # float: pair them in graph order with the unmatched float compute kernels.
    leftovers = [op for i, (_, op) in enumerate(opt_nodes) if i not in used and op in FLOAT_KERNELS]
    rows = []
    for n in compute:
        name = n.name or n.output[0]
        kernel = kernels[id(n)] or (leftovers.pop(0) if leftovers else "unknown")
        rows.append({"node": name, "op": n.op_type, "macs": macs.get(name, 0), "kernel": kernel,
                     "int8": kernel in INT8_KERNELS})
    total = sum(r["macs"] for r in rows)
    int8 = sum(r["macs"] for r in rows if r["int8"])
    return {
        "provider": provider, "available": True, "quantized": _is_quantized(model),
        "compute_nodes": len(rows), "int8_nodes": sum(r["int8"] for r in rows),
        "int8_mac_share": (int8 / total) if total else 0.0, "macs_total": total,
        "float_islands": [r for r in rows if not r["int8"]], "nodes": rows,
    }
