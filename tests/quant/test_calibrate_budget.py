"""Calibration under a memory budget: the ranges do not depend on it, and they match ORT's tensors read in numpy."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from conftest import make_data, run_ort, tiny_cnn
from onnxcompress.data import Dataset, model_layout
from onnxcompress.runtime.session import with_outputs
from onnxcompress.quant.calibrate import calibrate, reduced_model, tensors_to_calibrate


def _data(m, n=20, seed=1):
    return Dataset([make_data(n, seed)], None, "t", model_layout(m))


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_ranges_with_a_tiny_budget_equal_those_with_a_huge_one(method):
    m = tiny_cnn()
    ds = _data(m)
    tiny = calibrate(m, ds, method, 99.9, samples=20, batch_size=8, memory_budget=1)  # batch 1, a pass per tensor
    huge = calibrate(m, ds, method, 99.9, samples=20, batch_size=8, memory_budget="4G")  # batch 8, one pass
    assert (tiny.batches, huge.batches) == (20, 3) and tiny.samples == huge.samples == 20
    assert tiny.ranges == huge.ranges and len(tiny.ranges) == 8


def test_minmax_ranges_equal_numpy_on_the_tensors_ort_computes():
    m = tiny_cnn()
    ds = _data(m, 12)
    names = [n for n in tensors_to_calibrate(m)]
    values = run_ort(with_outputs(m, names[1:]), {"input": ds.chunks[0]["input"]})
    want = {n: (min(float(v.min()), 0.0), max(float(v.max()), 0.0))
            for n, v in zip(names, [ds.chunks[0]["input"], *values])}
    assert calibrate(m, ds, samples=12, batch_size=5).ranges == want


def test_nonfinite_values_are_counted_and_ignored_the_same_at_any_budget():
    # Log(Relu(x)): -inf where x <= 0, read out on those runs; Neg keeps the -inf (+inf) downstream
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Log", ["r"], ["l"]),
                           helper.make_node("Neg", ["l"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.abs(np.random.default_rng(0).standard_normal((10, 4))).astype(np.float32) + 0.1
    x[3, 1] = x[7, 2] = -1.0  # two samples with one -inf each after Log
    ds = Dataset([{"x": x}], None, "t", model_layout(m))
    a = calibrate(m, ds, samples=10, batch_size=4, memory_budget=1)
    b = calibrate(m, ds, samples=10, batch_size=4, memory_budget="1G")
    assert a.ranges == b.ranges and a.nonfinite == b.nonfinite == {"l": 2, "y": 2}
    finite = np.log(x[x > 0])
    assert a.ranges["l"] == pytest.approx((min(float(finite.min()), 0.0), max(float(finite.max()), 0.0)), rel=1e-6)  # numpy's log vs ORT's: 1 ulp


def test_fixed_batch_model_padding_is_left_out_under_a_budget():
    fixed, dynamic = tiny_cnn(batch=4), tiny_cnn(batch="N")
    x = make_data(10)["input"]  # 10 samples: the last run of 4 is padded with 2 repeats
    a = calibrate(fixed, Dataset([{"input": x}], None, "t", model_layout(fixed)), "percentile", 90.0,
                  batch_size=8, memory_budget=1)
    b = calibrate(dynamic, Dataset([{"input": x}], None, "t", model_layout(dynamic)), "percentile", 90.0,
                  batch_size=8, memory_budget="1G")
    assert a.samples == b.samples == 10 and a.ranges == b.ranges


def test_reductions_follow_their_tensor_and_expose_scalars_only():
    m = tiny_cnn()
    names = [n for n in tensors_to_calibrate(m) if n != "input"]
    red, outs = reduced_model(m, names)
    assert {o.name for o in red.graph.output} == set(outs)  # an instrumented copy for ORT, never written
    ops = [(n.op_type, list(n.input)) for n in red.graph.node]
    for t in names:  # the three reductions come right after the node that makes t
        k = next(i for i, n in enumerate(red.graph.node) if t in n.output)
        assert [op for op, _ in ops[k + 1:k + 4]] == ["ReduceMin", "ReduceMax", "ReduceSum"]
    assert len(outs) == 3 * len(names)
    x = make_data(3)["input"]
    got = run_ort(red, {"input": x})
    assert all(v.shape == () for v in got)
    full = run_ort(with_outputs(m, names), {"input": x})
    np.testing.assert_array_equal([got[3 * i] for i in range(len(names))], [v.min() for v in full])
