"""Reconstruction through the whole network: depthwise refit, BN recalibration, bias correction, sequential
coverage, bounded runs and the output guard, each on a tiny model with an exact expectation."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.config import PruneConfig, ReconstructConfig, from_dict, to_dict
from onnxcompress.passes.base import PassRecord
from onnxcompress.passes.prune import prune_model
from onnxcompress.passes.prune.reconstruct import LAMBDAS, Reconstruction, changed_tensors, find_layers, reconstruct

from .test_reconstruct import correlated, make_model, net


def _conv_chain(w0, wd, bd, w1, b1) -> onnx.ModelProto:
    """x[N,3,8,8] -> conv0 1x1 -> c0 -> depthwise 3x3 (no pads) -> d -> conv1 1x1 -> out"""
    inits = {"w0": w0, "wd": wd, "bd": bd, "w1": w1, "b1": b1}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0"),
             helper.make_node("Conv", ["c0", "wd", "bd"], ["d"], name="dw", group=wd.shape[0]),
             helper.make_node("Conv", ["d", "w1", "b1"], ["out"], name="conv1")]
    return make_model(nodes, {k: v.astype(np.float32) for k, v in inits.items()}, (1, 3, 8, 8))


def _depthwise_case(noise: float = 0.0):
    """Original with 5 channels between conv0 and conv1, channel 4 = 0.5 ch0 - 0.3 ch1 with the depthwise
    kernel those share, so conv1's loss of it is exactly recoverable; the pruned model keeps channels 0-3,
    which arrive scaled and shifted per channel (what a change upstream does) plus `noise` of a mix."""
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((5, 3, 1, 1))
    w0[4] = 0.5 * w0[0] - 0.3 * w0[1]
    wd = rng.standard_normal((5, 1, 3, 3))
    wd[1] = wd[4] = wd[0]
    bd, w1, b1 = rng.standard_normal(5), rng.standard_normal((2, 5, 1, 1)), rng.standard_normal(2)
    original = _conv_chain(w0, wd, bd, w1, b1)
    alpha, beta = np.array([2.0, 0.5, 1.5, 0.8]), np.array([0.3, -1.0, 0.5, 0.0])
    w0p = alpha[:, None, None, None] * w0[:4] + noise * rng.standard_normal((4, 3, 1, 1))
    pruned = _conv_chain(w0p, wd[:4], bd[:4], w1[:, :4], b1)
    pruned.graph.node[0].input.append("b0")  # the shift: a bias on conv0
    pruned.graph.initializer.append(numpy_helper.from_array(beta.astype(np.float32), "b0"))
    keep = np.array([True] * 4 + [False])
    return original, pruned, {"c0": keep, "d": keep}


def _x(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def test_depthwise_refit_recovers_an_exactly_recoverable_case():
    original, pruned, kept = _depthwise_case()
    calib = [{"x": _x(40, 0)}]
    rec = PassRecord("prune")
    out = reconstruct(original, pruned, kept, calib, rec, Reconstruction(lambdas=(0.0, *LAMBDAS)))
    onnx.checker.check_model(out, full_check=True)
    dw = next(n for n in out.graph.node if n.name == "dw")
    inits = {i.name: tuple(i.dims) for i in out.graph.initializer}
    assert inits[dw.input[1]] == (4, 1, 3, 3) and [a.i for a in dw.attribute if a.name == "group"] == [4]
    assert inits["w1"] == (2, 4, 1, 1)
    layers = rec.stats["reconstruct"]["layers"]
    assert layers["dw"]["kind"] == "depthwise Conv" and layers["dw"]["steps"] == ["refit"]
    assert layers["conv1"]["steps"] == ["refit"]
    test_x = _x(16, 7)  # unseen data: the refit found the exact weights, not a fit of the samples
    ref = run_ort(original, {"x": test_x})[0]
    before, after = run_ort(pruned, {"x": test_x})[0], run_ort(out, {"x": test_x})[0]
    assert np.abs(before - ref).max() > 1.0
    np.testing.assert_allclose(after, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    dw_ref = run_ort(_with_output(original, "d"), {"x": test_x})[1][:, :4]
    np.testing.assert_allclose(run_ort(_with_output(out, "d"), {"x": test_x})[1], dw_ref, rtol=1e-4, atol=1e-4)


def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return m


def test_depthwise_refit_off_is_skipped_with_reason():
    original, pruned, kept = _depthwise_case()
    rec = PassRecord("prune")
    reconstruct(original, pruned, kept, [{"x": _x(40, 0)}], rec, Reconstruction(depthwise=False))
    assert any("depthwise Conv is not refit" in s.reason and "dw" in s.target for s in rec.skipped), rec.skipped
    assert "refit" not in rec.stats["reconstruct"]["layers"]["dw"]["steps"]


def test_bn_recalibration_restores_per_channel_mean_and_var_on_the_calibration_data():
    original, pruned, kept = _depthwise_case(noise=0.3)  # not an affine map of the original: not recoverable
    x = _x(40, 0)
    rec = PassRecord("prune")
    out = reconstruct(original, pruned, kept, [{"x": x}], rec, Reconstruction(refit=False))
    assert rec.stats["reconstruct"]["layers"]["dw"]["steps"] == ["bn_recalibration"]
    assert rec.stats["reconstruct"]["layers"]["dw"]["recalibrated_channels"] == 4
    ref = run_ort(_with_output(original, "d"), {"x": x})[1][:, :4]
    before = run_ort(_with_output(pruned, "d"), {"x": x})[1]
    after = run_ort(_with_output(out, "d"), {"x": x})[1]
    axes = (0, 2, 3)
    assert np.abs(before.mean(axes) - ref.mean(axes)).max() > 0.1 and np.abs(before.std(axes) / ref.std(axes) - 1).max() > 0.1
    np.testing.assert_allclose(after.mean(axes), ref.mean(axes), atol=1e-4 * ref.std())
    np.testing.assert_allclose(after.std(axes), ref.std(axes), rtol=1e-4)
    assert np.abs(after - ref).max() > 1e-2  # matched statistics, not a copy of the original output


@pytest.mark.parametrize("op", ["Gemm", "Conv"])
def test_bias_correction_zeroes_the_per_channel_mean_error(op):
    """x -> layer1 -> Relu -> layer2 -> out; the pruned model lost layer1's channel 3 (it had a positive
    mean after the Relu, so layer2's outputs are shifted); bias correction alone puts the shift back."""
    rng = np.random.default_rng(2)
    w1, b1, w2 = rng.standard_normal((4, 5)), rng.standard_normal(4) + 1.0, rng.standard_normal((3, 4))
    spatial = (1, 1) if op == "Conv" else ()

    def model(w1, b1, w2):
        inits = {"w1": w1.reshape(*w1.shape, *spatial), "b1": b1, "w2": w2.reshape(*w2.shape, *spatial)}
        kw = {"transB": 1} if op == "Gemm" else {}
        nodes = [helper.make_node(op, ["x", "w1", "b1"], ["h"], name="l1", **kw), helper.make_node("Relu", ["h"], ["r"]),
                 helper.make_node(op, ["r", "w2"], ["out"], name="l2", **kw)]
        return make_model(nodes, {k: v.astype(np.float32) for k, v in inits.items()}, (1, 5, 4, 4) if spatial else (1, 5))

    original, pruned = model(w1, b1, w2), model(w1[:3], b1[:3], w2[:, :3])
    keep = np.array([True, True, True, False])
    x = rng.standard_normal((50, 5, 4, 4) if spatial else (50, 5)).astype(np.float32)
    rec = PassRecord("prune")
    out = reconstruct(original, pruned, {"h": keep, "r": keep}, [{"x": x}], rec,
                      Reconstruction(refit=False, bn_recalibration=False))
    assert rec.stats["reconstruct"]["layers"]["l2"]["steps"] == ["bias_correction"]
    assert len(next(n for n in out.graph.node if n.name == "l2").input) == 3  # it got a bias
    axes = (0, 2, 3) if spatial else (0,)
    ref = run_ort(original, {"x": x})[0]
    err_before = (run_ort(pruned, {"x": x})[0] - ref).mean(axes)
    err_after = (run_ort(out, {"x": x})[0] - ref).mean(axes)
    assert np.abs(err_before).max() > 0.1
    np.testing.assert_allclose(err_after, 0.0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("seed,ratio,sequential", [(0, 0.5, True), (1, 0.3, False), (2, 0.6, True)])
def test_reconstruction_never_makes_the_calibration_output_error_worse(seed, ratio, sequential):
    m = net(seed)
    calib = [{"x": correlated(48, seed)}]
    cfg = PruneConfig(enabled=True, ratio=ratio, align=1, min_channels=2,
                      reconstruction=ReconstructConfig(sequential=sequential))
    plain, _ = prune_model(m, PruneConfig(enabled=True, ratio=ratio, align=1, min_channels=2, reconstruct=False))
    refit, rec = prune_model(m, cfg, calibration=calib)
    ref = run_ort(m, calib[0])[0]
    err = [float(np.mean((run_ort(p, calib[0])[0] - ref) ** 2)) for p in (plain, refit)]
    assert err[1] <= err[0], err
    stats = rec.stats["reconstruct"]
    assert stats["output_error_after"] <= stats["output_error_before"]
    np.testing.assert_allclose(stats["output_error_after"] * float(np.mean(ref ** 2)), err[1], rtol=1e-3)


def test_sequential_covers_the_layers_whose_input_moved():
    """Only conv2 loses input channels; conv3 and the Gemm after it see moved inputs (through a Softmax
    over channels, which mixes them, and a Relu, which does not)."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((8, 4, 1, 1)), "w2": rng.standard_normal((6, 8, 1, 1)),
             "w3": rng.standard_normal((6, 6, 1, 1)), "wg": rng.standard_normal((6, 3))}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Softmax", ["c2"], ["s2"], axis=1),
             helper.make_node("Conv", ["s2", "w3"], ["c3"], name="conv3"), helper.make_node("Relu", ["c3"], ["r3"]),
             helper.make_node("GlobalAveragePool", ["r3"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "wg"], ["out"], name="fc")]
    m = make_model(nodes, {k: v.astype(np.float32) for k, v in inits.items()}, (1, 4, 6, 6), out_rank=2)
    keep = np.array([True] * 6 + [False] * 2)
    kept = {"c1": keep, "r1": keep}
    assert changed_tensors(m, kept) == {"c2", "s2", "c3", "r3", "g", "f", "out"}
    seq = find_layers(m, m, kept, PassRecord("p"), Reconstruction(sequential=True))
    assert [(la.name, la.lost_inputs, la.level) for la in seq] == [("conv2", True, 0), ("conv3", False, 1), ("fc", False, 2)]
    only = find_layers(m, m, kept, PassRecord("p"), Reconstruction())
    assert [la.name for la in only] == ["conv2"]


def test_runs_are_bounded_and_give_the_same_result():
    m = net(0)
    calib = [{"x": correlated(24, 0)}]
    small = ReconstructConfig(max_bytes=1)  # every run split down to one sample
    cfg = PruneConfig(enabled=True, ratio=0.5, align=1, min_channels=2)
    a, rec_a = prune_model(m, cfg, calibration=calib)
    b, rec_b = prune_model(m, PruneConfig(**{**cfg.__dict__, "reconstruction": small}), calibration=calib)
    assert rec_a.stats["reconstruct"]["runs"] == 1 and rec_b.stats["reconstruct"]["runs"] == 24
    x = correlated(8, 5)
    np.testing.assert_allclose(run_ort(b, {"x": x})[0], run_ort(a, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_reconstruct_config_round_trips():
    cfg = PruneConfig(reconstruction=ReconstructConfig(bn_recalibration=False, depthwise=False, max_rows=100))
    back = from_dict(PruneConfig, to_dict(cfg))
    assert back == cfg and Reconstruction.of(back.reconstruction).max_rows == 100
    assert not Reconstruction.of(back.reconstruction).depthwise


def test_a_depthwise_whose_kept_inputs_did_not_move_is_left_as_it_is():
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
             "wd": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
             "w2": rng.standard_normal((3, 8, 1, 1)).astype(np.float32)}
    m = make_model([helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1] * 4),
                    helper.make_node("Relu", ["c1"], ["r1"]),
                    helper.make_node("Conv", ["r1", "wd"], ["d"], name="dw", group=8, pads=[1] * 4),
                    helper.make_node("Conv", ["d", "w2"], ["out"], name="conv2")], inits, (1, 4, 10, 10))
    pruned, rec = prune_model(m, PruneConfig(enabled=True, ratio=0.5, align=1, min_channels=2),
                              calibration=[{"x": correlated(32, 0)}])
    assert any("already matches" in s.reason and "dw" in s.target for s in rec.skipped), rec.skipped
    layers = rec.stats["reconstruct"]["layers"]
    assert layers["dw"]["steps"] == [] and layers["conv2"]["steps"] == ["refit"]
    onnx.checker.check_model(pruned, full_check=True)


def test_output_errors_pairs_each_output_with_its_own_reference():
    """Two outputs of different shapes (a detector's scores and boxes): each error is against its own output."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxcompress.data import Dataset, feeds
    from onnxcompress.passes.prune.reconstruct import _output_errors

    def net(k: float) -> onnx.ModelProto:
        g = helper.make_graph(
            [helper.make_node("Mul", ["x", "k"], ["a"]), helper.make_node("ReduceSum", ["x"], ["b"], keepdims=0)],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
             helper.make_tensor_value_info("b", TensorProto.FLOAT, [])],
            [numpy_helper.from_array(np.array(k, np.float32), "k")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    original = net(1.0)
    runs = list(feeds(Dataset([{"x": x}], None, "t"), 2, None, original))
    before, after = _output_errors(original, net(2.0), net(1.0), runs)
    assert after == 0.0 and before == 1.0  # output a doubled: MSE = its mean square; b unchanged
