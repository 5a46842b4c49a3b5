"""Split in channel pruning (issue 11): YOLOv8 C2f blocks (Conv -> split in two -> bottleneck on one half ->
concat of all parts -> Conv), split sizes as an input (opset >= 13, one constant shared by equal blocks) or an
attribute (opset < 13), and equal splits (no sizes, or `num_outputs` at opset 18)."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.cli import main
from onnxcompress.passes.prune import remove_zeroed_channels

from passes.prune.test_remove import randomize_bn

torch = pytest.importorskip("torch")
nn = torch.nn


class ConvBnSiLU(nn.Module):
    def __init__(self, c1, c2, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1, self.cv2 = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, c1, c2, n=1):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = ConvBnSiLU(c1, 2 * self.c)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))
        self.cv2 = ConvBnSiLU((2 + n) * self.c, c2)

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class Detectorish(nn.Module):
    """Two equal C2f blocks: the TorchScript exporter gives both Splits one shared sizes constant."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = ConvBnSiLU(3, 16, 3, 2)
        self.a, self.b = C2f(16, 16), C2f(16, 16)
        self.head = nn.Conv2d(16, 6, 1)

    def forward(self, x):
        return self.head(self.b(self.a(self.stem(x))))


def _kill(block: ConvBnSiLU, rows):
    """Dead output channels that output exactly 0 (SiLU(0) = 0): foldable through zero padding."""
    with torch.no_grad():
        block.conv.weight[rows] = 0
        block.bn.bias[rows] = 0
        block.bn.running_mean[rows] = 0


def _export(net, path, opset):
    torch.onnx.export(net.eval(), torch.randn(1, 3, 32, 32), str(path), dynamo=False, opset_version=opset,
                      input_names=["images"], output_names=["out"],
                      dynamic_axes={"images": {0: "N", 2: "H", 3: "W"}})
    return onnx.load(str(path))


def _split_sizes(model):
    """Per Split node: its sizes (input, initializer or Constant node, or attribute)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    inits.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"})
    out = []
    for n in model.graph.node:
        if n.op_type == "Split":
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            out.append(list(inits[n.input[1]]) if len(n.input) > 1 and n.input[1] else list(a.get("split", [])))
    return out


def _check_valid(path):
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(3).standard_normal((2, 3, 40, 48)).astype(np.float32)  # not the export size
    plain, opt = run_ort(path, {"images": x})[0], run_ort(path, {"images": x}, optimize=True)[0]
    assert plain.shape == (2, 6, 20, 24) and np.isfinite(plain).all()
    assert np.abs(plain - opt).max() <= 1e-4 * np.abs(plain).max()
    return m


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The detector with dead channels in both halves of block a's split, as opset 17 and 12 exports."""
    net = Detectorish()
    randomize_bn(net)
    _kill(net.a.cv1, [2, 5, 8 + 3])  # two in the first half, one in the half the bottleneck reads
    _kill(net.a.m[0].cv2, [3])  # ... whose residual Add partner is dead too
    _kill(net.a.m[0].cv1, [1, 7])  # the bottleneck's inner channels
    d = tmp_path_factory.mktemp("c2f")
    return {opset: (d / f"c2f{opset}.onnx", _export(net, d / f"c2f{opset}.onnx", opset)) for opset in (17, 12)}


