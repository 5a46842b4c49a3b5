"""Weights held by Constant nodes (issue 11: exporters that emit them instead of initializers): `prune`
through the CLI (io.load_model's front door) removes channels as it does for initializers."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from conftest import run_ort
from onnxcompress.cli import main

from .test_remove import ResNetish, kill, randomize_bn

torch = pytest.importorskip("torch")


def _as_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer becomes a Constant node at the front of the graph."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    consts = [helper.make_node("Constant", [], [i.name], value=i, name=f"const_{i.name}") for i in m.graph.initializer]
    nodes = consts + list(m.graph.node)
    del m.graph.initializer[:]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.fixture(scope="module")
def const_model(tmp_path_factory):
    net = ResNetish()
    randomize_bn(net)
    kill(net.stem[0], net.stem[1], [3], beta=0.0)  # stem channel 3 feeds the residual stream: its partners too
    kill(net.b1c2[0], net.b1c2[1], [3], beta=0.0)
    kill(net.d1[0], net.d1[1], [0, 5, 9])  # relu(-1) = 0: dead
    d = tmp_path_factory.mktemp("constw")
    torch.onnx.export(net.eval(), torch.randn(1, 3, 16, 16), str(d / "init.onnx"), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["out"], dynamic_axes={"input": {0: "N"}})
    m = _as_constant_nodes(onnx.load(str(d / "init.onnx")))
    assert not m.graph.initializer and sum(n.op_type == "Constant" for n in m.graph.node) >= 10
    onnx.save(m, str(d / "const.onnx"))
    return d / "const.onnx"


def _conv_widths(path):
    m = onnx.load(str(path))
    w = {i.name: tuple(i.dims) for i in m.graph.initializer}
    return [w[n.input[1]][0] for n in m.graph.node if n.op_type == "Conv"]


def test_zeroed_channels_in_constant_node_weights_are_removed_exactly(const_model, tmp_path):
    out = tmp_path / "zeroed.onnx"
    res = CliRunner().invoke(main, ["prune", str(const_model), "-o", str(out), "--zeroed-only"])
    assert res.exit_code == 0, res.output
    assert _conv_widths(out) == [15, 16, 15, 29, 32, 32]  # the residual stream (stem, b1c2) lost 1, d1 lost 3
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ref, got = run_ort(const_model, {"input": x})[0], run_ort(out, {"input": x})[0]
    assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max()


def test_ratio_prune_of_constant_node_weights_removes_channels(const_model, tmp_path):
    out = tmp_path / "ratio.onnx"
    res = CliRunner().invoke(main, ["prune", str(const_model), "-o", str(out), "--ratio", "0.3", "--align", "1",
                                    "--min-channels", "2", "--json"])
    assert res.exit_code == 0, res.output
    widths = _conv_widths(out)
    assert sum(widths) < 0.8 * (16 * 3 + 32 * 3)
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    y = run_ort(out, {"input": x})[0]
    assert y.shape == (2, 5) and np.isfinite(y).all()


def _paddle_style(tmp_path):
    """Paddle's export: weights in Constant nodes, a conv bias added as Add(conv, Reshape(bias, [1, C, 1, 1]))
    (computed at run time, so not a constant until folded). Channels 1 and 4 of the first conv are dead."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((6, 3, 3, 3)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    w1[[1, 4]], b1[[1, 4]] = 0, 0
    w2, b2 = rng.standard_normal((5, 6, 3, 3)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    fc = rng.standard_normal((5, 4)).astype(np.float32)
    const = lambda name, a: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(a, name))  # noqa: E731
    nodes = [const("w1", w1), const("b1", b1), const("w2", w2), const("b2", b2), const("fc", fc),
             const("shape1", np.array([1, 6, 1, 1], np.int64)), const("shape2", np.array([1, 5, 1, 1], np.int64)),
             helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["b1", "shape1"], ["rb1"]), helper.make_node("Add", ["c1", "rb1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["b2", "shape2"], ["rb2"]), helper.make_node("Add", ["c2", "rb2"], ["a2"]),
             helper.make_node("Relu", ["a2"], ["r2"]), helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["out"])]
    g = helper.make_graph(nodes, "paddleish", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 3, "h", "w"])],
                          [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [-1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    m.ir_version = 6
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(tmp_path / "paddleish.onnx"))
    return tmp_path / "paddleish.onnx"


def test_bias_reshaped_at_run_time_does_not_block_pruning(tmp_path):
    src = _paddle_style(tmp_path)
    r = CliRunner()
    exact = r.invoke(main, ["prune", str(src), "-o", str(tmp_path / "z.onnx"), "--zeroed-only"])
    assert exact.exit_code == 0, exact.output
    assert _conv_widths(tmp_path / "z.onnx") == [4, 5]
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 10)).astype(np.float32)
    ref, got = run_ort(src, {"x": x})[0], run_ort(tmp_path / "z.onnx", {"x": x})[0]
    assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max()
    ratio = r.invoke(main, ["prune", str(src), "-o", str(tmp_path / "r.onnx"), "--ratio", "0.5", "--align", "1",
                            "--min-channels", "1"])
    assert ratio.exit_code == 0, ratio.output
    # the second conv's weakest channels were selected, but their constant relu(bias) cannot be folded into the
    # bias-less MatMul: they are kept unchanged (not zeroed and left in place, which would cost accuracy for
    # nothing), so only the dead channels go and the output is the original's
    assert _conv_widths(tmp_path / "r.onnx") == [4, 5]
    assert "selected but kept: dead channel holds constant" in ratio.stdout
    got = run_ort(tmp_path / "r.onnx", {"x": x})[0]
    assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max()
