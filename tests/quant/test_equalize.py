import dataclasses
import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.quant.equalize import equalize
from onnxcompress.quant.qdq import quantize

torch = pytest.importorskip("torch")
nn = torch.nn


def quant_config(**kw) -> QuantConfig:
    """The accuracy passes off (when the config has them): the test applies them itself."""
    off = {"equalize": False, "bias_correction": False, "smooth_quant": None}
    names = {f.name for f in dataclasses.fields(QuantConfig)}
    return QuantConfig(**{**{k: v for k, v in off.items() if k in names}, **kw})


class Block(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand -> act -> 3x3 depthwise -> act -> 1x1 project, + x."""

    def __init__(self, c: int, e: int, act):
        super().__init__()
        self.expand, self.a1 = nn.Conv2d(c, c * e, 1), act()
        self.dw, self.a2 = nn.Conv2d(c * e, c * e, 3, padding=1, groups=c * e), act()
        self.project = nn.Conv2d(c * e, c, 1)

    def forward(self, x):
        return x + self.project(self.a2(self.dw(self.a1(self.expand(x)))))


class MobileNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.b1 = Block(8, 4, nn.ReLU)
        self.b2 = Block(8, 4, nn.ReLU6)  # Clip(0, 6): not positively homogeneous
        self.head = nn.Sequential(nn.Conv2d(8, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.head(self.b2(self.b1(self.stem(x))))


def _unbalance(w1, b1, w2, channels, factor, in_dim=1):
    """Scale output channels of layer 1 by `factor` and the matching inputs of layer 2 by 1/factor."""
    w1.data[channels] *= factor
    b1.data[channels] *= factor
    idx = [slice(None)] * w2.ndim
    idx[in_dim] = channels
    w2.data[tuple(idx)] /= factor


def mobilenet_onnx() -> onnx.ModelProto:
    torch.manual_seed(0)
    net = MobileNetish().eval()
    with torch.no_grad():
        b = net.b1
        _unbalance(b.expand.weight, b.expand.bias, b.dw.weight, [0, 5, 9, 20], 50.0, in_dim=0)  # depthwise: row i
        _unbalance(b.dw.weight, b.dw.bias, b.project.weight, [3, 11, 17, 30], 50.0)
        l1, l2 = net.head[4], net.head[6]
        _unbalance(l1.weight, l1.bias, l2.weight, [1, 7, 15], 50.0)
    f = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 32, 32),), f, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


def images(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def mobilenet():
    return mobilenet_onnx()


def _close(ref, got, rtol=1e-5):
    assert np.abs(ref - got).max() <= rtol * np.abs(ref).max(), np.abs(ref - got).max() / np.abs(ref).max()


def test_equalization_is_exact_and_shrinks_range_spread(mobilenet):
    before_bytes = mobilenet.SerializeToString()
    eq, rec = equalize(mobilenet)
    assert mobilenet.SerializeToString() == before_bytes  # input untouched
    onnx.checker.check_model(eq)
    x = images(16, 3)
    _close(run_ort(mobilenet, {"input": x})[0], run_ort(eq, {"input": x})[0])
    pairs = [c.split(" -> ") for c in rec.changed]
    # b1 expand -> dw, b1 dw -> project, head conv -> GAP -> Flatten -> Linear, Linear -> Linear
    assert rec.stats["pairs"] == len(pairs) == 4
    ops = {n.name: n.op_type for n in eq.graph.node}
    assert sorted(ops[b] for _, b in pairs) == ["Conv", "Conv", "Gemm", "Gemm"]
    before, after = rec.stats["range_spread_before"], rec.stats["range_spread_after"]
    assert rec.stats["max_range_spread_before"] > 100  # the x50 channels
    assert rec.stats["max_range_spread_after"] < rec.stats["max_range_spread_before"] / 10
    assert all(after[a] < max(before[a] / 10, 2) for a, _ in pairs)  # the producers' x50 channels are gone
    assert max(after.values()) < 2
    clip = [s for s in rec.skipped if "Clip" in s.reason]
    assert len(clip) == 2 and all("not positively homogeneous" in s.reason for s in clip)  # b2: both ReLU6 pairs
    assert any("consumers" in s.reason for s in rec.skipped)  # stem feeds the block and the residual Add


def test_equalization_helps_per_tensor_int8(mobilenet):
    calib = Dataset([{"input": images(64, 1)}], None, "calib")
    cfg = quant_config(per_channel=False, calibration_samples=64)
    eq, _ = equalize(mobilenet)
    q_plain, _ = quantize(mobilenet, calib, cfg)
    q_eq, _ = quantize(eq, calib, cfg)
    x = images(64, 7)  # held out
    ref = run_ort(mobilenet, {"input": x})[0]
    mse_plain = float(np.mean((run_ort(q_plain, {"input": x}, optimize=True)[0] - ref) ** 2))
    mse_eq = float(np.mean((run_ort(q_eq, {"input": x}, optimize=True)[0] - ref) ** 2))
    assert mse_eq < 0.5 * mse_plain, (mse_eq, mse_plain)


def _const(name, a):
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def test_grouped_conv_pool_leaky_and_matmul_add_prelu_are_exact():
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s) * np.exp(rng.uniform(-3, 3, (s[0],) + (1,) * (len(s) - 1)))
    inits = [_const("w1", r(8, 2, 3, 3)), _const("b1", r(8)), _const("w2", r(6, 8, 1, 1)),
             _const("m1", r(5, 6).T), _const("c1", r(5)), _const("slope", [0.1, -0.2, 0.3, 0.5, 2.0]),
             _const("m2", r(5, 4)), _const("c2", r(4))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="g_conv", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["a"], ["b"], name="leaky", alpha=0.2),
        helper.make_node("MaxPool", ["b"], ["c"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["c", "w2"], ["d"], name="conv2"),  # no bias
        helper.make_node("Transpose", ["d"], ["e"], name="t", perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["e", "m1"], ["f"], name="mm1"),
        helper.make_node("Add", ["c1", "f"], ["g"], name="add1"),
        helper.make_node("PRelu", ["g", "slope"], ["h"], name="prelu"),
        helper.make_node("MatMul", ["h", "m2"], ["i"], name="mm2"),
        helper.make_node("Add", ["i", "c2"], ["y"], name="add2"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    eq, rec = equalize(m, iterations=2)
    assert rec.changed == ["g_conv -> conv2", "mm1 -> mm2"]
    x = rng.standard_normal((4, 4, 8, 8)).astype(np.float32)
    _close(run_ort(m, {"x": x})[0], run_ort(eq, {"x": x})[0])
    assert rec.stats["max_range_spread_after"] < rec.stats["max_range_spread_before"]


def test_batchnorm_between_layers_is_skipped_with_reason():
    rng = np.random.default_rng(1)
    inits = [_const("w1", rng.standard_normal((4, 3, 3, 3))), _const("w2", rng.standard_normal((4, 4, 1, 1))),
             _const("s", [1, 2, 3, 4]), _const("bb", [0, 1, 0, 1]), _const("mu", [0, 0, 1, 1]), _const("var", [1, 1, 2, 2])]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
             helper.make_node("BatchNormalization", ["a", "s", "bb", "mu", "var"], ["b"], name="bn"),
             helper.make_node("Relu", ["b"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    eq, rec = equalize(m)
    assert rec.changed == [] and rec.stats["pairs"] == 0
    assert any(s.target == "c1" and "BatchNormalization" in s.reason and "fold" in s.reason for s in rec.skipped)
    assert eq.SerializeToString() == m.SerializeToString()


def test_flatten_of_a_spatial_map_is_not_a_channel_pair():
    """Conv -> Relu -> Flatten -> Gemm over a 2x2 map: feature j is not channel j, so no pair."""
    rng = np.random.default_rng(2)
    inits = [_const("w1", rng.standard_normal((4, 3, 1, 1))), _const("w2", rng.standard_normal((5, 16)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    _, rec = equalize(m)
    assert rec.stats["pairs"] == 0 and "does not consume all 4 channels" in rec.skipped[0].reason
