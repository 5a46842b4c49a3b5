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
from onnxcompress.errors import ConfigError
from onnxcompress.quant.qdq import quantize
from onnxcompress.quant.smooth import smooth_quant

torch = pytest.importorskip("torch")

OUTLIERS = [3, 17, 40]


def quant_config(**kw) -> QuantConfig:
    off = {"equalize": False, "bias_correction": False, "smooth_quant": None}
    names = {f.name for f in dataclasses.fields(QuantConfig)}
    return QuantConfig(**{**{k: v for k, v in off.items() if k in names}, **kw})


class Wrap(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):  # explicit is_causal: the TorchScript exporter chokes on the traced default
        return self.layer(x, src_mask=None, is_causal=False)


def encoder_onnx(norm_first: bool, factor: float = 30.0) -> onnx.ModelProto:
    """A TransformerEncoderLayer with outlier activation channels: LayerNorm gamma/beta x30 on a few channels
    and the matching weight rows of the next Linear / in-projection / 30 (same function when norm_first)."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, dropout=0.0,
                                             batch_first=True, norm_first=norm_first).eval()
    with torch.no_grad():
        for norm, lin in ((layer.norm1, layer.self_attn.in_proj_weight), (layer.norm2, layer.linear1.weight)):
            norm.weight.copy_(1 + 0.2 * torch.randn(64))
            norm.bias.copy_(0.1 * torch.randn(64))
            if factor != 1:
                norm.weight[OUTLIERS] *= factor
                norm.bias[OUTLIERS] *= factor
                lin[:, OUTLIERS] /= factor
    f = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrap(layer), (torch.randn(2, 10, 64),), f, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


def tokens(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 10, 64)).astype(np.float32)


def _cos(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@pytest.fixture(scope="module")
def pre_norm():
    return encoder_onnx(norm_first=True)


def test_smoothing_is_exact_and_moves_outliers_into_weights(pre_norm):
    data = Dataset([{"x": tokens(64, 1)}], None, "calib")
    before = pre_norm.SerializeToString()
    sm, rec = smooth_quant(pre_norm, data, alpha=0.5, samples=64)
    assert pre_norm.SerializeToString() == before
    onnx.checker.check_model(sm)
    x = tokens(16, 3)
    ref, got = run_ort(pre_norm, {"x": x})[0], run_ort(sm, {"x": x})[0]
    assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max()
    groups = rec.stats["groups"]
    assert len(groups) == 2 and len(rec.changed) == 2  # norm1 -> QKV in-projection, norm2 -> linear1
    assert {g["producer"].split("/")[2] for g in groups} == {"norm1", "norm2"}
    for g in groups:
        assert g["act_spread_before"] > 20 and g["act_spread_after"] < g["act_spread_before"] / 4
    reasons = " ".join(s.reason for s in rec.skipped)
    assert "Relu" in reasons and "Reshape" in reasons  # linear2 and out_proj: no foldable producer


def test_smoothing_improves_int8_cosine(pre_norm):
    calib = Dataset([{"x": tokens(64, 1)}], None, "calib")
    sm, _ = smooth_quant(pre_norm, calib, alpha=0.5, samples=64)
    cfg = quant_config(calibration_samples=64)
    q_plain, _ = quantize(pre_norm, calib, cfg)
    q_smooth, _ = quantize(sm, calib, cfg)
    x = tokens(64, 7)  # held out
    ref = run_ort(pre_norm, {"x": x})[0]
    cos_plain = _cos(ref, run_ort(q_plain, {"x": x}, optimize=True)[0])
    cos_smooth = _cos(ref, run_ort(q_smooth, {"x": x}, optimize=True)[0])
    assert cos_smooth > cos_plain and 1 - cos_smooth < 0.7 * (1 - cos_plain), (cos_plain, cos_smooth)


def test_post_norm_layernorm_feeding_residual_is_skipped_and_model_unchanged():
    m = encoder_onnx(norm_first=False, factor=1.0)
    sm, rec = smooth_quant(m, Dataset([{"x": tokens(8, 1)}], None, "calib"), samples=8)
    x = tokens(4, 2)
    np.testing.assert_allclose(run_ort(sm, {"x": x})[0], run_ort(m, {"x": x})[0], rtol=0, atol=1e-5)
    assert any("graph input" in s.reason for s in rec.skipped)  # the in-projection reads x
    assert any("also feeds Add" in s.reason for s in rec.skipped)  # norm1 output: linear1 and the residual


def test_matmul_add_producer_and_shared_scale_initializer():
    """X from MatMul + Add and from Gemm (1/s into their columns and bias); LayerNorms sharing a scale."""
    rng = np.random.default_rng(0)
    c = lambda n, a: numpy_helper.from_array(np.asarray(a, np.float32), n)
    w0 = rng.standard_normal((8, 8))
    w0[:, 2] *= 40  # an outlier output channel
    inits = [c("w0", w0), c("b0", rng.standard_normal(8)), c("w1", rng.standard_normal((8, 4))),
             c("g", 1 + rng.random(8)), c("be", rng.random(8)), c("w2", rng.standard_normal((4, 8))),
             c("w3", rng.standard_normal((8, 3)))]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["m0"], name="mm0"),
             helper.make_node("Add", ["m0", "b0"], ["a0"], name="add0"),
             helper.make_node("Gemm", ["a0", "w1"], ["h"], name="gemm1"),
             helper.make_node("MatMul", ["h", "w2"], ["h2"], name="mm2"),
             helper.make_node("LayerNormalization", ["h2", "g", "be"], ["n1"], name="ln1", axis=-1),
             helper.make_node("LayerNormalization", ["n1", "g", "be"], ["n2"], name="ln2", axis=-1),
             helper.make_node("MatMul", ["n2", "w3"], ["y"], name="mm3")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = rng.standard_normal((32, 8)).astype(np.float32)
    sm, rec = smooth_quant(m, Dataset([{"x": x}], None, "d"), alpha=0.5, samples=32)
    # gemm1 is smoothed as a consumer (rows) and as a producer (columns); ln1 feeds no MatMul
    assert sorted(rec.changed) == ["gemm1 -> mm2", "ln2 -> mm3", "mm0 -> gemm1"]
    assert [s.target for s in rec.skipped] == ["mm0"] and "graph input" in rec.skipped[0].reason
    np.testing.assert_allclose(run_ort(sm, {"x": x})[0], run_ort(m, {"x": x})[0], rtol=1e-5, atol=1e-5)
    ln1 = next(n for n in sm.graph.node if n.name == "ln1")
    assert ln1.input[1] == "g"  # ln1 keeps the original shared scale; ln2 got its own copy
    with pytest.raises(ConfigError):
        smooth_quant(m, Dataset([{"x": x}], None, "d"), alpha=1.5)


def test_norm_exported_as_mul_add_absorbs_the_scales():
    """opset < 17 exports LayerNorm as primitive ops ending in Mul(gamma) -> Add(beta): fold 1/s there."""
    rng = np.random.default_rng(2)
    gamma = 1 + rng.random(16)
    gamma[[2, 9]] *= 30  # outlier channels
    c = lambda n, a: numpy_helper.from_array(np.asarray(a, np.float32), n)
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], name="mean", axes=[-1]),
             helper.make_node("Sub", ["x", "mu"], ["xc"], name="sub"),
             helper.make_node("Mul", ["gamma", "xc"], ["xg"], name="mul_gamma"),
             helper.make_node("Add", ["xg", "beta"], ["h"], name="add_beta"),
             helper.make_node("MatMul", ["h", "w"], ["q"], name="q_proj"),
             helper.make_node("MatMul", ["h", "w2"], ["k"], name="k_proj"),
             helper.make_node("Add", ["q", "k"], ["y"], name="sum")]
    inits = [c("gamma", gamma), c("beta", rng.standard_normal(16)), c("w", rng.standard_normal((16, 8))),
             c("w2", rng.standard_normal((16, 8)) * 0.1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    x = rng.standard_normal((32, 5, 16)).astype(np.float32)
    sm, rec = smooth_quant(m, Dataset([{"x": x}], None, "d"), samples=32)
    assert rec.changed == ["mul_gamma + add_beta -> q_proj, k_proj"]  # both projections share one s
    assert rec.stats["groups"][0]["act_spread_after"] < rec.stats["groups"][0]["act_spread_before"] / 3
    ref = run_ort(m, {"x": x})[0]
    np.testing.assert_allclose(run_ort(sm, {"x": x})[0], ref, rtol=0, atol=1e-5 * np.abs(ref).max())
