"""Least-squares reconstruction after structured pruning: im2col geometry, lower output error, CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.cli import main
from onnxcompress.config import PruneConfig
from onnxcompress.passes.base import PassRecord
from onnxcompress.passes.prune import prune_model
from onnxcompress.passes.prune.reconstruct import ConvLayer, GemmLayer, Normal, Weights, _decide, Reconstruction


def make_model(nodes, inits, x_shape, out_rank=None) -> onnx.ModelProto:
    out_shape = [None] * (out_rank or len(x_shape))
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape[1:]])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("shape,kernel,attrs", [
    ((2, 3, 9, 8), (3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 3, 9, 8), (3, 2), dict(strides=[2, 3], pads=[2, 0, 1, 1], dilations=[2, 1])),
    ((2, 3, 9, 8), (3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((2, 3, 9, 8), (2, 2), dict(auto_pad="SAME_LOWER")),
    ((2, 3, 9, 8), (1, 1), {}),
    ((2, 3, 11), (3,), dict(strides=[2], dilations=[2], pads=[2, 1])),
])
def test_im2col_rows_reproduce_the_conv(shape, kernel, attrs):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, shape[1], *kernel)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "w", "b"], ["out"], name="conv", **attrs)], {"w": w, "b": b}, shape)
    x = rng.standard_normal(shape).astype(np.float32)
    y = run_ort(model, {"x": x})[0]
    layer = ConvLayer(model.graph.node[0], "x", "out", None, int(np.prod(w.shape[1:])) + 1, 5, kernel=kernel)
    xr, yr, sample = layer.rows(x, y, 10**6, rng)
    assert xr.shape[:2] == (1, y.shape[0] * int(np.prod(y.shape[2:])))  # every output position
    np.testing.assert_allclose(xr @ layer.matrix(Weights(model)), yr, rtol=1e-4, atol=1e-4)
    sub_x, sub_y, sub_s = layer.rows(x, y, 7, rng)  # a random subset of positions, still aligned
    assert sub_x.shape[1] == 7 and set(sub_s) <= {0, 1}
    np.testing.assert_allclose(sub_x @ layer.matrix(Weights(model)), sub_y, rtol=1e-4, atol=1e-4)


def net(seed: int = 0) -> onnx.ModelProto:
    """x[N,4,10,10] -> conv 3x3 -> conv 3x3 stride 2 SAME -> conv 1x1 -> conv 3x3 dilation 2 -> GAP -> Flatten
    -> Gemm -> MatMul + Add -> MatMul -> out[N,5], Relu after each layer but the last."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]) if len(shape) > 2 else shape[0])).astype(np.float32)

    inits = {"w1": w(16, 4, 3, 3), "b1": w(16) * 0.1, "w2": w(16, 16, 3, 3), "b2": w(16) * 0.1, "w3": w(16, 16, 1, 1),
             "w4": w(16, 16, 3, 3), "b4": w(16) * 0.1, "wg": w(16, 16), "bg": w(16) * 0.1, "wm": w(16, 16),
             "bm": w(16) * 0.1, "wo": w(16, 5)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),  # no bias: reconstruction adds one
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("Conv", ["r3", "w4", "b4"], ["c4"], name="conv4", dilations=[2, 2], pads=[2] * 4),
        helper.make_node("Relu", ["c4"], ["r4"]),
        helper.make_node("GlobalAveragePool", ["r4"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["fc"], name="gemm", transB=1),
        helper.make_node("Relu", ["fc"], ["rf"]),
        helper.make_node("MatMul", ["rf", "wm"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "bm"], ["ma"]),
        helper.make_node("Relu", ["ma"], ["rm"]),
        helper.make_node("MatMul", ["rm", "wo"], ["out"], name="head"),
    ]
    return make_model(nodes, inits, (1, 4, 10, 10), out_rank=2)


