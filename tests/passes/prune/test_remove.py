"""Channel removal on models built in-test: exact numerics and exact weight shapes after removal."""
import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import run_ort
from onnxcompress.passes.prune import remove_zeroed_channels

torch = pytest.importorskip("torch")
nn = torch.nn


def export(module, shape, tmp_path, name="m.onnx") -> onnx.ModelProto:
    module.eval()
    p = tmp_path / name
    torch.onnx.export(module, torch.randn(*shape), str(p), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["out"], dynamic_axes={"input": {0: "N"}})
    return onnx.load(str(p))


def kill(conv: nn.Conv2d, bn, rows, beta=-1.0):
    """Zero output channels `rows`: weights 0 and a BN shift that makes the channel's constant `beta`."""
    with torch.no_grad():
        conv.weight[rows] = 0
        if conv.bias is not None:
            conv.bias[rows] = 0
        if bn is not None:
            bn.bias[rows] = beta
            bn.running_mean[rows] = 0


def randomize_bn(module):
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def weight_shapes(model, ops=("Conv", "Gemm", "MatMul")):
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return [inits.get(n.input[1]) for n in model.graph.node if n.op_type in ops and n.input[1] in inits]


def assert_same_outputs(a, b, shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    ra, rb = run_ort(a, {"input": x})[0], run_ort(b, {"input": x})[0]
    scale = float(np.abs(ra).max())
    assert np.abs(ra - rb).max() <= 1e-5 * scale + 1e-6, (np.abs(ra - rb).max(), scale)


def cbr(cin, cout, k=3, s=1, g=1, relu=True):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = cbr(3, 16)
        self.b1c1, self.b1c2 = cbr(16, 16), cbr(16, 16, relu=False)
        self.d1, self.d2 = cbr(16, 32, s=2), cbr(32, 32, relu=False)
        self.short = cbr(16, 32, k=1, s=2, relu=False)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b1c2(self.b1c1(x)))
        x = torch.relu(self.d2(self.d1(x)) + self.short(x))
        return self.fc(x.mean((2, 3)))


def test_resnet_residual_groups(tmp_path):
    net = ResNetish()
    randomize_bn(net)
    kill(net.stem[0], net.stem[1], [1, 2])        # residual stream: must go in every branch...
    kill(net.b1c2[0], net.b1c2[1], [1, 2])        # ...so the block's second conv too
    kill(net.b1c2[0], net.b1c2[1], [9])           # only one branch of channel 9: kept
    kill(net.b1c1[0], net.b1c1[1], [0, 5, 7])     # inner channels
    kill(net.d1[0], net.d1[1], [3])
    kill(net.d2[0], net.d2[1], [4])
    kill(net.short[0], net.short[1], [4])
    m = export(net, (1, 3, 8, 8), tmp_path)
    before = weight_shapes(m)
    assert before == [(16, 3, 3, 3), (16, 16, 3, 3), (16, 16, 3, 3), (32, 16, 3, 3), (32, 32, 3, 3), (32, 16, 1, 1), (5, 32)]
    out, rec = remove_zeroed_channels(m)
    assert weight_shapes(out) == [(14, 3, 3, 3), (13, 14, 3, 3), (14, 13, 3, 3), (31, 14, 3, 3), (31, 31, 3, 3),
                                  (31, 14, 1, 1), (5, 31)]
    onnx.checker.check_model(out)
    assert_same_outputs(m, out, (3, 3, 8, 8))
    assert rec.stats["params_after"] < rec.stats["params_before"]
    assert rec.stats["macs_after"] < rec.stats["macs_before"]
    assert rec.stats["groups_removed"] == 2 + 3 + 1 + 1


