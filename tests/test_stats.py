import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper
import numpy as np

from conftest import tiny_cnn
from onnxcompress.stats import count_macs, count_params, model_stats


def test_tiny_cnn_exact_counts():
    m = tiny_cnn(channels=8)
    # params: w1 8*1*9 + b1 8 + w2 8*8*9 + b2 8 + wf 3*8 + bf 3
    assert count_params(m) == 72 + 8 + 576 + 8 + 24 + 3
    macs, unknown = count_macs(m)
    # conv1: 8x8x8 outputs * 1*9; conv2: 8x8x8 * 8*9; fc: 3 * 8
    assert unknown == []
    assert macs == 512 * 9 + 512 * 72 + 24
    s = model_stats(m)
    assert s["ops"]["Conv"] == 2 and s["nodes"] == 7


def test_matmul_with_batch_and_sequence():
    w = numpy_helper.from_array(np.zeros((16, 32), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 10, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 10, 32])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert count_macs(m) == (10 * 32 * 16, [])
    assert count_params(m) == 512


def test_depthwise_conv_macs():
    w = numpy_helper.from_array(np.zeros((4, 1, 3, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1])], "dw",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert count_macs(m) == (4 * 25 * 9, [])


def test_macs_of_an_exported_transformer_need_no_static_shapes(tmp_path):
    """Exported attention reshapes with targets computed from Shape ops: shape inference leaves
    [batch*tokens, d] unknown; the counter measures the shapes with one run instead of counting 1."""
    torch = pytest.importorskip("torch")

    from onnxcompress.stats import count_macs

    S, D, FF = 5, 16, 32
    torch.manual_seed(0)

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.TransformerEncoderLayer(D, 2, FF, dropout=0.0, batch_first=True)
            self.head = torch.nn.Linear(D, 10)

        def forward(self, x):
            return self.head(self.layer(x).mean(1))

    p = tmp_path / "enc.onnx"
    torch.onnx.export(Enc().eval(), (torch.randn(2, S, D),), str(p), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}})
    expected = S * D * 3 * D + 2 * S * S * D + S * D * D + 2 * S * D * FF + D * 10
    macs, unknown = count_macs(onnx.load(str(p)))
    assert (macs, unknown) == (expected, [])
