import numpy as np
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.passes.simplify import simplify


def foldable_model():
    """y = x + (c1 * c2): the constant branch folds away; an Identity disappears."""
    c1 = numpy_helper.from_array(np.full((4,), 2.0, np.float32), "c1")
    c2 = numpy_helper.from_array(np.arange(4, dtype=np.float32), "c2")
    nodes = [helper.make_node("Mul", ["c1", "c2"], ["c"]),
             helper.make_node("Identity", ["x"], ["xi"]),
             helper.make_node("Add", ["xi", "c"], ["y"])]
    g = helper.make_graph(nodes, "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [c1, c2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_simplify_folds_and_keeps_numerics():
    m = foldable_model()
    s, rec = simplify(m)
    assert [n.op_type for n in s.graph.node] == ["Add"]
    assert rec.stats["nodes_before"] == 3 and rec.stats["nodes_after"] == 1
    assert rec.stats["removed_ops"] == {"Mul": 1, "Identity": 1}
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(m, {"x": x})[0], run_ort(s, {"x": x})[0])


def test_custom_op_is_kept_and_rest_simplified():
    m = foldable_model()
    m.graph.node.append(helper.make_node("Mystery", ["y"], ["z"], domain="com.example"))
    m.graph.output[0].name = "z"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    out, rec = simplify(m)
    assert [n.op_type for n in out.graph.node] == ["Add", "Mystery"]


def test_unfoldable_model_is_kept_without_crash():
    """Constants of incompatible shapes: onnxsim cannot fold them; the graph comes back unchanged."""
    a = numpy_helper.from_array(np.ones((3,), np.float32), "a")
    b = numpy_helper.from_array(np.ones((4,), np.float32), "b")
    nodes = [helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])]
    g = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [a, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    out, rec = simplify(m)
    assert [n.op_type for n in out.graph.node] == ["Add", "Add"]
    assert rec.stats["nodes_after"] == 2


def int8_weight_model():
    """Weights stored int8 and dequantized in the graph (Cast -> Mul by a scale): onnxsim would fold them
    into float32 initializers, 4x the size."""
    q = numpy_helper.from_array(np.random.default_rng(0).integers(-127, 127, (1024, 1024)).astype(np.int8), "wq")
    s = numpy_helper.from_array(np.array(0.01, np.float32), "ws")
    nodes = [helper.make_node("Cast", ["wq"], ["wf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["wf", "ws"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1024])], [q, s])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_folding_that_grows_the_model_is_refused_and_the_input_kept():
    from onnxcompress.frontdoor import quantized_kind

    m = int8_weight_model()
    assert quantized_kind(m).startswith("weight-only int8 (Cast of 1 int8")
    out, rec = simplify(m)
    assert out is m and out.ByteSize() < 1.1e6
    assert any("grow the model" in s.reason for s in rec.skipped)
    x = np.random.default_rng(1).standard_normal((3, 1024)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], run_ort(m, {"x": x})[0])


def test_quantize_refuses_weight_only_int8_in_one_line():
    import pytest

    from onnxcompress.config import QuantConfig
    from onnxcompress.errors import InputError
    from onnxcompress.quant.qdq import quantize

    with pytest.raises(InputError, match="already quantized: weight-only int8"):
        quantize(int8_weight_model(), None, QuantConfig(mode="dynamic"))
