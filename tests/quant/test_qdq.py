import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import make_data, run_ort, tiny_cnn
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.errors import InputError
from onnxcompress.quant.qdq import check_finite_scales, quantize
from onnxcompress.quant.target import choose


def data(n=64):
    return Dataset([{"input": make_data(n)["input"]}], None, "test")


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_qdq_structure_and_numerics(method):
    m = tiny_cnn()
    q, rec = quantize(m, data(), QuantConfig(calibration=method))
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("Conv") == 2 and ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 5
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    conv_w = [inits[n.input[0]] for n in q.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
              and inits[n.input[0]].ndim == 4]
    assert conv_w and all(w.dtype == np.int8 for w in conv_w)  # per-channel int8 weights
    assert rec.stats["calibration"]["method"] == method and rec.stats["calibration"]["samples"] == 64
    x = make_data(32, seed=5)["input"]
    ref, got = run_ort(m, {"input": x})[0], run_ort(q, {"input": x})[0]
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9


def test_exclude_keeps_node_in_fp32():
    q, rec = quantize(tiny_cnn(), data(), QuantConfig(exclude=("conv2",)))
    conv2 = next(n for n in q.graph.node if n.name == "conv2")
    inits = {i.name: i for i in q.graph.initializer}
    assert inits[conv2.input[1]].data_type == onnx.TensorProto.FLOAT  # float weight, no DequantizeLinear
    conv1 = next(n for n in q.graph.node if n.name == "conv1")
    assert conv1.input[1] not in inits  # conv1's weight comes from a DequantizeLinear
    assert any(s.target == "conv2" for s in rec.skipped)


def test_dynamic_mode_needs_no_data():
    q, rec = quantize(tiny_cnn(), None, QuantConfig(mode="dynamic"))
    assert rec.stats["mode"] == "dynamic"
    with pytest.raises(InputError, match="calibration data"):
        quantize(tiny_cnn(), None, QuantConfig(mode="static"))


def test_non_finite_scale_is_refused_with_tensor_name():
    q, _ = quantize(tiny_cnn(), data(), QuantConfig())
    dq = next(n for n in q.graph.node if n.op_type == "QuantizeLinear")
    scale = next(i for i in q.graph.initializer if i.name == dq.input[1])
    scale.CopyFrom(numpy_helper.from_array(np.array(np.inf, np.float32), scale.name))
    with pytest.raises(InputError, match=f"tensor '{dq.input[0]}'"):
        check_finite_scales(q)


@pytest.mark.parametrize("target, act, rr", [("vnni", "uint8", False), ("avx2", "uint8", True), ("arm", "int8", False)])
def test_target_choices(target, act, rr):
    c = choose(target)
    assert (c.activation_type, c.reduce_range, c.per_channel) == (act, rr, True)
    assert target in c.why


def test_equalization_defaults_on_for_per_tensor_weights_only():
    _, per_tensor = quantize(tiny_cnn(), data(), QuantConfig(per_channel=False))
    _, per_channel = quantize(tiny_cnn(), data(), QuantConfig())
    assert per_tensor.stats["equalize"]["pairs"] >= 1 and "equalize" not in per_channel.stats


def test_unused_cleanup_keeps_values_that_only_an_if_body_reads():
    """ORT's pre-processing turns a Constant that only an If body reads into an initializer; the Q/DQ cleanup
    after keeping nodes FP32 dropped it, and onnx.checker refused the model (silero-vad op15 with -v)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxcompress.quant.qdq import _drop_unused

    inner = helper.make_graph([helper.make_node("Add", ["x", "outer_c"], ["t"])], "then", [],
                              [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    g = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=other)], "g",
                          [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                          [numpy_helper.from_array(np.ones(2, np.float32), "outer_c"),
                           numpy_helper.from_array(np.ones(2, np.float32), "unused")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    _drop_unused(m)
    assert [i.name for i in m.graph.initializer] == ["outer_c"]
    onnx.checker.check_model(m, full_check=True)
    out = run_ort(m, {"cond": np.array(True), "x": np.zeros(2, np.float32)})[0]
    np.testing.assert_array_equal(out, np.ones(2, np.float32))
