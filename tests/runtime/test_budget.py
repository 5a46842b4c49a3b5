"""The memory-budget planner (runtime/budget.py): sizes, passes, batches; the flag and the config field."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxcompress.cli import main
from onnxcompress.config import DataConfig, PipelineConfig, from_dict, load_config, save_config
from onnxcompress.data import Dataset, model_layout
from onnxcompress.errors import ConfigError
from onnxcompress.runtime.budget import (ARENA, Pass, budget_of, measure, parse_budget, plan_passes, plan_reads,
                                          working_set)
from onnxcompress.evaluate.layers import layer_sqnr

from conftest import make_data, tiny_cnn


@pytest.mark.parametrize("text, value", [("512M", 512 << 20), ("2G", 2 << 30), ("1.5G", 3 << 29), ("300MiB", 300 << 20),
                                         ("64kb", 64 << 10), ("4096", 4096), (" 8 m ", 8 << 20), (1000, 1000)])
def test_parse_budget(text, value):
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["2X", "0", "-1", "", "G", "1.2.3M"])
def test_parse_budget_refuses_what_is_not_a_size(text):
    with pytest.raises(ConfigError, match="--memory-budget"):
        parse_budget(text)


def test_plan_packs_consecutive_units_and_sizes_each_pass():
    # greedy: 4+8+16+32 (+4 working) = 64 fills the budget; 100 alone exceeds it: its own pass at batch 1
    plan = plan_passes([4, 8, 16, 32, 100], budget=64, max_batch=32, working=4)
    assert plan.passes == (Pass((0, 1, 2, 3), 1, 64), Pass((4,), 1, 104))
    assert plan.over == (4,)
    # everything fits at batch 4: (4 + 4 + 4 + 4) x 4 = 64
    assert plan_passes([4, 4, 4], budget=64, max_batch=32, working=4).passes == (Pass((0, 1, 2), 4, 64),)
    # the batch stops at max_batch, and at run_bytes (a cap on one run, whatever the budget)
    assert plan_passes([1], budget=1000, max_batch=3).passes == (Pass((0,), 3, 3),)
    assert plan_passes([1], budget=1000, max_batch=100, working=1, run_bytes=10).passes == (Pass((0,), 5, 10),)
    # nothing exposed (tensors reduced in the graph): one pass, batch by the working set
    assert plan_passes([], budget=100, max_batch=32, working=10).passes == (Pass((), 10, 100),)
    # three passes when one sample's tensors exceed the budget three times, or run_bytes (under a large budget)
    assert [p.units for p in plan_passes([30] * 6, budget=60, max_batch=8).passes] == [(0, 1), (2, 3), (4, 5)]
    plan = plan_passes([30] * 5 + [100], budget=1000, max_batch=8, run_bytes=60)
    assert [(p.units, p.batch) for p in plan.passes] == [((0, 1), 1), ((2, 3), 1), ((4,), 2), ((5,), 1)]
    assert plan.over == ()
    # a working set above run_bytes (a 640^2 detector): run_bytes of tensors on top of it, not one tensor a pass
    plan = plan_passes([10] * 6, budget=1000, max_batch=8, working=100, run_bytes=30)
    assert [(p.units, p.batch) for p in plan.passes] == [((0, 1, 2), 1), ((3, 4, 5), 1)]


def test_measure_sizes_from_shape_inference_and_the_working_set():
    m = tiny_cnn()
    s = measure(m, {"input": np.zeros((1, 1, 8, 8), np.float32)})
    assert s.bytes["c1"] == s.bytes["r2"] == 8 * 8 * 8 * 4 and s.bytes["logits"] == 12 and s.bytes["input"] == 256
    # live tensors in node order: relu1 holds c1 and r1 (2 x 2048 bytes), the peak
    assert working_set(m, s.bytes) == 4096 and s.working == ARENA * 4096
    # a fixed batch of 4 is sized per sample
    s4 = measure(tiny_cnn(batch=4), {"input": np.zeros((4, 1, 8, 8), np.float32)})
    assert s4.bytes["c1"] == 2048


def test_measure_probes_what_shape_inference_cannot_size():
    g = helper.make_graph([helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Cast", ["nz"], ["f"], to=1),
                           helper.make_node("Relu", ["f"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.array([[1, 0, 2, 0, 0, 3]], np.float32)  # 3 non-zeros: f is [2, 3] float
    assert measure(m, {"x": x}).bytes.get("f") is None
    assert measure(m, {"x": x}, probe=["f"]).bytes["f"] == 2 * 3 * 4


def test_plan_reads_follows_the_data_budget():
    m = tiny_cnn()
    x = make_data(8)["input"]
    names = ["c1", "r1", "c2", "r2"]
    small = Dataset([{"input": x}], None, "t", model_layout(m), memory_budget=3 * 2048 + ARENA * 4096)
    plan = plan_reads([m], [names], small, batch_size=16)
    assert [p.units for p in plan.passes] == [(0, 1, 2), (3,)] and [p.batch for p in plan.passes] == [1, 1]
    big = Dataset([{"input": x}], None, "t", model_layout(m))
    assert plan_reads([m], [names], big, batch_size=16, budget="1G").passes == (
        Pass((0, 1, 2, 3), 16, 16 * (4 * 2048 + ARENA * 4096)),)
    assert budget_of(small) == small.memory_budget and budget_of(small, "1M") == 1 << 20


def test_layer_sqnr_is_the_same_whatever_the_budget():
    from onnxcompress.config import QuantConfig
    from onnxcompress.quant.qdq import quantize

    m = tiny_cnn()
    data = Dataset([make_data(24)], None, "t", model_layout(m))
    q, _ = quantize(m, data, QuantConfig(mode="static", speed_check_seconds=0, quality_check=False))
    tiny = layer_sqnr(m, q, data, samples=24, batch_size=8, memory_budget=1)  # one tensor pair a pass, batch 1
    huge = layer_sqnr(m, q, data, samples=24, batch_size=8, memory_budget="4G")  # one pass, batch 8
    assert tiny == huge and len(tiny) >= 4
    assert all(np.isfinite(r["sqnr_db"]) and r["sqnr_db"] > 5 for r in tiny)


def test_memory_budget_flag_errors_are_one_line_exit_2(tmp_path, tiny_model_path, tiny_data_path):
    out = tmp_path / "q.onnx"
    for bad in ("2X", "0"):
        r = CliRunner().invoke(main, ["quantize", str(tiny_model_path), "-o", str(out), "-c", str(tiny_data_path),
                                      "--memory-budget", bad])
        assert r.exit_code == 2, r.output
        assert r.output.strip().count("\n") == 0 and "--memory-budget" in r.output and "512M" in r.output
        assert not out.exists()
    r = CliRunner().invoke(main, ["quantize", str(tiny_model_path), "-o", str(out), "-c", str(tiny_data_path),
                                  "--memory-budget", "64K", "--speed-check", "0"])
    assert r.exit_code == 0, r.output
    onnx.checker.check_model(onnx.load(str(out)))


def test_memory_budget_round_trips_in_the_config(tmp_path):
    cfg = PipelineConfig(data=DataConfig(memory_budget="512M"))
    save_config(cfg, tmp_path / "c.json")
    back = load_config(tmp_path / "c.json")
    assert back == cfg and back.data.memory_budget_bytes() == 512 << 20
    with pytest.raises(ConfigError, match="memory_budget"):
        from_dict(PipelineConfig, {"data": {"memory_budget": "lots"}})
