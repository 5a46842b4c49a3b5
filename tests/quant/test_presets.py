import numpy as np
import onnx
import pytest

from conftest import run_ort, tiny_cnn
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.quant.presets import model_family
from onnxcompress.quant.qdq import quantize

torch = pytest.importorskip("torch")


def encoder(tmp_path, d=64, seq=16):
    torch.manual_seed(0)

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = torch.nn.Linear(8, d)
            layer = torch.nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True, activation="gelu")
            self.enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(d, 10)

        def forward(self, x):
            return self.head(self.enc(self.inp(x)).mean(1))

    p = tmp_path / "enc.onnx"
    torch.onnx.export(Enc().eval(), (torch.randn(1, seq, 8),), str(p), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}})
    return onnx.load(str(p))


def test_transformer_defaults_quantize_projections_only_and_keep_cosine(tmp_path):
    m = encoder(tmp_path)
    assert model_family(m) == "transformer" and model_family(tiny_cnn()) == "cnn"
    rng = np.random.default_rng(0)
    cal = Dataset([{"input": rng.standard_normal((64, 16, 8)).astype(np.float32)}], None, "t")
    q, rec = quantize(m, cal, QuantConfig(mode="static"))
    assert rec.stats["op_types"]["quantized"] == ["MatMul", "Gemm"] and "transformer" in rec.stats["op_types"]["why"]
    prod = {o: n.op_type for n in q.graph.node for o in n.output}
    fed_by_dq = {n.op_type for n in q.graph.node if any(prod.get(i) == "DequantizeLinear" for i in n.input)}
    # compute ops other than the projections read float tensors; data-movement ops may carry a DQ to them,
    # and Shape reads a DQ output so that Q stays the out-projection Gemm's only consumer (else no QGemm)
    assert rec.stats["shape_reads_moved"] == 4
    assert fed_by_dq - {"Reshape", "Transpose", "Shape"} <= {"MatMul", "Gemm"} and {"MatMul", "Gemm"} <= fed_by_dq
    assert not {"LayerNormalization", "Softmax", "Erf", "Add"} & fed_by_dq
    attention = rec.stats["op_types"]["kept_fp32_by_default"]
    assert len(attention) == 4  # Q.K^T and P.V in each of the 2 layers
    for n in q.graph.node:
        if n.name in attention:
            assert not any(prod.get(i) == "DequantizeLinear" for i in n.input)
    x = {"input": rng.standard_normal((32, 16, 8)).astype(np.float32)}
    ref, got = run_ort(m, x)[0], run_ort(q, x)[0]
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= 0.99
    fusion = rec.stats["fusion"]
    assert fusion["fused_share"] == 1.0 and fusion["float_islands"] == []  # every projection runs on an int8 kernel
    assert 0.5 < fusion["int8_mac_share"] < 1.0  # the attention MatMuls' MACs run in FP32, on purpose


def test_explicit_op_types_win(tmp_path):
    m = encoder(tmp_path)
    cal = Dataset([{"input": np.random.default_rng(0).standard_normal((16, 16, 8)).astype(np.float32)}], None, "t")
    _, rec = quantize(m, cal, QuantConfig(mode="static", op_types=("Gemm",)))
    assert rec.stats["op_types"]["quantized"] == ["Gemm"]


def hybrid(tmp_path, d=32, opset=17, swish=False):
    """A PP-OCR-style recognizer: conv stack (swish: x * sigmoid(x) after the first conv) -> [N, W, d] sequence ->
    TransformerEncoderLayer -> Linear (CTC)."""
    torch.manual_seed(0)

    class Hybrid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = torch.nn.Sequential(
                torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                torch.nn.Conv2d(16, d, 3, stride=(2, 1), padding=1), torch.nn.BatchNorm2d(d), torch.nn.ReLU(),
                torch.nn.Conv2d(d, d, 3, stride=(4, 1), padding=1), torch.nn.ReLU())
            self.enc = torch.nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True)
            self.head = torch.nn.Linear(d, 11)

        def forward(self, x):
            if swish:
                x = self.convs[0](x)
                x = x * torch.sigmoid(x)
                x = self.convs[1:](x)
            else:
                x = self.convs(x)
            return self.head(self.enc(x.flatten(2).transpose(1, 2)))

    p = tmp_path / "hybrid.onnx"
    torch.onnx.export(Hybrid().eval(), (torch.randn(1, 1, 8, 32),), str(p), dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}})
    return onnx.load(str(p))


def default_plan_of(m):
    from onnxcompress.quant.presets import default_plan

    return default_plan(m, ())


