import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.quant.fallback import Budget, Evaluator, fallback_search


def outlier_mlp(seed=0):
    """x[N,16] -> fc1(64) -> Relu -> fc2(64) -> Relu -> fc3(10). fc1 has one output unit 300x larger
    than the rest (its weight into fc2 300x smaller: same function): per-tensor uint8 of fc2's input
    leaves the other 63 units a handful of levels, so fc2 is the layer to keep in FP32."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((64, 16)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((64, 64)).astype(np.float32) * 0.2
    w3 = rng.standard_normal((10, 64)).astype(np.float32) * 0.3
    w1[0] *= 300.0
    w2[:, 0] /= 300.0
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"),
                                                         (np.zeros(64, np.float32), "b1"),
                                                         (np.zeros(64, np.float32), "b2"),
                                                         (np.zeros(10, np.float32), "b3"))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1", transB=1),
             helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
             helper.make_node("Gemm", ["a1", "w2", "b2"], ["h2"], name="fc2", transB=1),
             helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
             helper.make_node("Gemm", ["a2", "w3", "b3"], ["logits"], name="fc3", transB=1)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def ds(n, seed):
    return Dataset([{"x": np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)}], None, "t")


def test_fallback_keeps_the_sensitive_layer_in_fp32_until_the_budget_fits():
    m = outlier_mlp()
    cfg = QuantConfig(per_channel=False, equalize=False)
    budget = Budget(max_drop=1.0, metric="agreement")
    seen = []
    q, rec = fallback_search(m, ds(256, 0), ds(400, 1), cfg, budget, on_best=lambda model, r: seen.append(model))
    fb = rec.stats["fallback"]
    first = fb["steps"][0]["drop"]
    assert first > 1.0  # all-int8 breaks the budget ...
    assert fb["fits"] and fb["drop"] <= 1.0 < first  # ... the search brings it within
    assert "fc2" in fb["excluded"] and fb["sensitivity"][0]["node"] == "fc2"
    assert fb["steps"][-1]["kept"] and len(seen) == 1 + sum(s["kept"] for s in fb["steps"][1:])
    # fc2 really runs in float: float weight, its input not from a DequantizeLinear
    prod = {o: n.op_type for n in q.graph.node for o in n.output}
    fc2 = next(n for n in q.graph.node if n.name == "fc2")
    inits = {i.name: i for i in q.graph.initializer}
    assert inits[fc2.input[1]].data_type == TensorProto.FLOAT and prod[fc2.input[0]] != "DequantizeLinear"
    # the recorded drop is what the model gives on the validation data
    ev = Evaluator(m, ds(400, 1), budget)
    assert ev.drop(q) == pytest.approx(fb["drop"])
    x = ds(64, 7).chunks[0]
    ref, got = run_ort(m, x)[0], run_ort(q, x)[0]
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.95


def test_fallback_stops_at_once_when_int8_fits():
    m = outlier_mlp()
    q, rec = fallback_search(m, ds(256, 0), ds(200, 1), QuantConfig(per_channel=False, equalize=False), Budget(max_drop=100.0))
    fb = rec.stats["fallback"]
    assert fb["excluded"] == [] and len(fb["steps"]) == 1 and fb["stopped"] == "fits the budget"


def test_fallback_reports_when_the_budget_cannot_be_met():
    m = outlier_mlp()
    q, rec = fallback_search(m, ds(256, 0), ds(200, 1), QuantConfig(per_channel=False, equalize=False),
                             Budget(max_drop=0.0, metric="cosine"), max_layers=1)
    fb = rec.stats["fallback"]
    assert not fb["fits"] and len(fb["steps"]) == 3 and fb["steps"][1]["bias_correction"] and any(s.target == "fallback" for s in rec.skipped)