@pytest.mark.parametrize("opset", [17, 12])
def test_c2f_zeroed_channels_removed_exactly(exported, opset):
    path, m = exported[opset]
    assert _split_sizes(m) == [[8, 8], [8, 8]]
    out, rec = remove_zeroed_channels(m)
    assert not any("failed" in s.reason for s in rec.skipped), rec.skipped
    assert _split_sizes(out) == [[6, 7], [8, 8]]  # block a lost 2 + 1 channels, block b (same constant) none
    if opset >= 13:
        shared = [n.input[1] for n in out.graph.node if n.op_type == "Split"]
        assert shared[0] != shared[1]
    else:
        assert all(len(n.input) == 1 for n in out.graph.node if n.op_type == "Split")  # still attributes
    w = {i.name: tuple(i.dims) for i in out.graph.initializer}
    convs = [w[n.input[1]] for n in out.graph.node if n.op_type == "Conv"]
    assert convs[1] == (13, 16, 1, 1) and convs[2] == (6, 7, 3, 3) and convs[3] == (7, 6, 3, 3)
    assert convs[4] == (16, 20, 1, 1)  # cv2 reads the concat of 6 + 7 + 7 channels
    p = path.with_name(f"zeroed{opset}.onnx")
    onnx.save(out, str(p))
    _check_valid(p)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 40)).astype(np.float32)
    ref, got = run_ort(m, {"images": x})[0], run_ort(out, {"images": x})[0]
    assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("opset", [17, 12])
def test_c2f_ratio_prune_from_the_cli_gives_a_valid_model(exported, opset):
    path, m = exported[opset]
    out = path.with_name(f"ratio{opset}.onnx")
    res = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--ratio", "0.3", "--align", "1",
                                    "--min-channels", "2"])
    assert res.exit_code == 0, res.output
    pruned = _check_valid(out)
    sizes = _split_sizes(pruned)
    assert sum(sizes[0]) + sum(sizes[1]) < 32  # channels really left the split tensors
    params = lambda model: sum(int(np.prod(i.dims)) for i in model.graph.initializer)  # noqa: E731
    assert params(pruned) < 0.8 * params(m)


def _equal_split_model(opset: int, parts: int, num_outputs: bool, c: int = 12) -> onnx.ModelProto:
    """x[N,4,5,5] -> Conv(c) -> Split(parts, no sizes) -> Conv(3) per part -> Sum; some channels of the
    first part are dead (zero weights and bias), so removing them makes the parts unequal."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((c, 4, 1, 1)).astype(np.float32)
    w[[0, 2]] = 0
    b = rng.standard_normal(c).astype(np.float32)
    b[[0, 2]] = 0
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    chunk = -(-c // parts)
    sizes = [chunk] * (parts - 1) + [c - chunk * (parts - 1)]
    outs, nodes = [f"s{i}" for i in range(parts)], [helper.make_node("Conv", ["x", "w", "b"], ["y"])]
    nodes.append(helper.make_node("Split", ["y"], outs, axis=1, **({"num_outputs": parts} if num_outputs else {})))
    for i, n in enumerate(sizes):
        inits.append(numpy_helper.from_array(rng.standard_normal((3, n, 1, 1)).astype(np.float32), f"v{i}"))
        nodes.append(helper.make_node("Conv", [outs[i], f"v{i}"], [f"z{i}"]))
    nodes.append(helper.make_node("Sum", [f"z{i}" for i in range(parts)], ["out"]))
    g = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 5, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("opset,parts,num_outputs,c", [(12, 2, False, 12), (13, 3, False, 12), (18, 2, True, 12),
                                                      (18, 5, True, 14)])  # 14 in 5: 3, 3, 3, 3, 2
def test_equal_split_gets_explicit_sizes(opset, parts, num_outputs, c):
    m = _equal_split_model(opset, parts, num_outputs, c)
    out, rec = remove_zeroed_channels(m)
    split = next(n for n in out.graph.node if n.op_type == "Split")
    assert not any(a.name == "num_outputs" for a in split.attribute)
    chunk = -(-c // parts)
    expected = [chunk - 2] + [chunk] * (parts - 2) + [c - chunk * (parts - 1)]
    assert _split_sizes(out) == [expected]
    assert (len(split.input) == 1) == (opset < 13)  # sizes as an attribute before opset 13, an input after
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(np.float32)
    ref, got = run_ort(m, {"x": x})[0], run_ort(out, {"x": x})[0]
    assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max()
