import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.quant import biascorr
from onnxcompress.quant.biascorr import bias_correct, with_outputs
from onnxcompress.quant.qdq import quantize


def quant_config(**kw) -> QuantConfig:
    off = {"equalize": False, "bias_correction": False, "smooth_quant": None}
    names = {f.name for f in dataclasses.fields(QuantConfig)}
    return QuantConfig(**{**{k: v for k, v in off.items() if k in names}, **kw})


def _c(name, a):
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def skewed_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu x3 -> GAP -> Gemm; each conv has one output channel x20..40, so per-tensor int8 weights
    round the other channels coarsely, and after ReLU (E[x] > 0) that rounding leaves a per-channel drift."""
    r = np.random.default_rng(seed)
    w1 = r.standard_normal((16, 3, 3, 3)) * 0.3
    w1[0] *= 40
    w2 = r.standard_normal((16, 16, 3, 3)) * 0.1
    w2[3] *= 40
    w3 = r.standard_normal((8, 16, 1, 1)) * 0.3
    w3[0] *= 20
    inits = [_c("w1", w1), _c("b1", r.standard_normal(16) * 0.1), _c("w2", w2), _c("b2", r.standard_normal(16) * 0.1),
             _c("w3", w3), _c("wf", r.standard_normal((10, 8))), _c("bf", np.zeros(10))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),  # no bias: one is created
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def images(n, seed):
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, 12, 12)).astype(np.float32)


@pytest.fixture(scope="module")
def setup():
    m = skewed_cnn()
    calib = Dataset([{"x": images(128, 1)}], None, "calib")
    q, _ = quantize(m, calib, quant_config(per_channel=False))
    return m, q, calib


def _errors(m, q, x, optimize):
    e = run_ort(m, {"x": x})[0].astype(np.float64) - run_ort(q, {"x": x}, optimize=optimize)[0]
    return float(np.linalg.norm(e.mean(0))), float(np.mean(e ** 2))


def _layer_mean_errors(m, q, x, names):
    """Per-channel mean of fp32 - qdq on each named conv/gemm's own output (pre-activation)."""
    ref = {n.name: n.output[0] for n in m.graph.node}
    got = {n.name: n.output[0] for n in q.graph.node}
    r = run_ort(with_outputs(m, [ref[n] for n in names]), {"x": x})
    g = run_ort(with_outputs(q, [got[n] for n in names]), {"x": x})
    return [np.moveaxis(a.astype(np.float64) - b, 1, -1).reshape(-1, a.shape[1]).mean(0) for a, b in zip(r, g)]


def test_bias_correction_lowers_mean_error_and_mse_on_held_out_data(setup):
    m, q, calib = setup
    m_bytes, q_bytes = m.SerializeToString(), q.SerializeToString()
    qc, rec = bias_correct(m, q, calib, samples=128)
    assert m.SerializeToString() == m_bytes and q.SerializeToString() == q_bytes  # inputs untouched
    onnx.checker.check_model(qc)
    assert [row["layer"] for row in rec.stats["layers"]] == ["conv1", "conv2", "conv3", "fc"]
    assert rec.stats["rounds"] == 4 and len(rec.changed) >= 3
    conv3 = next(n for n in qc.graph.node if n.name == "conv3")
    assert len(conv3.input) == 3 and conv3.input[2]  # a bias was created
    for row in rec.stats["layers"]:
        assert row["mse_after"] <= row["mse_before"]
    x = images(256, 2)  # held out: not the correction data
    for optimize in (False, True):  # simulated QDQ, and ORT's int8 kernels
        mean0, mse0 = _errors(m, q, x, optimize)
        mean1, mse1 = _errors(m, qc, x, optimize)
        assert mean1 < 0.25 * mean0, (optimize, mean0, mean1)
        assert mse1 < 0.5 * mse0, (optimize, mse0, mse1)


def test_layer_by_layer_scheme_does_not_double_count(setup, monkeypatch):
    m, q, calib = setup
    names = ["conv1", "conv2", "conv3", "fc"]
    x = calib.chunks[0]["x"]
    before = _layer_mean_errors(m, q, x, names)
    qc, _ = bias_correct(m, q, calib, samples=128)
    after = _layer_mean_errors(m, qc, x, names)
    for n, b, a in zip(names, before, after):  # every layer's drift is gone on the data it was measured on
        assert np.linalg.norm(a) < 0.2 * np.linalg.norm(b), n
    # correcting all layers from one measurement counts the upstream drift twice: clearly worse
    levels = biascorr._levels
    monkeypatch.setattr(biascorr, "_levels", lambda g, t: [[x for r in levels(g, t) for x in r]])
    qa, rec = bias_correct(m, q, calib, samples=128)
    assert rec.stats["rounds"] == 1
    held = images(256, 2)
    assert _errors(m, qa, held, True)[1] > 2 * _errors(m, qc, held, True)[1]
    assert np.linalg.norm(_layer_mean_errors(m, qa, x, names)[-1]) > 2 * np.linalg.norm(after[-1])


