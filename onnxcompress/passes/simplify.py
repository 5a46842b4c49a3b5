"""Graph simplification with onnxsim (constant folding, dead-node removal, shape fixing).

We call onnxsim rather than rewrite it; what we add is the record (ops before/after) and a safe
fallback: when onnxsim cannot handle a model it is skipped with the reason and the input is kept.
"""
from __future__ import annotations

from collections import Counter

import onnx

from ..io import is_big
from .base import PassRecord

GROWTH_LIMIT = 1.2  # simplified / input serialized size; above it (and GROWTH_FLOOR bytes more) the input is kept
GROWTH_FLOOR = 1 << 20  # tiny models may grow a few bytes when a constant branch folds


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassRecord]:
    rec = PassRecord("simplify")
    before = Counter(n.op_type for n in model.graph.node)
    rec.stats["nodes_before"] = sum(before.values())
    if is_big(model):
        rec.skip("model", "over 2 GB: onnxsim needs the model in one protobuf; kept as is")
        rec.stats["nodes_after"] = rec.stats["nodes_before"]
        return model, rec
    try:
        import onnxsim
    except ImportError:
        rec.skip("model", "onnxsim is not installed (pip install onnxsim); kept as is")
        rec.stats["nodes_after"] = rec.stats["nodes_before"]
        return model, rec
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # noqa: BLE001 - onnxsim raises bare RuntimeError/ValueError/etc.; recorded, input kept
        rec.skip("model", f"onnxsim failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); kept as is")
        rec.stats["nodes_after"] = rec.stats["nodes_before"]
        return model, rec
    if not ok:
        rec.skip("model", "onnxsim's own check found the simplified model differs; kept as is")
        rec.stats["nodes_after"] = rec.stats["nodes_before"]
        return model, rec
    grown = simplified.ByteSize() / max(1, model.ByteSize())
    if grown > GROWTH_LIMIT and simplified.ByteSize() - model.ByteSize() > GROWTH_FLOOR:  # e.g. int8 weights dequantized by Cast/Mul: folding stores them as float32
        rec.skip("model", f"onnxsim's constant folding would grow the model {grown:.1f}x "
                          f"({model.ByteSize() / 1e6:.1f} -> {simplified.ByteSize() / 1e6:.1f} MB: it expands compressed "
                          "weights such as int8 weights dequantized by Cast/Mul); kept as is")
        rec.stats["nodes_after"] = rec.stats["nodes_before"]
        return model, rec
    after = Counter(n.op_type for n in simplified.graph.node)
    rec.stats["nodes_after"] = sum(after.values())
    rec.stats["removed_ops"] = {k: before[k] - after.get(k, 0) for k in before if before[k] > after.get(k, 0)}
    rec.counts = {f"{op} removed": n for op, n in rec.stats["removed_ops"].items()}
    return simplified, rec
