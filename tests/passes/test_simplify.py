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
