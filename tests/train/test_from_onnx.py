"""ONNX -> torch -> ONNX: the interpreter computes what ORT computes, and the trained weights land in the same graph."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from conftest import run_ort  # noqa: E402

from onnxcompress.errors import InputError  # noqa: E402
from onnxcompress.train.from_onnx import max_error, param_name, to_torch, write_back  # noqa: E402

torch.set_num_threads(1)  # a shared, loaded machine: one thread avoids lock-step waits
nn = torch.nn


class MBNet(nn.Module):
    """A MobileNet/EfficientNet-style block stack: stem, depthwise, squeeze-excite, residual, head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.Hardsigmoid())
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.grouped = nn.Conv2d(16, 24, 3, 2, 1, groups=4)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x)
        y = y * self.se(y)
        x = x + self.pw(y)
        x = self.pool(torch.relu(self.grouped(x)))
        return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))


def _exported(tmp_path, fold: bool) -> onnx.ModelProto:
    net = MBNet().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so BN is not the identity
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    p = tmp_path / "mb.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 16, 16), str(p), dynamo=False, opset_version=14, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      do_constant_folding=fold, training=torch.onnx.TrainingMode.EVAL)
    return onnx.load(str(p))


@pytest.mark.parametrize("fold", [True, False])
def test_round_trip_is_numerically_equal_before_pruning(tmp_path, fold):
    model = _exported(tmp_path, fold)
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "Clip", "HardSwish", "HardSigmoid", "Mul", "Add", "MaxPool", "Gemm"} <= ops
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ref = run_ort(model, {"input": x})[0]
    module = to_torch(model)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    back = write_back(model, module)
    # same graph, same initializers bit for bit: ORT gives the very same numbers
    assert [n.op_type for n in back.graph.node] == [n.op_type for n in model.graph.node]
    assert [i.name for i in back.graph.initializer] == [i.name for i in model.graph.initializer]
    np.testing.assert_array_equal(run_ort(back, {"input": x})[0], ref)
    # the parameters are the graph's initializers, named after them
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(param_name(n.input[1]) in module.params for n in convs)


def test_trained_weights_are_written_back_and_match_torch(tmp_path):
    model = _exported(tmp_path, True)
    module = to_torch(model)
    x = torch.randn(4, 3, 16, 16)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    module(x).pow(2).mean().backward()
    opt.step()
    back = write_back(model, module)
    feeds = {"input": x.numpy()}
    before = run_ort(model, feeds)[0]
    after = run_ort(back, feeds)[0]
    assert np.abs(after - before).max() > 1e-3  # the step changed the function...
    assert max_error(back, module, feeds) < 1e-5  # ...and the written graph computes what torch computes
    onnx.checker.check_model(back, full_check=True)


def _helper_model(op_nodes, inits, in_shape, out_name, out_shape, opset=17):
    graph = helper.make_graph(op_nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def test_auto_pad_asymmetric_pads_bn_node_and_shape_arithmetic():
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 4, 2, 2)).astype(np.float32), "w2")
    bn = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in
          ((rng.uniform(0.5, 1.5, 4), "s"), (rng.standard_normal(4), "b"), (rng.standard_normal(4), "m"),
           (rng.uniform(0.5, 2, 4), "v"))]
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
    minus1 = numpy_helper.from_array(np.array([-1], np.int64), "minus1")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], epsilon=1e-3),
        helper.make_node("LeakyRelu", ["n"], ["r"], alpha=0.1),
        helper.make_node("Conv", ["r", "w2"], ["c2"], pads=[0, 0, 1, 1]),
        helper.make_node("AveragePool", ["c2"], ["p"], kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("Shape", ["p"], ["sh"]),
        helper.make_node("Gather", ["sh", "zero"], ["n0"], axis=0),
        helper.make_node("Concat", ["n0", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["p", "shape"], ["y"]),
    ]
    model = _helper_model(nodes, [w, w2, zero, minus1] + bn, ["N", 2, 7, 9], "y", ["N", 48])
    onnx.checker.check_model(model)
    x = rng.standard_normal((2, 2, 7, 9)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    with torch.no_grad():
        got = to_torch(model)(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_unsupported_op_is_one_input_error_naming_it():
    nodes = [helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->ij")]
    model = _helper_model(nodes, [], ["N", 4], "y", ["N", 4])
    with pytest.raises(InputError, match="Einsum"):
        to_torch(model)