def test_hybrid_quantizes_convs_as_a_cnn_and_the_encoder_as_a_transformer(tmp_path):
    from onnxcompress.quant.audit import audit
    from onnxcompress.quant.presets import regions

    m = hybrid(tmp_path, swish=True)
    assert model_family(m) == "hybrid"
    region = regions(m)
    assert all(region[n.name] == "cnn" for n in m.graph.node if n.op_type == "Conv")
    assert all(region[n.name] == "transformer" for n in m.graph.node
               if n.op_type in ("LayerNormalization", "Softmax", "MatMul", "Gemm"))
    rng = np.random.default_rng(0)
    q, rec = quantize(m, Dataset([{"x": rng.standard_normal((32, 1, 8, 32)).astype(np.float32)}], None, "t"),
                      QuantConfig(mode="static"))
    ops = rec.stats["op_types"]
    assert ops["quantized"] == "per region" and ops["regions"]["cnn"] > 0 and "CNN + transformer" in ops["why"]
    rows = {r["node"]: r for r in audit(q)["nodes"]}
    convs = [n.name for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3 and all(rows[c]["kernel"] == "QLinearConv" for c in convs)  # was FP32 with one preset
    # the conv region's elementwise arithmetic (here the Add of ORT's conv bias is folded; the encoder's residual
    # Adds) reads float tensors: none of them is fed by a DequantizeLinear
    from onnxcompress.quant.presets import HYBRID_FLOAT_ARITHMETIC

    cnn_arith = {n.name for n in m.graph.node if region.get(n.name) == "cnn" and n.op_type in HYBRID_FLOAT_ARITHMETIC}
    assert {"Mul", "Sigmoid"} <= {n.op_type for n in m.graph.node if n.name in cnn_arith}
    assert cnn_arith <= set(default_plan_of(m).float_nodes)
    prod = {o: n.op_type for n in q.graph.node for o in n.output}
    fed_by_dq = {n.op_type for n in q.graph.node if any(prod.get(i) == "DequantizeLinear" for i in n.input)}
    assert not {"LayerNormalization", "Softmax"} & fed_by_dq  # the transformer defaults hold in the encoder
    attention = ops["kept_fp32_by_default"]
    assert len(attention) == 2 and all(rows[a]["kernel"] == "MatMul" for a in attention)
    projections = [n.name for n in m.graph.node if n.op_type in ("MatMul", "Gemm") and n.name not in attention]
    assert projections and all(rows[p]["int8"] for p in projections)
    x = {"x": rng.standard_normal((16, 1, 8, 32)).astype(np.float32)}
    ref, got = run_ort(m, x)[0], run_ort(q, x)[0]
    cos = (ref * got).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() > 0.995


def test_attention_is_a_softmax_over_two_activations_seen_through_reshapes():
    from onnx import TensorProto, helper, numpy_helper

    def graph(scores_from_weights: bool):
        w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
        cw = numpy_helper.from_array(np.ones((4, 1, 1, 1), np.float32), "cw")
        nodes = [helper.make_node("Conv", ["img", "cw"], ["c"], name="conv"),
                 helper.make_node("MatMul", ["x", "w" if scores_from_weights else "x"], ["s"], name="scores"),
                 helper.make_node("Flatten", ["s"], ["f"], name="flat"),  # PaddlePaddle's opset-11 Softmax
                 helper.make_node("Softmax", ["f"], ["y"], name="softmax")]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4]),
                                           helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 4, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4]),
                               helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4, 2, 2])], [w, cw])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])

    assert model_family(graph(scores_from_weights=False)) == "hybrid"  # Q.K^T -> Flatten -> Softmax
    assert model_family(graph(scores_from_weights=True)) == "cnn"  # a classifier head: MatMul(x, W) -> Softmax


