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


def hybrid(tmp_path, d=32, opset=17):
    """A PP-OCR-style recognizer: conv stack -> [N, W, d] sequence -> TransformerEncoderLayer -> Linear (CTC)."""
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
            return self.head(self.enc(self.convs(x).flatten(2).transpose(1, 2)))

    p = tmp_path / "hybrid.onnx"
    torch.onnx.export(Hybrid().eval(), (torch.randn(1, 1, 8, 32),), str(p), dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}})
    return onnx.load(str(p))


def test_hybrid_quantizes_convs_as_a_cnn_and_the_encoder_as_a_transformer(tmp_path):
    from onnxcompress.quant.audit import audit
    from onnxcompress.quant.presets import regions

    m = hybrid(tmp_path)
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