def correlated(n: int, seed: int) -> np.ndarray:
    """Inputs from 2 smooth latent maps mixed into 4 channels, plus a little noise."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 2, 12, 12))
    z = (z[:, :, :-2, :-2] + z[:, :, 1:-1, 1:-1] + z[:, :, 2:, 2:]) / 3  # spatially correlated
    mix = np.array([[1.0, 0.5], [0.8, -0.6], [0.2, 1.0], [-0.7, 0.4]])
    return (np.einsum("cl,nlhw->nchw", mix, z) + 0.1 * rng.standard_normal((n, 4, 10, 10))).astype(np.float32)


def weight_shapes(model):
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


def test_reconstruction_lowers_the_output_error():
    m = net()
    calib = [{"x": correlated(64, seed)} for seed in range(4)]
    test_x = correlated(200, 99)
    cfg = PruneConfig(enabled=True, ratio=0.5, align=1, min_channels=2)
    plain, rec_plain = prune_model(m, cfg)
    refit, rec = prune_model(m, cfg, calibration=calib)
    onnx.checker.check_model(refit)
    assert weight_shapes(refit) == weight_shapes(plain) != weight_shapes(m)  # shapes unchanged by reconstruction
    ref = run_ort(m, {"x": test_x})[0]
    err_plain = float(np.mean((run_ort(plain, {"x": test_x})[0] - ref) ** 2))
    err_refit = float(np.mean((run_ort(refit, {"x": test_x})[0] - ref) ** 2))
    assert err_refit < 0.5 * err_plain, (err_refit, err_plain)
    stats = rec.stats["reconstruct"]
    assert set(stats["layers"]) == {"conv2", "conv3", "conv4", "gemm", "matmul", "head"}
    assert stats["samples"] == 256 and stats["levels"] == 6 and stats["refit"] >= 4
    assert stats["output_error_after"] <= stats["output_error_before"]
    for name, row in stats["layers"].items():
        assert row["mse_before"] >= 0 and row["mse_after"] >= 0 and row["held_out_rows"] > 0
        assert row["accepted"] == (row.get("refit_mse", np.inf) < row["mse_before"]) == ("refit" in row["steps"])
        assert bool(row["steps"]) == any(c.startswith(f"{name} (reconstructed") for c in rec.changed)
    conv3 = next(n for n in refit.graph.node if n.name == "conv3")
    if stats["layers"]["conv3"]["accepted"]:
        assert len(conv3.input) == 3  # the intercept became a bias
    assert "reconstruct" not in rec_plain.stats


def test_refit_that_does_not_help_on_held_out_rows_is_rejected():
    rng = np.random.default_rng(0)
    wg = rng.standard_normal((3, 4)).astype(np.float32)
    m = make_model([helper.make_node("Gemm", ["x", "wg"], ["out"], name="gemm", transB=1)], {"wg": wg}, (1, 4))
    layer = GemmLayer(m.graph.node[0], "x", "out", None, 5, 3)
    layer.start()
    x = np.concatenate([rng.standard_normal((50, 4)), np.ones((50, 1))], axis=1)
    prior = np.concatenate([wg.T, np.zeros((1, 3))]).astype(np.float64)
    layer.train.add(x, x @ (prior + 1.0))  # the fitting rows want other weights...
    layer.held.add(x, x @ prior)  # ...the held-out rows are reproduced exactly by the current ones
    rec = PassRecord("prune")
    row = _decide(layer, Weights(m), Reconstruction(bn_recalibration=False, bias_correction=False), rec)
    assert not row["accepted"] and row["mse_before"] < row["refit_mse"] and not row["steps"]
    assert any("does not lower" in s.reason for s in rec.skipped)
    np.testing.assert_array_equal(numpy_helper.to_array(m.graph.initializer[0]), wg)  # weights kept


def test_normal_equations_mse_matches_direct():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((40, 6)), rng.standard_normal((6, 3))
    y = x @ w + rng.standard_normal((40, 3))
    s = Normal.zeros(6, 3)
    s.add(x[:25], y[:25])
    s.add(x[25:], y[25:])
    assert s.rows == 40
    np.testing.assert_allclose(s.mse(w), np.mean((x @ w - y) ** 2), rtol=1e-9)


def test_cli_prune_with_calibration_reconstructs(tmp_path, tiny_model_path, tiny_data_path):
    out = tmp_path / "p.onnx"
    res = CliRunner().invoke(main, ["prune", str(tiny_model_path), "-o", str(out), "--ratio", "0.5", "--align", "1",
                                    "--min-channels", "2", "--calibration", str(tiny_data_path), "--json"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    layers = record["stats"]["reconstruct"]["layers"]
    assert set(layers) == {"conv2", "fc"} and record["stats"]["reconstruct"]["samples"] == 64
    assert all({"mse_before", "mse_after", "accepted"} <= set(r) for r in layers.values())
    onnx.checker.check_model(onnx.load(str(out)))
    res = CliRunner().invoke(main, ["prune", str(tiny_model_path), "-o", str(tmp_path / "q.onnx"), "--ratio", "0.5",
                                    "--align", "1", "--min-channels", "2", "-c", str(tiny_data_path)])
    assert res.exit_code == 0, res.output
    assert "reconstructed" in res.output and "held-out output MSE" in res.output
