"""The graph view: producers, consumers, constants (also through Identity), copy-on-write edits, shapes."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.graph import GraphView, attr, node_name, set_attr


def two_readers():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Add", ["x", "c"], ["a"], name="add"), helper.make_node("Mul", ["a", "c"], ["m"]),
             helper.make_node("Identity", ["c"], ["ci"]), helper.make_node("Sub", ["m", "ci"], ["y"], name="sub")]
    c = numpy_helper.from_array(np.arange(3, dtype=np.float32), "c")
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], [c]))


def test_producers_consumers_and_constants():
    g = GraphView(two_readers())
    assert g.producer["a"].name == "add" and [n.op_type for n in g.consumers["c"]] == ["Add", "Mul", "Identity"]
    assert g.only_consumer("a").op_type == "Mul" and g.only_consumer("c") is None and g.only_consumer("y") is None
    assert np.array_equal(g.const("ci"), [0, 1, 2]) and g.const("a") is None and g.const("") is None
    assert g.shape("a") == [2, 3] and g.shape("c") == [3]


def test_set_input_copies_a_shared_initializer():
    m = two_readers()
    g = GraphView(m)
    add = m.graph.node[0]
    g.set_input(add, 1, np.full(3, 7, np.float32))
    g.write()
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    assert add.input[1] == "c_eq" and np.array_equal(inits["c_eq"], [7, 7, 7])
    assert np.array_equal(inits["c"], [0, 1, 2])  # the Mul and the Identity still read the old value
    onnx.checker.check_model(m)


def test_set_const_replaces_for_all_readers():
    m = two_readers()
    g = GraphView(m)
    g.set_const("c", np.ones(3, np.float32))
    g.write()
    assert np.array_equal(numpy_helper.to_array(m.graph.initializer[0]), [1, 1, 1]) and len(m.graph.initializer) == 1


def test_attr_and_names():
    n = helper.make_node("Gemm", ["a", "b"], ["out"], transB=1, alpha=0.5)
    assert attr(n, "transB", 0) == 1 and attr(n, "alpha", 1.0) == 0.5 and attr(n, "beta", 1.0) == 1.0
    set_attr(n, "transB", 0)
    assert attr(n, "transB") == 0 and len(n.attribute) == 2
    assert node_name(n) == "out" and node_name(helper.make_node("Relu", ["a"], ["b"], name="r")) == "r"
