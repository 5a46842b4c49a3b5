"""Per-layer SQNR of a candidate (e.g. int8 QDQ) against its reference, on instrumented copies.

The candidate file is never touched: copies of both models expose the intermediate tensors they share
(for a QDQ candidate, the value after QuantizeLinear -> DequantizeLinear, which is what the int8 kernel
sees), and we compare them tensor by tensor, worst first.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import onnx

from ..data import Dataset
from ..runtime.budget import read_tensors
from .compare import snr_db, sqnr


def shared_tensors(ref: onnx.ModelProto, cand: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """ref tensor -> (tensor to read in cand, producing op in ref), for outputs of ref's nodes."""
    cand_out = {o for n in cand.graph.node for o in n.output}
    # a Q -> DQ pair stands for the tensor only when both use the same scale and zero point: quant's
    # fold_scalar_requant quantizes a Mul straight to the grid after a following /6 (hardswish), and that DQ
    # holds x / 6 (it read as 1.58 dB = a 6x factor on every hardswish); then the float tensor is read
    q_of = {n.input[0]: (n.output[0], tuple(n.input[1:])) for n in cand.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: (n.output[0], tuple(n.input[1:])) for n in cand.graph.node if n.op_type == "DequantizeLinear"}
    pairs = {}
    for n in ref.graph.node:
        if n.op_type == "Constant":
            continue
        for o in n.output:
            if o in cand_out:
                q, dq = q_of.get(o), None
                dq = dq_of.get(q[0]) if q is not None else None
                seen = dq[0] if dq is not None and dq[1] == q[1] else o  # the dequantized value when quantized
                pairs[o] = (seen, n.op_type)
    return pairs


def layer_sqnr(ref: onnx.ModelProto, cand: onnx.ModelProto, data: Dataset, samples: int = 64,
               batch_size: int = 16, provider: str = "cpu",
               pairs: Optional[dict[str, tuple[str, str]]] = None, memory_budget=None) -> list[dict[str, Any]]:
    """`pairs`: ref tensor -> (cand tensor, op), default shared_tensors(ref, cand). The tensor pairs are read
    in passes and batches sized to the memory budget (runtime.budget; `memory_budget`, else the data's);
    sums are float64 per sample, added in sample order: the numbers do not depend on the budget."""
    pairs = shared_tensors(ref, cand) if pairs is None else pairs
    if not pairs:
        return []
    rnames = list(pairs)
    cnames = [pairs[n][0] for n in rnames]
    noise = np.zeros(len(rnames))
    signal = np.zeros(len(rnames))
    for p, _feed, (rs, cs) in read_tensors([ref, cand], [rnames, cnames], data, batch_size, samples, memory_budget,
                                           optimize=(False, True), provider=provider):
        for i, r, c in zip(p.units, rs, cs):
            rows = r.shape[0] if r.ndim else 1
            r2, c2 = r.reshape(rows, -1), c.reshape(rows, -1)
            for k in range(rows):  # one sample at a time: float64 temporaries of one sample, not of the batch
                r64 = r2[k].astype(np.float64)
                d = r64 - c2[k].astype(np.float64)
                noise[i] += float(np.sum(d * d))
                signal[i] += float(np.sum(r64 * r64))
    rows = []
    for i, name in enumerate(rnames):
        rows.append({"tensor": name, "op": pairs[name][1], "sqnr_db": snr_db(signal[i], noise[i])})
    rows.sort(key=lambda r: r["sqnr_db"])
    return rows


__all__ = ["layer_sqnr", "shared_tensors", "sqnr"]
