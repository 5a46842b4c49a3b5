"""The weight-layer matcher on tiny onnx.helper models: what it recognises, and why it refuses."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.graph import GraphView, Mismatch, WeightLayer, match_layer


def model(nodes, inits, x_shape=(1, 4, 5, 5)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))


def match(m, i=0):
    return match_layer(m.graph.node[i], GraphView(m))


def test_conv_with_and_without_bias():
    w = np.zeros((8, 4, 3, 3))
    layer = match(model([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c")], {"w": w, "b": np.zeros(8)}))
    assert isinstance(layer, WeightLayer) and layer.kind == "conv"
    assert (layer.out_axis, layer.in_axis, layer.out_channels, layer.in_channels) == (0, 1, 8, 4)
    assert layer.bias[1] == 2 and not layer.depthwise and layer.out == "y"
    layer = match(model([helper.make_node("Conv", ["x", "w"], ["y"])], {"w": w}))
    assert layer.bias is None and layer.groups == 1


def test_depthwise_and_grouped_conv():
    dw = match(model([helper.make_node("Conv", ["x", "w"], ["y"], group=4)], {"w": np.zeros((4, 1, 3, 3))}))
    assert dw.depthwise and dw.groups == 4 and dw.in_channels == 4
    grouped = match(model([helper.make_node("Conv", ["x", "w"], ["y"], group=2)], {"w": np.zeros((8, 2, 3, 3))}))
    assert not grouped.depthwise and grouped.groups == 2 and grouped.in_channels == 4 and grouped.out_channels == 8


def test_gemm_trans_b():
    plain = match(model([helper.make_node("Gemm", ["x", "w", "c"], ["y"])], {"w": np.zeros((4, 6)), "c": np.zeros(6)},
                        (2, 4)))
    assert (plain.out_axis, plain.in_axis, plain.out_channels, plain.in_channels) == (1, 0, 6, 4)
    assert plain.bias[1] == 2 and plain.kind == "dense"
    t = match(model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], {"w": np.zeros((6, 4))}, (2, 4)))
    assert (t.out_axis, t.in_axis, t.out_channels, t.in_channels, t.bias) == (0, 1, 6, 4, None)
    assert t.in_out(np.zeros((6, 4))).shape == (4, 6)
    ta = match(model([helper.make_node("Gemm", ["x", "w"], ["y"], transA=1)], {"w": np.zeros((4, 6))}, (4, 2)))
    assert isinstance(ta, Mismatch) and "transA" in ta.reason and not ta


def test_matmul_add_bias():
    m = model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Add", ["b", "h"], ["y"])],
              {"w": np.zeros((4, 6)), "b": np.zeros(6)}, (2, 3, 4))
    layer = match(m)
    assert layer.bias == (m.graph.node[1], 0) and layer.out == "y" and (layer.out_axis, layer.in_axis) == (1, 0)


def test_matmul_without_constant_weight_fails_with_reason():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["x", "r"], ["y"], name="mm")]
    miss = match(model(nodes, {}, (4, 4)), 1)
    assert isinstance(miss, Mismatch) and miss.target == "mm" and "constant" in miss.reason
    assert isinstance(match(model(nodes, {}, (4, 4)), 0), Mismatch)


def test_conv_bias_not_constant():
    nodes = [helper.make_node("ReduceMean", ["x"], ["b"], axes=[0, 2, 3], keepdims=0),
             helper.make_node("Conv", ["x", "w", "b"], ["y"])]
    miss = match(model(nodes, {"w": np.zeros((4, 4, 1, 1))}), 1)
    assert isinstance(miss, Mismatch) and "bias" in miss.reason and miss.target == "y"
