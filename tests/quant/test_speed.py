"""Never slower without saying so: the speed check after quantizing, the slow-layer finder, and auto
mode's decisions. Latencies are injected where a decision is checked (no absolute times asserted)."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import make_data, run_ort, tiny_cnn
from test_fallback import ds, outlier_mlp
from onnxcompress.cli import main
from onnxcompress.cli.quant import _summary
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.quant.audit import audit, slow_layers
from onnxcompress.quant.search import candidate_sets, conv_share, decide, quantize_model


def island_net(c=8):
    """conv0 -> conv1 -> conv2, and conv1's output is also divided by a computed tensor (exp(x)): a Div by a
    computed tensor reads the float tensor (quantize's zero-sensitive rule), so conv1's output has a float reader
    besides its QuantizeLinear and ORT cannot fuse conv1 into QLinearConv: DQ -> float Conv -> Q, a float
    island, by construction. (Other float readers of an int8 Conv read its DequantizeLinear:
    test_audit.test_excluded_node_runs_in_fp32.)"""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.2, f"w{i}") for i in range(3)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Exp", ["x"], ["e"], name="exp"),
             helper.make_node("Div", ["c1", "e"], ["r"], name="div")]
    g = helper.make_graph(nodes, "island", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, 8, 8]),
                           helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", c, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _island_data(n=16):
    return Dataset([{"x": np.random.default_rng(0).standard_normal((n, 8, 8, 8)).astype(np.float32)}], None, "t")


@pytest.fixture
def fp32_is_slow(monkeypatch):
    """The FP32 side of the per-layer comparison, injected: every FP32 layer takes a second, so no int8 layer is
    'slower than FP32' and only islands / Q-DQ overhead are candidates (no timing in the assertions)."""
    import onnxcompress.quant.audit as audit_mod

    monkeypatch.setattr(audit_mod, "fp32_layer_times",
                        lambda model, feed, runs=20: {n.name: 1e6 for n in model.graph.node if n.name})


def test_slow_layers_finds_the_float_island(fp32_is_slow):
    from onnxcompress.quant.qdq import quantize

    q, _ = quantize(island_net(), _island_data(), QuantConfig(mode="static"))
    assert [r["node"] for r in audit(q)["float_islands"]] == ["conv1"]
    slow = slow_layers(q, {"x": _island_data(1).chunks[0]["x"]}, reference=island_net())
    assert [r["node"] for r in slow] == ["conv1"] and "float island" in slow[0]["why"]


def test_slow_layers_compares_int8_layers_with_their_fp32_layer(monkeypatch):
    """Given FP32 layer times (injected), an int8 layer whose kernel + Q/DQ take longer is a candidate, with both
    figures; the FP32 profile maps every conv of the model (NCHWc kernels are named after their output tensor)."""
    import onnxcompress.quant.audit as audit_mod
    from onnxcompress.quant.qdq import quantize

    m = tiny_cnn(channels=16)
    x = {"input": make_data(1)["input"]}
    assert {"conv1", "conv2", "fc"} <= set(audit_mod.fp32_layer_times(m, x, runs=3))
    q, _ = quantize(m, Dataset([{"input": make_data(32)["input"]}], None, "t"), QuantConfig(mode="static"))
    monkeypatch.setattr(audit_mod, "fp32_layer_times", lambda model, feed, runs=20: {"conv2": 1e-3, "conv1": 1e6})
    monkeypatch.setattr(audit_mod, "MIN_LOSS_US", 0.0)  # a tiny conv: any measured int8 time counts here
    slow = slow_layers(q, x, reference=m)
    assert [r["node"] for r in slow] == ["conv2"] and slow[0]["fp32_us"] == 0.0 and "the FP32 layer" in slow[0]["why"]


def test_candidate_sets_try_all_then_the_worse_half():
    rows = [{"node": "island", "why": "float island"}] + [
        {"node": f"c{i}", "kernel_us": 10.0 + i, "qdq_us": 0.0, "fp32_us": 5.0} for i in range(4)]
    sets = candidate_sets(rows)
    assert [r["node"] for r in sets[0]] == ["island", "c0", "c1", "c2", "c3"]
    assert [r["node"] for r in sets[1]] == ["island", "c3", "c2"]
    assert candidate_sets(rows[:2]) == [rows[:2]]
    # with the FP32 latency (1 ms): first only the layers losing >= 1% of it (c3: 13 - 5 = 8 us; c2 7 us, island 0)
    sets = candidate_sets(rows, fp32_ms=0.8)
    assert [r["node"] for r in sets[0]] == ["c3"] and [[r["node"] for r in s] for s in sets[1:]] == [
        ["island", "c0", "c1", "c2", "c3"], ["island", "c3", "c2"]]
    assert len(candidate_sets(rows, fp32_ms=0.1)) == 2  # every layer material: nothing smaller to try first


class Clock:
    """Injected latencies (ms) by model role; records what was timed."""

    def __init__(self, **ms):
        self.ms, self.calls = ms, []

    def __call__(self, models):
        self.calls.append(list(models))
        return {k: self.ms[k] for k in models}


def test_slower_int8_keeps_slow_layers_fp32_and_still_says_it_is_slower(fp32_is_slow):
    m, cfg = island_net(), QuantConfig(mode="static")
    # keeping the island FP32 helps, but int8 stays slower; the kept model is timed once more for the verdict
    clock = Clock(fp32=1.0, int8=2.0, fewer=1.1, final=1.25)
    q, rec = quantize_model(m, _island_data(), None, cfg, measure=clock)
    sp = rec.stats["speed"]
    assert clock.calls == [["fp32", "int8"], ["fp32", "int8", "fewer"], ["fp32", "final"]] and sp["confirmed"]
    # conv1 (the island) only: conv0 keeps its int8 kernel, conv1 reads its DequantizeLinear
    assert sp["kept_fp32_for_speed"] == ["conv1"] and sp["retry"]["kept"]
    assert sp["slower"] and abs(sp["speedup"] - 0.8) < 1e-9 and "0.80x" in sp["warning"]
    assert "1 layers slower in int8 than in FP32 here (1 float island): kept FP32" in sp["warning"]
    assert any(s.target == "speed" and "slower than FP32" in s.reason for s in rec.skipped)
    assert any(s.target == "conv1" and "kept FP32 for speed" in s.reason for s in rec.skipped)
    inits = {i.name for i in q.graph.initializer}
    conv1 = next(n for n in q.graph.node if n.name == "conv1")
    assert conv1.input[1] in inits  # float weights: really FP32 now
    a = audit(q)
    assert a["float_islands"] == [] and {r["node"]: r["role"] for r in a["nodes"]} == {
        "conv0": "int8", "conv1": "fp32", "conv2": "int8"}
    x = {"x": _island_data(4).chunks[0]["x"]}
    for ref, got in zip(run_ort(m, x), run_ort(q, x)):
        assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()
    text = _summary("q.onnx", rec.to_dict())
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "0.80x" in warnings[0] and "slower than FP32" in warnings[0]


def test_a_retry_that_is_not_faster_is_undone(fp32_is_slow):
    clock = Clock(fp32=1.0, int8=2.0, fewer=2.5)
    q, rec = quantize_model(island_net(), _island_data(), None, QuantConfig(mode="static"), measure=clock)
    sp = rec.stats["speed"]
    assert not sp["retry"]["kept"] and sp["kept_fp32_for_speed"] == [] and sp["slower"] and "0.50x" in sp["warning"]
    assert [r["node"] for r in sp["slow_layers"]] == ["conv1"]  # reported, since keeping it FP32 did not help
    assert [r["node"] for r in audit(q)["float_islands"]] == ["conv1"]


def test_faster_int8_is_left_alone():
    clock = Clock(fp32=2.0, int8=1.0)
    q, rec = quantize_model(tiny_cnn(), Dataset([{"input": make_data(32)["input"]}], None, "t"), None,
                            QuantConfig(mode="static"), measure=clock)
    sp = rec.stats["speed"]
    assert clock.calls == [["fp32", "int8"]] and sp["speedup"] == 2.0 and not sp["slower"] and "warning" not in sp
    assert "warning:" not in _summary("q.onnx", rec.to_dict())


def test_decide_fails_candidates_slower_than_fp32():
    rows = [{"mode": "static", "drop": 0.5, "latency_ms": 0.8, "speedup": 1.25},
            {"mode": "dynamic", "drop": 0.1, "latency_ms": 1.1, "speedup": 0.9}]
    chosen, why = decide(rows, 1.0, "top1")
    assert chosen["mode"] == "static" and not rows[1]["fits"] and rows[1]["within_budget"] and "fastest" in why
    rows = [{"mode": "static", "drop": 0.5, "latency_ms": 1.2, "speedup": 0.83},
            {"mode": "dynamic", "drop": 0.1, "latency_ms": 1.1, "speedup": 0.91}]
    chosen, why = decide(rows, 1.0, "top1")
    assert chosen["mode"] == "dynamic" and not any(r["fits"] for r in rows) and "faster than FP32" in why
    rows = [{"mode": "static", "drop": 3.0, "latency_ms": 0.5, "speedup": 2.0}]
    chosen, why = decide(rows, 1.0, "top1")
    assert chosen["mode"] == "static" and not chosen["within_budget"] and "no mode fits the budget" in why


def test_auto_skips_dynamic_on_a_conv_model_and_not_on_an_mlp():
    assert conv_share(tiny_cnn())[0] > 0.9 and conv_share(outlier_mlp())[0] == 0.0
    cal, val = Dataset([{"input": make_data(64)["input"]}], None, "c"), Dataset([{"input": make_data(64, 2)["input"]}], None, "v")
    clock = Clock(fp32=1.0, static=0.5, int8=0.5)
    q, rec = quantize_model(tiny_cnn(), cal, val, QuantConfig(mode="auto", metric="cosine"), measure=clock)
    auto = rec.stats["auto"]
    assert [c["mode"] for c in auto["candidates"]] == ["static"] and auto["chosen"] == "static"
    assert auto["skipped"][0]["mode"] == "dynamic" and "ConvInteger" in auto["skipped"][0]["why"]
    assert clock.calls[0] == ["fp32", "static"] and not any(n.op_type == "ConvInteger" for n in q.graph.node)
    clock = Clock(fp32=1.0, static=0.9, dynamic=1.5)  # dynamic: within budget but slower than FP32 -> failed
    q, rec = quantize_model(outlier_mlp(), ds(128, 0), ds(100, 1),
                            QuantConfig(mode="auto", per_channel=False, metric="agreement", max_drop=100.0), measure=clock)
    assert clock.calls == [["fp32", "static", "dynamic"]]  # the chosen model's latency is reused by the speed check
    auto = rec.stats["auto"]
    modes = {c["mode"]: c for c in auto["candidates"]}
    assert set(modes) == {"static", "dynamic"} and not modes["dynamic"]["fits"] and auto["chosen"] == "static"


def test_cli_reports_the_speed_in_json(tmp_path, tiny_model_path, tiny_data_path):
    r = CliRunner().invoke(main, ["quantize", str(tiny_model_path), "-o", str(tmp_path / "q.onnx"), "-c",
                                  str(tiny_data_path), "--speed-check", "0.3", "--json"])
    assert r.exit_code == 0, r.output
    sp = json.loads(r.stdout)["stats"]["speed"]
    assert sp["fp32_ms"] > 0 and sp["int8_ms"] > 0 and sp["slower"] == (sp["speedup"] < 1.0)
    assert ("warning" in sp) == sp["slower"]
    onnx.checker.check_model(onnx.load(str(tmp_path / "q.onnx")))


def test_latencies_read_a_low_percentile_not_the_median(monkeypatch):
    """On a loaded machine other processes lengthen most runs of one model, never shorten any: the speed check reads
    each model's 25th percentile (injected run times; no clock is read)."""
    import onnxcompress.quant.search as search
    from onnxcompress.evaluate.bench import Timing

    def fake(sessions, feeds, warmup=0, time_budget=None, **_kw):
        out = {k: Timing(k) for k in sessions}
        out["a"].times_ms = [1.0] * 30 + [5.0] * 70  # 70% of a's runs hit by the load: median 5.0
        out["b"].times_ms = [1.2] * 100
        return out

    monkeypatch.setattr(search, "time_sessions", fake)
    m = tiny_cnn()
    lat = search._latencies({"a": m, "b": m}, Dataset([{"input": make_data(2)["input"]}], None, "t"), seconds=0.1)
    assert lat == {"a": 1.0, "b": 1.2}


def _dw_net():
    """stem Conv on 3 channels -> depthwise 3x3 on 24 channels (one input channel per group) -> Mul by itself."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((24, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.standard_normal((24, 1, 3, 3)).astype(np.float32), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c0", "w1"], ["c1"], name="dw", pads=[1, 1, 1, 1], group=24),
             helper.make_node("Mul", ["c1", "c1"], ["y"], name="sq")]
    g = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_the_warning_says_which_kinds_of_layer_are_slower_in_int8():
    from onnxcompress.quant.search import _slow_summary

    slow = [{"node": "dw", "op": "Conv", "why": "x"}, {"node": "stem", "op": "Conv", "why": "x"},
            {"node": "sq", "op": "Mul", "why": "x"}]
    text = _slow_summary(_dw_net(), slow, kept=False)
    assert text == ("; 3 layers slower in int8 than in FP32 here (1 depthwise Conv, 1 Conv on 3 input channels, 1 Mul): "
                    "keeping them FP32 was not faster")
    assert _slow_summary(_dw_net(), [], kept=False) == ""


def test_latencies_stop_early_only_when_two_slices_agree(monkeypatch):
    """Timing stops before its budget only when two 0.5 s slices in a row, each on its own runs, put the models in the
    same clear order; slices that disagree (a loaded machine) run to the budget (injected run times, no clock)."""
    import onnxcompress.quant.search as search
    from onnxcompress.evaluate.bench import Timing

    def slices(pattern):
        calls = []

        def fake(sessions, feeds, warmup=0, time_budget=None, **_kw):
            a, b = pattern[len(calls) % len(pattern)]
            calls.append(time_budget)
            out = {k: Timing(k) for k in sessions}
            out["a"].times_ms, out["b"].times_ms = [a] * 10, [b] * 10
            return out
        return fake, calls

    m, d = tiny_cnn(), Dataset([{"input": make_data(2)["input"]}], None, "t")
    fake, calls = slices([(1.0, 2.0)])
    monkeypatch.setattr(search, "time_sessions", fake)
    assert search._latencies({"a": m, "b": m}, d, seconds=3.0) == {"a": 1.0, "b": 2.0} and len(calls) == 2
    fake, calls = slices([(1.0, 2.0), (2.0, 1.0)])  # the order flips every slice: no early stop
    monkeypatch.setattr(search, "time_sessions", fake)
    search._latencies({"a": m, "b": m}, d, seconds=2.0)
    assert len(calls) == 4
