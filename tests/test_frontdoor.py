"""The front door: models we never made (old opsets, Constant-node weights, float64 constants, initializers
listed as inputs, pre-quantized graphs, -inf scalars) come out canonical and numerically unchanged, or
are refused in one line."""
import io

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort, tiny_cnn
from onnxcompress.cli import main
from onnxcompress.config import PruneConfig
from onnxcompress.errors import InputError
from onnxcompress.frontdoor import canonicalize, facts, load, quantized_kind
from onnxcompress.io import load_model

torch = pytest.importorskip("torch")


class SmallCNN(torch.nn.Module):
    """Conv-BN-ReLU, a channel Split/Concat (C2f-like), a strided Conv, hardswish, GAP, Linear, Softmax."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        a, b = torch.split(x, [3, 5], 1)
        x = torch.cat([b, a], 1)
        x = torch.nn.functional.hardswish(self.c2(x))
        return torch.softmax(self.fc(x.mean((2, 3))), -1)


def torch_cnn(opset: int, **kw) -> onnx.ModelProto:
    f = io.BytesIO()
    torch.onnx.export(SmallCNN().eval(), torch.randn(1, 3, 16, 16), f, dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, **kw)
    return onnx.load_from_string(f.getvalue())


def weights_as_constants(m: onnx.ModelProto) -> onnx.ModelProto:
    """What some exporters write: every weight a Constant node, no initializers."""
    consts = [helper.make_node("Constant", [], [i.name], name=f"const_{i.name}", value=i) for i in m.graph.initializer]
    del m.graph.initializer[:]
    nodes = consts + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.checker.check_model(m)
    return m


def save(tmp_path, m, name="m.onnx"):
    p = tmp_path / name
    p.write_bytes(m.SerializeToString())
    return p


X = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)


@pytest.mark.parametrize("opset", [11, 12])
def test_old_opset_torch_export_is_upgraded_exactly(tmp_path, opset):
    src = torch_cnn(opset)
    m, rec = load(save(tmp_path, src))
    f = facts(m, rec)
    assert (f.opset, f.upgraded_from, f.per_channel_ok, f.quantized) == (13, opset, True, None)
    assert any("opset" in c for c in rec.changed)
    onnx.checker.check_model(m, full_check=True)
    np.testing.assert_allclose(run_ort(m, {"x": X})[0], run_ort(src, {"x": X})[0], rtol=1e-6, atol=1e-7)
    assert load_model(save(tmp_path, src, "again.onnx")).opset_import[0].version == 13  # io.load_model does it too


def test_opset_the_converter_gets_wrong_is_kept_with_the_reason(tmp_path):
    # opset-10 Resize 'linear' is converted to opset-13 Resize with other coordinates: not exact -> kept
    g = helper.make_graph(
        [helper.make_node("Resize", ["x", "s"], ["y"], name="up", mode="linear")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")])
    src = helper.make_model(g, opset_imports=[helper.make_opsetid("", 10)])
    src.ir_version = 6
    m, rec = load(save(tmp_path, src))
    f = facts(m, rec)
    assert f.opset == 10 and f.upgraded_from is None and not f.per_channel_ok
    assert "not exact" in f.opset_note and "per tensor" in f.opset_note
    assert [s.target for s in rec.skipped] == ["opset"]
    x = np.random.default_rng(1).standard_normal((1, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(m, {"x": x})[0], run_ort(src, {"x": x})[0])


def test_constant_node_weights_become_initializers_and_prune_sees_them(tmp_path):
    from onnxcompress.passes.prune import prune_model

    src = weights_as_constants(torch_cnn(13))
    raw_pruned, _ = prune_model(src, PruneConfig(enabled=True, ratio=0.5))
    assert raw_pruned.graph.node[0].op_type == "Constant" and not raw_pruned.graph.initializer  # blind to them
    m, rec = canonicalize(src)
    assert [n.output[0] for n in m.graph.node if n.op_type == "Constant"] == ["onnx::Split_15"]  # int sizes stay
    assert {"c2.weight", "fc.weight"} <= {i.name for i in m.graph.initializer}  # c1 is fused with the BN
    assert rec.stats["constants_to_initializers"] >= 6
    assert src.graph.node[0].op_type == "Constant"  # the input is untouched
    np.testing.assert_array_equal(run_ort(m, {"x": X})[0], run_ort(src, {"x": X})[0])
    pruned, prec = prune_model(m, PruneConfig(enabled=True, ratio=0.5))
    assert prec.stats["groups_removed"] > 0 and prec.stats["params_after"] < prec.stats["params_before"]
    assert np.isfinite(run_ort(pruned, {"x": X})[0]).all()


def _fp64_model(value=None):
    """float64 constants the ways exporters write them: Constant(double) -> Cast(float) -> Conv weight; a
    float64 initializer fed straight into a float Add (ORT rejects that); a Cast-to-double region."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 1, 3, 3)) / 3 if value is None else np.full((4, 1, 3, 3), value)
    nodes = [
        helper.make_node("Constant", [], ["w64"], name="w_const", value=numpy_helper.from_array(w, "w64")),
        helper.make_node("Cast", ["w64"], ["w32"], name="w_cast", to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "w32"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "b64"], ["a"], name="add_bias"),
        helper.make_node("Cast", ["a"], ["a64"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["a64", "k64"], ["m64"], name="double_mul"),
        helper.make_node("Cast", ["m64"], ["y"], name="to_float", to=TensorProto.FLOAT),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((1, 4, 1, 1)), "b64"),
             numpy_helper.from_array(np.array(1 / 3, np.float64), "k64")]
    g = helper.make_graph(nodes, "fp64", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_float64_constants_feeding_float32_math_become_float32():
    src = _fp64_model()
    m, rec = canonicalize(src)
    inits = {i.name: i for i in m.graph.initializer}
    assert inits["w32"].data_type == TensorProto.FLOAT and "w_cast" not in [n.name for n in m.graph.node]
    add = next(n for n in m.graph.node if n.name == "add_bias")
    assert inits[add.input[1]].data_type == TensorProto.FLOAT
    assert inits["k64"].data_type == TensorProto.DOUBLE  # the Cast-to-double region is left alone
    assert "double_mul" in [n.name for n in m.graph.node]
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(3).standard_normal((2, 1, 6, 6)).astype(np.float32)
    # the original does not load in ORT (float64 into a float Add); the reference is numpy in float64
    w = numpy_helper.to_array(src.graph.node[0].attribute[0].t).astype(np.float32)
    b = numpy_helper.to_array(src.graph.initializer[0]).astype(np.float32)
    conv = run_ort(_conv_only(w), {"x": x})[0]
    expected = ((conv + b).astype(np.float64) / 3).astype(np.float32)
    np.testing.assert_allclose(run_ort(m, {"x": x})[0], expected, rtol=1e-6, atol=1e-7)
    assert rec.stats["float64_cast"] == 2


def _conv_only(w):
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "c",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_float64_cast_of_a_runnable_model_is_checked_equal_with_ort():
    src = _fp64_model()
    src.graph.initializer[0].CopyFrom(numpy_helper.from_array(  # make the model valid: the bias is float32
        numpy_helper.to_array(src.graph.initializer[0]).astype(np.float32), "b64"))
    m, rec = canonicalize(src)
    assert rec.stats["float64_cast"] == 1 and not rec.skipped
    x = np.random.default_rng(4).standard_normal((2, 1, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(m, {"x": x})[0], run_ort(src, {"x": x})[0])


def test_float64_overflow_is_refused_naming_the_constant():
    with pytest.raises(InputError, match="'w64'.*beyond the float32 range"):
        canonicalize(_fp64_model(value=1e300))


def test_initializers_listed_as_inputs_are_constants(tmp_path):
    src = tiny_cnn()
    src.graph.input.extend(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in src.graph.initializer)
    m, rec = canonicalize(src)
    assert [i.name for i in m.graph.input] == ["input"]
    assert rec.stats["initializer_inputs_removed"] == 6
    x = np.ones((1, 1, 8, 8), np.float32)  # constant weights are pre-packed by ORT: 1-ulp differences
    np.testing.assert_allclose(run_ort(m, {"input": x})[0], run_ort(src, {"input": x})[0], rtol=1e-6, atol=1e-7)
    src.ir_version = 3  # IR 3 requires them as inputs: kept, recorded
    src.opset_import[0].version = 8
    m3, rec3 = canonicalize(src)
    assert len(m3.graph.input) == 7 and "IR version 3" in rec3.skipped[0].reason


def _running_max(mask_inf=False):
    """y = Max(-inf, x0, x1): the running Max's start value is a scalar -inf; an attention-like mask
    (non-scalar, -inf fill) before Softmax is also an identity, not a weight."""
    inits = [numpy_helper.from_array(np.array(-np.inf, np.float32), "start"),
             numpy_helper.from_array(np.triu(np.full((4, 4), -np.inf, np.float32), 1), "mask"),
             numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")]
    nodes = [helper.make_node("Split", ["x"], ["x0", "x1"], name="split", axis=0),
             helper.make_node("Max", ["start", "x0", "x1"], ["m"], name="running_max"),
             helper.make_node("MatMul", ["m", "w"], ["s"], name="mm"),
             helper.make_node("Add", ["s", "mask"], ["sm"], name="mask_add"),
             helper.make_node("Softmax", ["sm"], ["y"], name="softmax", axis=-1)]
    g = helper.make_graph(nodes, "rmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_scalar_minus_inf_start_and_mask_pass_inspect(tmp_path):
    p = save(tmp_path, _running_max())
    r = CliRunner().invoke(main, ["inspect", str(p)])
    assert r.exit_code == 0, r.output
    assert "MatMul 1" in r.output


def test_inf_in_a_layer_weight_and_nan_anywhere_are_refused(tmp_path):
    m = _running_max()
    m.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array(np.diag([1, np.inf, 1, 1]), np.float32), "w"))
    with pytest.raises(InputError, match="weight 'w' holds \\+-inf"):
        canonicalize(m)
    m = tiny_cnn()
    w = numpy_helper.to_array(m.graph.initializer[2]).copy()
    w.flat[5] = np.nan
    m.graph.initializer[2].CopyFrom(numpy_helper.from_array(w, "w2"))
    r = CliRunner().invoke(main, ["inspect", str(save(tmp_path, m))])
    assert r.exit_code == 2 and "weight 'w2' holds NaN" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


@pytest.fixture(scope="module")
def dyn_quantized(tmp_path_factory):
    """A CNN pre-quantized by ORT's quantize_dynamic (ConvInteger/MatMulInteger/DynamicQuantizeLinear)."""
    from onnxruntime.quantization import quantize_dynamic

    d = tmp_path_factory.mktemp("dq")
    onnx.save_model(torch_cnn(13), str(d / "fp32.onnx"))
    quantize_dynamic(str(d / "fp32.onnx"), str(d / "dq.onnx"))
    np.savez(d / "data.npz", x=X)
    return d


def test_pre_quantized_model_is_detected_and_left_alone(dyn_quantized):
    raw = onnx.load(str(dyn_quantized / "dq.onnx"))
    kind = quantized_kind(raw)
    assert kind.startswith("dynamic int8") and "DynamicQuantizeLinear x" in kind and "ConvInteger x2" in kind
    assert quantized_kind(torch_cnn(13)) is None
    m, rec = load(dyn_quantized / "dq.onnx")
    assert facts(m, rec).quantized == kind and rec.stats["quantized"] == kind
    np.testing.assert_array_equal(run_ort(m, {"x": X})[0], run_ort(raw, {"x": X})[0])


@pytest.mark.parametrize("argv", [
    ["inspect", "{m}"],
    ["validate", "{fp}", "{m}", "--data", "{data}", "--min-cosine", "0.9"],
    ["bench", "{fp}", "{m}", "--runs", "3", "--warmup", "1", "--no-memory"],
    ["prune", "{m}", "-o", "{out}", "--zeroed-only"],
])
def test_commands_that_must_work_on_pre_quantized_models(dyn_quantized, argv):
    d = dyn_quantized
    args = [a.format(m=d / "dq.onnx", fp=d / "fp32.onnx", data=d / "data.npz", out=d / "pruned.onnx") for a in argv]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    if argv[0] == "inspect":
        assert "already quantized: dynamic int8 (ConvInteger x2" in r.output
    if argv[0] == "prune":
        out = onnx.load(str(d / "pruned.onnx"))
        np.testing.assert_allclose(run_ort(out, {"x": X})[0], run_ort(d / "dq.onnx", {"x": X})[0], rtol=1e-5, atol=1e-6)
