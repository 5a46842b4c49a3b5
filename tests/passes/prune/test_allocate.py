"""Pruning to a MAC target by measured sensitivity, and activation-based channel scores (issue #14)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.config import PruneConfig
from onnxcompress.data import Dataset
from onnxcompress.errors import ConfigError, InputError
from onnxcompress.passes.prune import Planner, prune_model
from onnxcompress.passes.prune.allocate import allocate
from onnxcompress.passes.prune.sensitivity import Curve, activation_scores, output_damage
from onnxcompress.passes.prune.structured import structured_removal


def _model(nodes, inits, x_shape, y_shape):
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *x_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *y_shape])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def dead_half_model() -> onnx.ModelProto:
    """input[N,4,6,6] -> convA(16) -> Relu -> convB(16) -> Relu -> GAP -> Gemm(5). The classifier reads
    none of convB's channels 8..15 (zero columns; their conv weights are also the weakest), so pruning
    them costs exactly nothing, while every channel of convA feeds all of convB's live channels."""
    rng = np.random.default_rng(0)
    wb = rng.standard_normal((16, 16, 3, 3)) * 0.2
    wb[8:] *= 0.1
    wf = rng.standard_normal((5, 16))
    wf[:, 8:] = 0
    inits = {"wa": rng.standard_normal((16, 4, 3, 3)) * 0.4, "ba": rng.standard_normal(16) * 0.1,
             "wb": wb, "bb": rng.standard_normal(16) * 0.1, "wf": wf, "bf": rng.standard_normal(5) * 0.1}
    nodes = [helper.make_node("Conv", ["input", "wa", "ba"], ["a"], name="convA", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"], name="reluA"),
             helper.make_node("Conv", ["ra", "wb", "bb"], ["b"], name="convB", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["rb"], name="reluB"),
             helper.make_node("GlobalAveragePool", ["rb"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    return _model(nodes, inits, [4, 6, 6], [5])


def data(shape, n=16, seed=1) -> Dataset:
    return Dataset([{"input": np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)}], None, "test")


def test_allocate_is_greedy_by_damage_per_mac_over_the_curves():
    layers = {"a": list(range(8)), "b": list(range(8, 16))}
    widths = {"a": 8, "b": 8}
    curves = {"a": Curve(8, (2, 4, 6), (1.0, 2.0, 3.0)), "b": Curve(8, (2, 4, 6), (0.01, 0.02, 0.5))}
    cost = {r: 10.0 for r in range(8)} | {r: 5.0 for r in range(8, 16)}
    counts, saved, damage = allocate(layers, widths, curves, cost, 20, align=1, min_channels=1)
    assert counts == {"b": 4} and saved == 20 and damage == pytest.approx(0.02)
    # b's steep end (0.048 per MAC) still beats a's first channel (0.05 per MAC); then a gives the rest
    counts, saved, damage = allocate(layers, widths, curves, cost, 40, align=1, min_channels=1)
    assert counts == {"b": 6, "a": 1} and saved == 40 and damage == pytest.approx(1.0)
    # the per-layer floor: b keeps half, a pays
    counts, saved, _ = allocate(layers, widths, curves, cost, 40, align=1, min_channels=1, max_fraction=0.5)
    assert counts == {"b": 4, "a": 2} and saved == 40
    # widths stay multiples of align (8 - k in {4, 0}: only k = 4 under the 0.75 floor)
    counts, _, _ = allocate(layers, widths, curves, cost, 5, align=4, min_channels=1)
    assert counts == {"b": 4}
    # a second round starts where the first stopped: saved and damage count from there
    counts, saved, damage = allocate(layers, widths, curves, cost, 10, align=1, min_channels=1, start={"b": 4})
    assert counts == {"b": 6} and saved == 10 and damage == pytest.approx(0.48)
    # unreachable: stops at the floors
    counts, saved, _ = allocate(layers, widths, curves, cost, 1e9, align=1, min_channels=1)
    assert counts == {"a": 6, "b": 6} and saved == 90


def test_curve_is_monotone_and_damage_measures():
    c = Curve(8, (2, 4), (0.5, 0.25))
    assert c.at(0) == 0 and c.at(1) == pytest.approx(0.25) and c.at(4) == 0.5 and c.at(8) == 0.5
    ref = [[np.array([[2.0, 0.0], [0.0, 2.0]], np.float32)]]
    assert output_damage(ref, ref) == 0
    p, q = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum(), np.array([0.5, 0.5])
    kl = float(np.sum(p * np.log(p / q)))
    assert output_damage(ref, [[np.zeros((2, 2), np.float32)]], "kl") == pytest.approx(kl, rel=1e-6)
    assert output_damage(ref, [[ref[0][0] * 0.5]], "mse") == pytest.approx(0.25)
    assert output_damage(ref, [[ref[0][0] * 0.5]], "cosine") == pytest.approx(0.0, abs=1e-7)


def test_sensitivity_protects_the_layer_whose_channels_matter_and_meets_the_mac_target():
    m = dead_half_model()
    cal = data([4, 6, 6])
    cfg = PruneConfig(enabled=True, target_macs=0.7, align=4, min_channels=4)
    planner = Planner(m, cfg, cal)
    # the measurement itself: convB's weakest 4 and 8 cost exactly nothing, the 12th channel does; convA always costs
    b, a = planner.curves["convB"], planner.curves["convA"]
    assert b.counts == (4, 8, 12) and b.damage[:2] == (0.0, 0.0) and b.damage[2] > 0
    assert a.counts == (4, 8, 12) and min(a.damage) > 0
    pruned, rec = prune_model(m, cfg, calibration=cal, planner=planner)
    s = rec.stats
    assert s["layers"]["convA"]["width_after"] == 16 and s["layers"]["convB"]["width_after"] == 8
    shapes = {i.name: list(i.dims) for i in pruned.graph.initializer}
    assert shapes["wa"] == [16, 4, 3, 3] and shapes["wb"][0] == 8 and shapes["wf"] == [5, 8]
    # 0.7x asked; convB loses 8 of 16 (one align step of 4 channels is 20% of the MACs): 0.60x, measured
    macs_b = 36 * 16 * 16 * 9
    total = 36 * 16 * 4 * 9 + macs_b + 80
    assert s["macs_before"] == total and s["macs_after"] == total - macs_b // 2 - 40
    assert 0.7 - 0.2 <= s["reached"] <= 0.7
    assert s["measured_damage"] == 0.0 and s["predicted_damage"] == 0.0
    x = cal.chunks[0]["input"]
    np.testing.assert_allclose(run_ort(pruned, {"input": x})[0], run_ort(m, {"input": x})[0], rtol=1e-5, atol=1e-5)


def test_two_rounds_measure_again_on_top_of_the_first_half():
    m = dead_half_model()
    cal = data([4, 6, 6])
    cfg = PruneConfig(enabled=True, target_macs=0.7, align=4, min_channels=4, sensitivity_rounds=2, reconstruct=False)
    planner = Planner(m, cfg, cal)
    pruned, rec = prune_model(m, cfg, calibration=cal, planner=planner)
    first, saved, d0, curves = planner._round
    # the first half (0.15 of the MACs) is convB's first 4 dead channels; on top of them its next 4 still cost nothing
    assert first == {"convB": 4} and d0 == 0.0 and curves["convB"].counts == (4, 8, 12) and curves["convB"].damage[:2] == (0.0, 0.0)
    assert rec.stats["layers"]["convA"]["width_after"] == 16 and rec.stats["layers"]["convB"]["width_after"] == 8
    assert rec.stats["measured_damage"] == 0.0


def test_global_allocation_meets_the_target_too_and_params_target():
    m = dead_half_model()
    cal = data([4, 6, 6])
    pruned, rec = prune_model(m, PruneConfig(enabled=True, target_macs=0.8, allocation="global", align=1,
                                             min_channels=1, reconstruct=False), calibration=cal)
    assert rec.stats["reached"] <= 0.8 and rec.stats["allocation"] == "global"
    assert run_ort(pruned, {"input": cal.chunks[0]["input"]})[0].shape == (16, 5)
    pruned, rec = prune_model(m, PruneConfig(enabled=True, target_params=0.75, align=4, min_channels=4), calibration=cal)
    assert rec.stats["target_of"] == "params" and rec.stats["params_after"] <= 0.75 * rec.stats["params_before"]
    assert rec.stats["layers"]["convA"]["width_after"] == 16


def test_target_needs_calibration_for_sensitivity_and_one_target():
    with pytest.raises(InputError, match="pass -c DATA"):
        prune_model(dead_half_model(), PruneConfig(enabled=True, target_macs=0.7))
    with pytest.raises(ConfigError):
        PruneConfig(target_macs=0.7, ratio=0.3).validate()
    with pytest.raises(ConfigError):
        PruneConfig(target_macs=1.5).validate()


def relu_dead_model() -> onnx.ModelProto:
    """input[N,2,5,5] -> conv1(8, 1x1) -> Relu -> conv2(4, 1x1). Channels 0..3 have the largest weights
    but a bias of -100: after the Relu they are always 0. Channels 4..7 are small and alive."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((8, 2, 1, 1))
    w1[:4] *= 5.0
    w1[4:] *= 0.5
    b1 = np.array([-100.0] * 4 + [0.1] * 4)
    inits = {"w1": w1, "b1": b1, "w2": rng.standard_normal((4, 8, 1, 1)), "b2": rng.standard_normal(4)}
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2")]
    return _model(nodes, inits, [2, 5, 5], [4, 5, 5])


@pytest.mark.parametrize("criterion", ["activation", "activation_l2"])
def test_activation_scoring_prunes_the_channels_that_never_fire(criterion):
    m = relu_dead_model()
    cal = data([2, 5, 5], n=8)
    r = structured_removal(m, 0.5, criterion, "layer", align=1, min_channels=1,
                           activation=lambda ctx: activation_scores(ctx, list(cal.feeds(8)), criterion))
    assert r.kept["c1"].tolist() == [False] * 4 + [True] * 4
    l2 = structured_removal(m, 0.5, "l2", "layer", align=1, min_channels=1)
    assert l2.kept["c1"].tolist() == [True] * 4 + [False] * 4  # the weight norm keeps the dead ones
    x = cal.chunks[0]["input"]
    np.testing.assert_allclose(run_ort(r.model, {"input": x})[0], run_ort(m, {"input": x})[0], rtol=1e-5, atol=1e-5)
    # through prune_model (the CLI's path), with the calibration data: the same channels
    pruned, _ = prune_model(m, PruneConfig(enabled=True, ratio=0.5, criterion=criterion, scope="layer", align=1,
                                           min_channels=1, reconstruct=False), calibration=cal)
    assert [list(i.dims) for i in pruned.graph.initializer if i.name == "w1"] == [[4, 2, 1, 1]]
    np.testing.assert_allclose(run_ort(pruned, {"input": x})[0], run_ort(m, {"input": x})[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="calibration data"):
        prune_model(m, PruneConfig(enabled=True, ratio=0.5, criterion=criterion))


def test_pipeline_prune_stage_passes_the_target_through(tmp_path):
    from onnxcompress.config import BenchConfig, PipelineConfig, QuantConfig, SimplifyConfig
    from onnxcompress.pipeline import convert

    mp, dp = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(dead_half_model(), str(mp))
    np.savez(dp, input=data([4, 6, 6]).chunks[0]["input"])
    cfg = PipelineConfig(prune=PruneConfig(enabled=True, target_macs=0.7, align=4, min_channels=4),
                         quant=QuantConfig(enabled=False), simplify=SimplifyConfig(enabled=False),
                         bench=BenchConfig(runs=2, warmup=1))
    report = convert(mp, tmp_path / "out", cfg, dp, dp)
    pruned = next(s for s in report["stages"] if s["name"] == "pruned")
    shapes = {i.name: list(i.dims) for i in onnx.load(str(tmp_path / "out" / pruned["path"].split("/")[-1])).graph.initializer}
    assert shapes["wa"][0] == 16 and shapes["wb"][0] == 8 and shapes["wf"] == [5, 8]


def test_latency_target_keeps_the_least_pruned_model_that_measured_within_it():
    m = dead_half_model()
    cal = data([4, 6, 6], n=4)
    pruned, rec = prune_model(m, PruneConfig(enabled=True, target_latency=0.9, allocation="global", align=4,
                                             min_channels=4, reconstruct=False, search_steps=2), calibration=cal)
    lat = rec.stats["latency"]
    tried = lat["tried"]
    assert 1 <= len(tried) <= 3 and tried[0]["macs"] == 0.9 and all(t["latency_ratio"] > 0 for t in tried)
    fits = [t["macs"] for t in tried if t["latency_ratio"] <= 0.9]
    if fits:  # timings decide which; the choice must follow them
        assert rec.stats["target"] == max(fits) and not any(s.target == "target" for s in rec.skipped)
    else:
        assert any(s.target == "target" and "was kept" in s.reason for s in rec.skipped)
    assert run_ort(pruned, {"input": cal.chunks[0]["input"]})[0].shape == (4, 5)
    with pytest.raises(ConfigError, match="one target"):
        PruneConfig(target_macs=0.7, target_latency=0.7).validate()