def _elementwise_layernorm_mlp():
    """x -> MatMul -> LayerNorm written out in elementwise ops (mean, E[x^2] - mean^2, Max(0, .), + eps, Sqrt,
    Reciprocal, broadcast by Expand), as jax2tf/tf2onnx export it -> MatMul."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    inits = [c("w1", rng.standard_normal((16, 32)) * 0.3), c("w2", rng.standard_normal((32, 4)) * 0.3),
             c("inv_n", 1 / 32), c("zero", 0.0), c("eps", 1e-6),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"), numpy_helper.from_array(np.array([1, 32], np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="dense0"),
             helper.make_node("ReduceSum", ["h", "axes"], ["s"], name="sum"),
             helper.make_node("Mul", ["s", "inv_n"], ["mean"], name="mean"),
             helper.make_node("Mul", ["h", "h"], ["h2"], name="square"),
             helper.make_node("ReduceSum", ["h2", "axes"], ["s2"], name="sum2"),
             helper.make_node("Mul", ["s2", "inv_n"], ["ex2"], name="ex2"),
             helper.make_node("Mul", ["mean", "mean"], ["m2"], name="mean_sq"),
             helper.make_node("Sub", ["ex2", "m2"], ["var"], name="var"),
             helper.make_node("Max", ["zero", "var"], ["varc"], name="clamp"),
             helper.make_node("Expand", ["varc", "shape"], ["varb"], name="broadcast"),
             helper.make_node("Add", ["varb", "eps"], ["ve"], name="add_eps"),
             helper.make_node("Sqrt", ["ve"], ["sd"], name="rsqrt"),
             helper.make_node("Reciprocal", ["sd"], ["inv"], name="rsqrt_inv"),
             helper.make_node("Sub", ["h", "mean"], ["hc"], name="center"),
             helper.make_node("Mul", ["hc", "inv"], ["hn"], name="normalize"),
             helper.make_node("MatMul", ["hn", "w2"], ["y"], name="dense1")]
    g = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_layernorm_written_out_elementwise_is_a_transformer_anchor():
    from onnxcompress.quant.presets import decomposed_norms

    m = _elementwise_layernorm_mlp()
    assert decomposed_norms(m) == {"rsqrt"} and model_family(m) == "transformer"
    x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    q, rec = quantize(m, Dataset([{"x": x}], None, "t"), QuantConfig(mode="static"))
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert not quantized & {"s", "h2", "var", "hc", "inv"}  # the statistics chain stays float
    ref, got = run_ort(m, {"x": x})[0], run_ort(q, {"x": x})[0]
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.99


def stft_net(frames=8, hop=64, win=128, bins=17):
    """raw audio [N, samples] -> Unsqueeze -> Conv with fixed DFT kernels (real and imaginary rows, win taps,
    stride hop) -> Slice real / imag -> Pow 2 -> Add -> Sqrt -> learned 1x1 Conv -> output (silero-vad's STFT)."""
    from onnx import TensorProto, helper, numpy_helper

    n = np.arange(win)
    k = np.arange(bins)[:, None]
    basis = np.concatenate([np.cos(2 * np.pi * k * n / win), -np.sin(2 * np.pi * k * n / win)])[:, None, :]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(basis.astype(np.float32), "dft"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"), numpy_helper.from_array(np.array([bins], np.int64), "s1"),
             numpy_helper.from_array(np.array([2 * bins], np.int64), "s2"), numpy_helper.from_array(np.float32(2.0), "two"),
             numpy_helper.from_array(rng.standard_normal((8, bins, 1)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 1)).astype(np.float32) * 0.3, "w2")]
    nodes = [helper.make_node("Unsqueeze", ["x", "ax1"], ["u"], name="unsq"),
             helper.make_node("Conv", ["u", "dft"], ["spec"], name="stft", strides=[hop]),
             helper.make_node("Slice", ["spec", "s0", "s1", "ax1"], ["re"], name="re"),
             helper.make_node("Slice", ["spec", "s1", "s2", "ax1"], ["im"], name="im"),
             helper.make_node("Pow", ["re", "two"], ["re2"], name="pow_re"),
             helper.make_node("Pow", ["im", "two"], ["im2"], name="pow_im"),
             helper.make_node("Add", ["re2", "im2"], ["p"], name="power"),
             helper.make_node("Sqrt", ["p"], ["mag"], name="mag"),
             helper.make_node("Conv", ["mag", "w"], ["h"], name="learned"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="learned2")]
    samples = win + hop * (frames - 1)
    g = helper.make_graph(nodes, "stft", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", samples])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, frames])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, samples


def test_an_stft_front_end_stays_fp32_and_the_learned_layers_are_quantized():
    from onnxcompress.quant.audit import audit
    from onnxcompress.quant.presets import default_plan, spectral_front_end

    m, samples = stft_net()
    assert set(spectral_front_end(m)) == {"stft", "re", "im", "pow_re", "pow_im", "power", "mag", "learned"}
    assert set(default_plan(m, ()).spectral) == set(spectral_front_end(m))
    assert default_plan(m, ("Conv",)).spectral == ()  # --op-types: the user decides
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal((32, samples)) * np.logspace(-1, 0, 32)[:, None]).astype(np.float32)  # quiet to loud
    q, rec = quantize(m, Dataset([{"x": audio}], None, "t"), QuantConfig(mode="static"))
    roles = {r["node"]: r["role"] for r in audit(q)["nodes"]}
    assert roles == {"stft": "fp32", "learned": "fp32", "learned2": "int8"}
    assert any("spectral front end" in s.reason for s in rec.skipped)
    x = {"x": audio[::4]}
    ref, got = run_ort(m, x)[0], run_ort(q, x)[0]
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()
