"""prune --max-drop D -v VAL: bisection on the target for the largest reduction within the budget, with
validate's gate evaluator; the best model is written, and none within the budget exits 1 (issue #14)."""
import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.cli import main

from .test_allocate import dead_half_model


def every_channel_is_a_class() -> onnx.ModelProto:
    """input[N,8,8,8] -> Conv(8, channel c reads only input channel c) -> Relu -> GAP -> Flatten ->
    Gemm(identity): class c is channel c, independent of the others, so no refit can stand in for a removed
    one and removing any channel changes the predictions of the samples it wins (~1/8 of them)."""
    rng = np.random.default_rng(0)
    w = np.zeros((8, 8, 3, 3))
    k = rng.standard_normal((3, 3))
    for c in range(8):
        w[c, c] = k  # the same filter: every class wins about as often, whichever channel goes
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
             (("w", w), ("b", np.zeros(8)), ("wf", np.eye(8)), ("bf", np.zeros(8)))]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "classes", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _files(tmp_path, model, shape, n=64):
    mp, dp = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(model, str(mp))
    x = np.random.default_rng(5).standard_normal((n, *shape)).astype(np.float32)
    np.savez(dp, input=x)
    return mp, dp, x


def test_gate_exits_1_with_the_measured_drop_when_even_the_smallest_step_breaks_the_budget(tmp_path):
    mp, dp, _ = _files(tmp_path, every_channel_is_a_class(), (8, 8, 8))
    out = tmp_path / "p.onnx"
    r = CliRunner().invoke(main, ["prune", str(mp), "-o", str(out), "--target-macs", "0.5", "--max-drop", "2",
                                  "--search-steps", "2", "-c", str(dp), "-v", str(dp), "--align", "1",
                                  "--min-channels", "1"])
    assert r.exit_code == 1, r.output
    last = r.output.strip().splitlines()[-1]
    assert "no pruned model is within --max-drop 2: even the smallest step (target_macs 0.875) measured a drop of" in last
    assert "agreement" in last and "nothing written" in last and not out.exists()
    tried = [line for line in r.output.splitlines() if line.startswith("  target_macs ")]
    assert [t.split()[1] for t in tried] == ["0.500", "0.750", "0.875"] and all("FAIL" in t for t in tried), r.output


def test_gate_writes_the_largest_reduction_within_the_budget(tmp_path):
    mp, dp, x = _files(tmp_path, dead_half_model(), (4, 6, 6))
    out = tmp_path / "p.onnx"
    r = CliRunner().invoke(main, ["prune", str(mp), "-o", str(out), "--target-macs", "0.5", "--max-drop", "0",
                                  "--gate", "cosine>=0.99999", "--search-steps", "2", "-c", str(dp), "-v", str(dp),
                                  "--align", "4", "--min-channels", "4"])
    assert r.exit_code == 0, r.output
    # 0.5 needs live channels (the outputs change: fail); 0.75 prunes only convB's dead half (exact: pass), and so
    # does 0.625 (one align step of 4 channels is 20% of the MACs: both reach 0.60x), which is no smaller
    tried = [line for line in r.output.splitlines() if line.startswith("  target_macs ")]
    assert [t.split()[1] for t in tried] == ["0.500", "0.750", "0.625"], r.output
    assert ["PASS" in t for t in tried] == [False, True, True] and all("-> 0.600x" in t for t in tried[1:])
    assert "kept target_macs 0.750 (the best within the budget)" in r.output and "PASS cosine" in r.output
    pruned = onnx.load(str(out))
    assert [list(i.dims) for i in pruned.graph.initializer if i.name == "wf"] == [[5, 8]]
    np.testing.assert_allclose(run_ort(pruned, {"input": x})[0], run_ort(dead_half_model(), {"input": x})[0],
                               rtol=1e-5, atol=1e-5)


def test_max_drop_needs_validation_data(tmp_path):
    mp, dp, _ = _files(tmp_path, dead_half_model(), (4, 6, 6))
    r = CliRunner().invoke(main, ["prune", str(mp), "-o", str(tmp_path / "p.onnx"), "--target-macs", "0.7",
                                  "--max-drop", "1", "-c", str(dp)])
    assert r.exit_code == 2 and "--max-drop searches against validation data; pass -v VAL" in r.output


def test_without_validation_the_measured_damage_is_printed_and_an_unreachable_target_warns(tmp_path):
    mp, dp, _ = _files(tmp_path, dead_half_model(), (4, 6, 6), n=16)
    r = CliRunner().invoke(main, ["prune", str(mp), "-o", str(tmp_path / "p.onnx"), "--target-macs", "0.7", "-c", str(dp),
                                  "--align", "4", "--min-channels", "4", "--step", "0"])  # one step: its own prediction
    assert r.exit_code == 0, r.output
    assert ("allocation sensitivity (l2) to 0.70x macs, reached 0.600x; output damage (auto) predicted 0, measured 0 "
            "on calibration data before refit") in r.stdout
    assert "quality on 16 calibration samples (classification vs the input model): agreement 100" in r.stdout
    r = CliRunner().invoke(main, ["prune", str(mp), "-o", str(tmp_path / "q.onnx"), "--target-macs", "0.05", "-c", str(dp), "--step", "0",
                                  "--align", "4", "--min-channels", "4"])
    assert r.exit_code == 0, r.output
    assert "warning: kept 0.150x macs, above the target 0.050x" in r.stdout  # 0.75 of each layer at most
    r = CliRunner().invoke(main, ["prune", str(mp), "-o", str(tmp_path / "s.onnx"), "--ratio", "0.5", "--score", "activation"])
    assert r.exit_code == 2 and "--criterion activation scores channels by their activations; pass calibration data" in r.output
