"""bench: interleaving, statistics, ratios, fixed batches, peak memory, missing EPs, OpenVINO when present."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from conftest import tiny_cnn
from onnxcompress.cli import main
from onnxcompress.config import BenchConfig
from onnxcompress.evaluate.bench import Timing, bench_models, bench_table, time_sessions

HAS_OPENVINO = "OpenVINOExecutionProvider" in ort.get_available_providers()


class FakeSession:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def run(self, outputs, feed):
        self.log.append(self.name)


def test_interleaved_rotating_order_and_counts():
    log = []
    sessions = {n: FakeSession(n, log) for n in "abc"}
    t = time_sessions(sessions, {n: {} for n in "abc"}, warmup=2, runs=4)
    assert log[:6] == list("abcabc")  # warmup
    assert log[6:] == list("abc" "bca" "cab" "abc")  # each round starts one model later
    assert all(len(t[n].times_ms) == 4 for n in "abc")


def test_time_budget_stops_after_budget_with_at_least_three_rounds():
    log = []
    t = time_sessions({"a": FakeSession("a", log)}, {"a": {}}, warmup=0, runs=10**9, time_budget=0.0)
    assert len(t["a"].times_ms) == 3


def test_timing_summary_statistics():
    s = Timing("m", [1.0, 2.0, 3.0, 4.0, 100.0]).summary(batch=8)
    assert s["median_ms"] == 3.0 and s["mean_ms"] == 22.0 and s["min_ms"] == 1.0 and s["runs"] == 5
    assert s["p90_ms"] == pytest.approx(np.percentile([1, 2, 3, 4, 100], 90))
    assert s["throughput_per_s"] == pytest.approx(8 * 1000 / 3.0)


@pytest.fixture
def two_models(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(tiny_cnn(channels=8), str(a))
    onnx.save(tiny_cnn(channels=32), str(b))
    return a, b


def test_bench_models_ratios_sizes_and_progress(two_models):
    a, b = two_models
    calls = []
    res = bench_models({"a": a, "b": b}, None, BenchConfig(warmup=1, runs=6, batch_sizes=(1, 4), threads=(1,)),
                       progress=lambda d, t, w: calls.append((d, t)))
    assert res["schema_version"] == 1 and set(res["results"]["a"]) == {"cpu/t1/b1", "cpu/t1/b4"}
    assert res["models"]["b"]["size_ratio"] == pytest.approx(b.stat().st_size / a.stat().st_size)
    for key in ("cpu/t1/b1", "cpu/t1/b4"):
        sa, sb = res["results"]["a"][key], res["results"]["b"][key]
        assert sa["speedup"] == 1.0 and sb["speedup"] == pytest.approx(sa["median_ms"] / sb["median_ms"], rel=1e-12)
        for s in (sa, sb):
            assert s["runs"] == 6 and s["p99_ms"] >= s["p90_ms"] >= s["median_ms"] >= s["min_ms"] > 0
    assert calls[-1] == (12, 12) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    text = bench_table(res)
    assert "cpu/t1/b4" in text and "1.00x" in text


def test_fixed_batch_model_is_skipped_at_other_batches(tmp_path, two_models):
    fixed = tmp_path / "fixed.onnx"
    onnx.save(tiny_cnn(batch=1), str(fixed))
    res = bench_models({"a": two_models[0], "fixed": fixed}, None, BenchConfig(warmup=0, runs=2, batch_sizes=(1, 4)))
    assert "median_ms" in res["results"]["fixed"]["cpu/t1/b1"]
    assert "fixed batch of 1" in res["results"]["fixed"]["cpu/t1/b4"]["skipped"]
    assert "skipped" in bench_table(res)


def test_bench_cli_memory_and_json(two_models):
    a, b = two_models
    res = CliRunner().invoke(main, ["bench", str(a), str(b), "--runs", "3", "--warmup", "1", "--threads", "1,2", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc["results"]["b.onnx"]) == {"cpu/t1/b1", "cpu/t2/b1"}
    for m in doc["models"].values():
        mem = m["memory"]["cpu"]
        assert mem["method"] == "VmHWM after clear_refs" and mem["peak_rss_mb"] >= mem["baseline_mb"] > 10
        assert 0 < mem["model_mb"] < 500


def test_bench_text_output(two_models):
    res = CliRunner().invoke(main, ["bench", str(two_models[0]), str(two_models[0]), "--runs", "2", "--no-memory"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("model") and any("median ms" in line for line in lines)
    assert sum(line.strip().startswith("a.onnx") or "/a.onnx" in line for line in lines) == 4  # size rows + timing rows


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "batch sizes must be >= 1"),
    (["--threads", "x"], "not a comma-separated list of integers"),
    (["--time-budget", "0"], "time_budget 0.0 is out of range"),
])
def test_bench_bad_flags_exit_2(tiny_model_path, args, message):
    res = CliRunner().invoke(main, ["bench", str(tiny_model_path), *args])
    assert res.exit_code == 2 and message in res.output


def test_missing_provider_names_the_package(tiny_model_path):
    if HAS_OPENVINO:
        pytest.skip("OpenVINO is installed here")
    res = CliRunner().invoke(main, ["bench", str(tiny_model_path), "--providers", "cpu,openvino", "--runs", "1"])
    assert res.exit_code == 2 and res.stdout == ""
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith("error: execution provider 'openvino' is not available (have: ")
    assert "cpu" in line and line.endswith("); pip install onnxruntime-openvino (it replaces the onnxruntime module; use a separate venv)")


@pytest.mark.skipif(not HAS_OPENVINO, reason="onnxruntime-openvino is not installed (.ci/openvino installs it in its own venv)")
def test_openvino_bench_side_by_side(two_models):
    a, b = two_models
    res = CliRunner().invoke(main, ["bench", str(a), str(b), "--providers", "cpu,openvino", "--runs", "5", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for name, r in doc["results"].items():
        cpu, ov = r["cpu/t1/b1"], r["openvino/t1/b1"]
        assert ov["speedup_vs_cpu"] == pytest.approx(cpu["median_ms"] / ov["median_ms"], rel=1e-12)
        assert set(doc["models"][name]["memory"]) == {"cpu", "openvino"}
    assert doc["results"]["b.onnx"]["openvino/t1/b1"]["speedup"] == pytest.approx(
        doc["results"]["a.onnx"]["openvino/t1/b1"]["median_ms"] / doc["results"]["b.onnx"]["openvino/t1/b1"]["median_ms"])


@pytest.mark.skipif(not HAS_OPENVINO, reason="onnxruntime-openvino is not installed (.ci/openvino installs it in its own venv)")
def test_openvino_validate_matches_cpu(tiny_model_path, tiny_data_path):
    """OpenVINO runs the FP32 model to float tolerance of the CPU EP (same data, same labels)."""
    from onnxcompress.runtime.session import make_session, run_dataset
    from onnxcompress.data import input_specs, load_data
    from onnxcompress.io import load_model

    ds = load_data(tiny_data_path, input_specs(load_model(tiny_model_path)))
    cpu = run_dataset(make_session(tiny_model_path, "cpu"), ds)["logits"]
    ov_sess = make_session(tiny_model_path, "openvino", threads=1)
    assert ov_sess.get_providers()[0] == "OpenVINOExecutionProvider"
    ov = run_dataset(ov_sess, ds)["logits"]
    np.testing.assert_allclose(ov, cpu, rtol=1e-3, atol=1e-4)
    res = CliRunner().invoke(main, ["validate", str(tiny_model_path), str(tiny_model_path), "--data", str(tiny_data_path),
                                    "--provider", "openvino", "--min-agreement", "100", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["provider"] == "openvino" and doc["reference_top1"] == 100.0
