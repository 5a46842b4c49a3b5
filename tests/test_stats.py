import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper
import numpy as np

from conftest import tiny_cnn
from onnxcompress.errors import InputError
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


def fpn(seed: int = 0) -> onnx.ModelProto:
    """images[N,3,H,W] -> Conv(8, s2) -> Relu -> Conv(16, s2) -> Resize x2 -> Concat with the first -> Conv(4, 1x1).
    At H x W = 1 x 1 it cannot run (the Concat parts are 1x1 and 2x2): MACs need the real spatial size."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w1", (8, 3, 3, 3)), ("w2", (16, 8, 3, 3)), ("w3", (4, 24, 1, 1)))]
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    nodes = [helper.make_node("Conv", ["images", "w1"], ["c1"], name="c1", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="c2", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c2", "", "scales"], ["up"], mode="nearest"),
             helper.make_node("Concat", ["r1", "up"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w3"], ["out"], name="head")]
    g = helper.make_graph(nodes, "fpn", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, None, None])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def fpn_macs(h: int, w: int) -> int:
    h1, w1, h2, w2 = h // 2, w // 2, h // 4, w // 4
    return h1 * w1 * 8 * 27 + h2 * w2 * 16 * 72 + h1 * w1 * 4 * 24


def test_dynamic_spatial_dims_need_data_or_input_shapes():
    from onnxcompress.stats import ShapesNeeded, model_shapes, parse_input_shapes

    m = fpn()
    with pytest.raises(ShapesNeeded, match=r"--input-shape images:1x3xHxW"):
        count_macs(m)
    st = model_stats(m)
    assert st["macs"] is None and "images axis 2 (H)" in st["macs_note"] and st["params"] == 216 + 1152 + 96 + 4
    shapes = parse_input_shapes(["images:1x3x32x48"])
    assert shapes == {"images": (1, 3, 32, 48)}
    assert count_macs(m, model_shapes(m, input_shapes=shapes)) == (fpn_macs(32, 48), [])
    assert count_macs(m, model_shapes(m, input_shapes={"images": (4, 3, 32, 48)}))[0] == fpn_macs(32, 48)  # per sample
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 40)).astype(np.float32)  # the data's size, 2 samples
    assert model_stats(m, {"images": x})["macs"] == fpn_macs(64, 40)
    for bad in (["images:1x3x32"], ["image:1x3x32x32"], ["images:2x4x32x32"]):
        with pytest.raises(InputError):
            model_shapes(m, input_shapes=parse_input_shapes(bad))
    with pytest.raises(InputError, match="NAME:DIMS"):
        parse_input_shapes(["images:1x3xHx32"])


def test_probing_runs_leave_stderr_clean(capfd):
    """A run that fails while measuring shapes is one InputError, not ORT's C++ error lines on stderr."""
    from onnxcompress.stats import model_shapes

    capfd.readouterr()
    with pytest.raises(InputError, match="measure its shapes failed"):
        model_shapes(fpn(), {"images": np.zeros((1, 3, 1, 1), np.float32)})  # Concat of 1x1 and 2x2
    assert "onnxruntime" not in capfd.readouterr().err


def test_audit_shares_use_the_measured_shapes():
    from onnxcompress.quant.audit import audit

    m = fpn()
    blind = audit(m)
    assert blind["share_basis"] == "nodes" and blind["macs_total"] is None and "--input-shape" in blind["macs_note"]
    seen = audit(m, feed={"images": np.zeros((1, 3, 32, 32), np.float32)})
    assert seen["share_basis"] == "MACs" and seen["macs_total"] == fpn_macs(32, 32)
    assert {r["node"]: r["macs"] for r in seen["nodes"]} == {"c1": 16 * 16 * 8 * 27, "c2": 8 * 8 * 16 * 72,
                                                             "head": 16 * 16 * 4 * 24}