def test_matmul_add_bias_quantized_by_ort_is_requantized():
    r = np.random.default_rng(0)
    w1 = r.standard_normal((16, 32)) * 0.3
    w1[:, 0] *= 40
    w2 = r.standard_normal((32, 8)) * 0.2
    w2[:, 1] *= 30
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"], name="mm1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
             helper.make_node("MatMul", ["r1", "W2"], ["m2"], name="mm2"),
             helper.make_node("Add", ["b2", "m2"], ["y"], name="add2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8])],
                          [_c("W1", w1), _c("b1", r.standard_normal(32) * 0.1), _c("W2", w2),
                           _c("b2", r.standard_normal(8) * 0.1)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    data = lambda n, s: np.random.default_rng(s).uniform(0, 1, (n, 6, 16)).astype(np.float32)
    calib = Dataset([{"x": data(128, 1)}], None, "calib")
    q, _ = quantize(m, calib, quant_config(per_channel=False))
    qc, rec = bias_correct(m, q, calib, samples=128, batch_size=16)
    assert [row["layer"] for row in rec.stats["layers"]] == ["mm1", "mm2"] and rec.changed
    x = data(256, 2)
    ref = run_ort(m, {"x": x})[0].astype(np.float64)
    e0, e1 = ref - run_ort(q, {"x": x}, optimize=True)[0], ref - run_ort(qc, {"x": x}, optimize=True)[0]
    assert np.linalg.norm(e1.reshape(-1, 8).mean(0)) < 0.3 * np.linalg.norm(e0.reshape(-1, 8).mean(0))
    assert np.mean(e1 ** 2) < 0.8 * np.mean(e0 ** 2)


def test_single_sample_is_skipped_with_reason(setup):
    m, q, calib = setup
    _, rec = bias_correct(m, q, calib.take(1))
    assert rec.changed == [] and all("2 samples" in s.reason for s in rec.skipped) and len(rec.skipped) == 4


@pytest.mark.parametrize("dtype, per_channel", [(np.int32, True), (np.int32, False), (np.int8, False), (np.uint8, False)])
def test_bias_behind_dequantize_linear_is_requantized(dtype, per_channel):
    """QuantizeBias=True (int32, ORT's default) and 8-bit Add constants: new value written, dtype kept."""
    value = np.array([0.5, -1.0, 2.0, 0.25])
    if dtype == np.int32:
        scale = np.array([0.01, 0.02, 0.01, 0.005]) if per_channel else np.array(0.01)
        zp = np.zeros(scale.shape, dtype)
    else:
        scale, zp = (np.array(2 / 127), np.array(0, dtype)) if dtype == np.int8 else (np.array(3 / 255), np.array(85, dtype))
    q = np.round(value / scale).astype(np.int64) + zp
    inits = [numpy_helper.from_array(q.astype(dtype), "b_q"), _c("b_scale", scale), numpy_helper.from_array(zp, "b_zp"),
             _c("w", np.ones((4, 2, 1, 1)))]
    nodes = [helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], name="dq", axis=0),
             helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    graph = biascorr.Graph(m)
    conv = m.graph.node[1]
    np.testing.assert_allclose(biascorr._bias_value(graph, conv, 2), value, atol=np.max(scale) / 2)
    want = value + np.array([0.3, -0.7, 1.5, 0.01])  # 8-bit: the range grows, so the scale must change
    biascorr._set_bias(graph, conv, 2, want)
    out = graph.write()
    onnx.checker.check_model(out)
    new_scale = numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == m.graph.node[0].input[1]))
    b_q = next(i for i in out.graph.initializer if i.name == "b_q")
    assert b_q.data_type == numpy_helper.from_array(q.astype(dtype)).data_type  # same integer type
    np.testing.assert_allclose(biascorr._bias_value(graph, conv, 2), want, atol=np.max(new_scale) / 2 + 1e-7)
    x = np.ones((1, 2, 3, 3), np.float32)
    np.testing.assert_allclose(run_ort(out, {"x": x})[0][0, :, 1, 1], 2 + want, atol=np.max(new_scale) / 2 + 1e-6)