class InvertedResidual(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = cbr(3, 8)
        self.expand = nn.Sequential(nn.Conv2d(8, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.project = cbr(32, 8, k=1, relu=False)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.fc(x.mean((2, 3)))


def test_mobilenet_depthwise_and_constant_folding(tmp_path):
    net = InvertedResidual()
    randomize_bn(net)
    kill(net.expand[0], net.expand[1], [1, 2, 3])  # expand dead -> depthwise sees 0 -> outputs its BN shift
    with torch.no_grad():
        net.dw[1].bias[[1, 2, 3]] = torch.tensor([0.7, 2.0, 9.0])  # non-zero constants (9 clips at 6)
        net.dw[0].weight[10] = 0  # a dead depthwise channel: its expand channel is no longer needed
        net.dw[1].bias[10] = 0.3
    m = export(net, (1, 3, 6, 6), tmp_path)
    out, rec = remove_zeroed_channels(m)
    assert weight_shapes(out) == [(8, 3, 3, 3), (28, 8, 1, 1), (28, 1, 3, 3), (8, 28, 1, 1), (4, 8)]
    dw = next(n for n in out.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute))
    assert next(a.i for a in dw.attribute if a.name == "group") == 28
    assert any("bias folded" in c for c in rec.changed)
    assert_same_outputs(m, out, (2, 3, 6, 6))


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(8, 6, 3, padding=1)
        self.b = nn.Conv2d(8, 10, 3, padding=1)
        self.c = nn.Conv2d(16, 4, 1)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(torch.cat([self.a(x), self.b(x)], 1))
        return self.c(y).mean((2, 3))


def test_concat_offsets(tmp_path):
    net = ConcatNet()
    with torch.no_grad():
        net.a.weight[2] = 0
        net.a.bias[2] = 0
        net.b.weight[[0, 9]] = 0
        net.b.bias[0] = -0.5  # relu -> 0
        net.b.bias[9] = 0.25  # relu -> 0.25, folded exactly into the 1x1 conv
    m = export(net, (1, 3, 5, 5), tmp_path)
    out, rec = remove_zeroed_channels(m)
    assert weight_shapes(out) == [(8, 3, 3, 3), (5, 8, 3, 3), (8, 8, 3, 3), (4, 13, 1, 1)]
    assert_same_outputs(m, out, (2, 3, 5, 5))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 4, 3)
        self.l1, self.l2, self.l3 = nn.Linear(36, 16), nn.Linear(16, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = torch.flatten(torch.relu(self.conv(x)), 1)
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))


def test_mlp_flatten_blocks(tmp_path):
    net = MLP()
    with torch.no_grad():
        net.conv.weight[1] = 0
        net.conv.bias[1] = 0.0
        net.l1.weight[[2, 5]] = 0
        net.l1.bias[[2, 5]] = torch.tensor([0.5, -2.0])  # 0.5 is carried and folded into l2's bias
        net.l2.weight[7] = 0
        net.l2.bias[7] = -1.0
    m = export(net, (1, 2, 5, 5), tmp_path)
    out, rec = remove_zeroed_channels(m)
    assert weight_shapes(out) == [(3, 2, 3, 3), (14, 27), (7, 14), (3, 7)]
    assert_same_outputs(m, out, (4, 2, 5, 5))


class FFN(nn.Module):
    def __init__(self, d=16, h=32):
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


def test_transformer_feed_forward(tmp_path):
    net = FFN()
    with torch.no_grad():
        net.up.weight[[0, 3, 4]] = 0
        net.up.bias[[0, 3, 4]] = torch.tensor([0.0, 1.5, -0.2])  # gelu(1.5), gelu(-0.2) fold into down's bias
    m = export(net, (2, 5, 16), tmp_path)
    out, rec = remove_zeroed_channels(m)
    assert weight_shapes(out, ("MatMul",)) == [(16, 29), (29, 16)]
    assert_same_outputs(m, out, (3, 5, 16))
    # the model dimension is added to the (untracked) input and reaches the graph output: never removed
    assert rec.stats["groups_blocked"] == 16 and rec.stats["groups_removed"] == 3


