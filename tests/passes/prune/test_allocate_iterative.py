"""Pruning to a target in steps, each refit against the original and the next measured on it (iterative.py)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.config import PruneConfig
from onnxcompress.data import Dataset
from onnxcompress.errors import ConfigError
from onnxcompress.passes.prune import prune_model
from onnxcompress.passes.prune.iterative import compose, iterative_removal, schedule
from onnxcompress.passes.prune.remove import own_macs


def three_convs() -> onnx.ModelProto:
    """input[N,3,8,8] -> conv a(16) -> Relu -> conv b(16) -> Relu -> conv c(16) -> Relu -> GAP -> Gemm(6)."""
    rng = np.random.default_rng(3)
    inits = {"wa": rng.standard_normal((16, 3, 3, 3)) * 0.4, "ba": rng.standard_normal(16) * 0.1,
             "wb": rng.standard_normal((16, 16, 3, 3)) * 0.15, "bb": rng.standard_normal(16) * 0.1,
             "wc": rng.standard_normal((16, 16, 3, 3)) * 0.15, "bc": rng.standard_normal(16) * 0.1,
             "wf": rng.standard_normal((6, 16)), "bf": rng.standard_normal(6) * 0.1}
    nodes = []
    prev = "input"
    for k in "abc":
        nodes += [helper.make_node("Conv", [prev, f"w{k}", f"b{k}"], [k], name=f"conv{k}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [k], [f"r{k}"], name=f"relu{k}")]
        prev = f"r{k}"
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def data(n=40, seed=1) -> Dataset:
    return Dataset([{"input": np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)}], None, "t")


def _init(m: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in m.graph.initializer if i.name == name)


def test_schedule_lands_on_the_target_in_equal_steps_of_at_most_step():
    assert schedule(0.7, 0.1) == [0.9, 0.8, 0.7]
    assert schedule(0.75, 0.1) == pytest.approx([1 - 0.25 / 3, 1 - 0.5 / 3, 0.75])
    assert schedule(0.7, 0.0) == [0.7] and schedule(0.7, 0.5) == [0.7] and schedule(1.0, 0.1) == [1.0]
    with pytest.raises(ConfigError):
        PruneConfig(target_macs=0.7, step=1.0).validate()


def test_compose_maps_a_second_removal_back_onto_the_original_positions():
    first = {"t": np.array([True, False, True, True, False, True])}  # kept 0, 2, 3, 5
    second = {"t": np.array([False, True, True, False]), "u": np.array([True, False])}  # of those: 2, 3
    out = compose(first, second)
    assert out["t"].tolist() == [False, False, True, True, False, False]
    assert out["u"].tolist() == [True, False]
    assert first["t"].tolist() == [True, False, True, True, False, True]  # inputs untouched


def test_steps_compose_exactly_without_refit():
    """Two steps with no refit: every pruned weight is the original's at the composed kept positions."""
    m = three_convs()
    cfg = PruneConfig(enabled=True, target_macs=0.6, step=0.2, align=1, min_channels=2, reconstruct=False)
    result, pruned = iterative_removal(m, cfg, 0.6, data(), own_macs, refit=False)
    steps = result.record.stats["steps"]
    assert [s["target"] for s in steps] == [0.8, 0.6]
    assert steps[0]["reached"] <= 0.8 + 1e-9 and result.record.stats["reached"] <= 0.6 + 1e-9
    assert own_macs(pruned) <= 0.6 * own_macs(m)
    kept = result.kept
    removed_somewhere = False
    for k, prev in (("a", None), ("b", "ra"), ("c", "rb")):
        w0, w1 = _init(m, f"w{k}"), _init(pruned, f"w{k}")
        rows = kept.get(k, np.ones(16, bool))
        cols = kept.get(prev, np.ones(w0.shape[1], bool)) if prev else np.ones(3, bool)
        np.testing.assert_array_equal(w1, w0[rows][:, cols])
        if prev is None:  # a consumer's bias also absorbs its removed inputs' constant share: only the stem's is a slice
            np.testing.assert_array_equal(_init(pruned, f"b{k}"), _init(m, f"b{k}")[rows])
        removed_somewhere |= not rows.all()
    assert removed_somewhere
    run_ort(pruned, {"input": np.zeros((2, 3, 8, 8), np.float32)})


def test_prune_model_in_steps_refits_each_step_against_the_original():
    m = three_convs()
    cal = data()
    cfg = PruneConfig(enabled=True, target_macs=0.6, step=0.2, align=1, min_channels=2)
    pruned, rec = prune_model(m, cfg, calibration=cal)
    steps = rec.stats["steps"]
    assert len(steps) == 2 and rec.stats["reached"] <= 0.6 + 1e-9
    assert rec.stats["macs_before"] == own_macs(m) and rec.stats["macs_after"] == own_macs(pruned)
    for s in steps:  # each step's reconstruction is matched to the original model and never worse
        assert s["output_error_after"] <= s["output_error_before"]
    x = {"input": np.random.default_rng(9).standard_normal((8, 3, 8, 8)).astype(np.float32)}
    ref = run_ort(m, x)[0]
    out = run_ort(pruned, x)[0]
    assert out.shape == ref.shape and np.isfinite(out).all()
    # step 0 (the default) is the one-shot path: no steps recorded
    _, one = prune_model(m, PruneConfig(enabled=True, target_macs=0.6, align=1, min_channels=2, step=0.0),
                         calibration=cal)
    assert "steps" not in one.stats


def test_the_layer_floor_holds_for_the_original_width_over_all_steps():
    """max_layer_fraction 0.75 of a 16-wide layer: at least 4 kept however many steps (not 0.25 of 0.25 ...)."""
    m = three_convs()
    cfg = PruneConfig(enabled=True, target_macs=0.05, step=0.35, align=1, min_channels=1, max_layer_fraction=0.75)
    pruned, rec = prune_model(m, cfg, calibration=data())
    widths = {k: _init(pruned, f"w{k}").shape[0] for k in "abc"}
    assert min(widths.values()) >= 4 and len(rec.stats["steps"]) > 2
    assert any(s.target == "target" and "above the target 0.050x" in s.reason for s in rec.skipped)