def test_channel_reaching_graph_output_is_kept(tmp_path):
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.weight[1] = 0
        conv.bias[1] = 0
    m = export(conv, (1, 3, 5, 5), tmp_path)
    out, rec = remove_zeroed_channels(m)
    assert weight_shapes(out) == [(4, 3, 3, 3)]
    assert rec.stats["groups_removed"] == 0
    assert any("graph output" in s.target for s in rec.skipped)


def test_unsupported_op_blocks_with_reason(tmp_path):
    net = ConcatNet()
    with torch.no_grad():
        net.stem.weight[[1, 4]] = 0
        net.stem.bias[[1, 4]] = 0
        net.a.weight[2] = 0
        net.a.bias[2] = 0
    m = export(net, (1, 3, 5, 5), tmp_path)
    # put an op from a custom domain between the stem and its consumers
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "Mystery", "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    out, rec = remove_zeroed_channels(m)
    assert weight_shapes(out)[:2] == [(8, 3, 3, 3), (5, 8, 3, 3)]  # stem kept, branch a still pruned
    assert any("Mystery" in s.reason for s in rec.skipped)


def test_constant_through_padded_conv_is_skipped_not_approximated(tmp_path):
    net = ConcatNet()
    with torch.no_grad():
        net.stem.weight[3] = 0
        net.stem.bias[3] = 0.5  # relu(0.5) feeds 3x3 convs with zero padding: not foldable exactly
    m = export(net, (1, 3, 5, 5), tmp_path)
    out, rec = remove_zeroed_channels(m)
    assert weight_shapes(out)[0] == (8, 3, 3, 3)
    assert any("cannot be folded exactly" in s.reason for s in rec.skipped)
    assert_same_outputs(m, out, (2, 3, 5, 5))


class PReluInstanceNorm(nn.Module):
    """Conv -> BN -> PReLU (per-channel slope) -> 1x1 Conv -> InstanceNorm (affine) -> ReLU -> 1x1 Conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.bn, self.act = nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.PReLU(12)
        self.c2, self.norm = nn.Conv2d(12, 10, 1), nn.InstanceNorm2d(10, affine=True)
        self.c3 = nn.Conv2d(10, 4, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.norm(self.c2(self.act(self.bn(self.c1(x))))))).mean((2, 3))


def test_prelu_slope_and_instance_norm_parameters_are_sliced(tmp_path):
    net = PReluInstanceNorm()
    randomize_bn(net)
    kill(net.c1, net.bn, [0, 5], beta=-0.8)  # constant -0.8 -> PReLU(slope) -> folded into c2's bias
    with torch.no_grad():
        net.act.weight.copy_(torch.linspace(0.1, 0.4, 12))
        net.norm.weight.copy_(torch.linspace(0.5, 1.5, 10))
        net.norm.bias.copy_(torch.linspace(-0.5, 0.5, 10))
        net.c2.weight[[2, 7]] = 0  # dead, zero bias: InstanceNorm outputs its shift B -> ReLU -> folded into c3
        net.c2.bias[[2, 7]] = 0
    m = export(net, (1, 3, 6, 6), tmp_path)
    assert {"PRelu", "InstanceNormalization"} <= {n.op_type for n in m.graph.node}
    out, rec = remove_zeroed_channels(m)
    assert weight_shapes(out) == [(10, 3, 3, 3), (8, 10, 1, 1), (4, 8, 1, 1)]
    inits = {i.name: tuple(i.dims) for i in out.graph.initializer}
    prelu = next(n for n in out.graph.node if n.op_type == "PRelu")
    inorm = next(n for n in out.graph.node if n.op_type == "InstanceNormalization")
    assert inits[prelu.input[1]] == (10, 1, 1) and inits[inorm.input[1]] == inits[inorm.input[2]] == (8,)
    assert sum("bias folded" in c for c in rec.changed) >= 2
    assert_same_outputs(m, out, (2, 3, 6, 6))
    assert_same_outputs(m, out, (5, 3, 6, 6), seed=1)
