import json
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from conftest import make_data, tiny_cnn
from onnxcompress.cli import main
from onnxcompress.config import ValidateConfig
from onnxcompress.evaluate.validate import validate

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "validate-schema.json").read_text())


@pytest.fixture
def quantized(tmp_path, tiny_model_path, tiny_data_path):
    q = tmp_path / "q.onnx"
    assert CliRunner().invoke(main, ["quantize", str(tiny_model_path), "-o", str(q), "-c", str(tiny_data_path)]).exit_code == 0
    return q


def test_json_follows_schema_and_gates_exit_codes(tiny_model_path, quantized, tiny_data_path):
    r = CliRunner()
    ok = r.invoke(main, ["validate", str(tiny_model_path), str(quantized), "--data", str(tiny_data_path), "--json",
                         "--layers", "--min-agreement", "90", "--max-size", "100000000", "--max-latency-ratio", "100"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert {g["name"] for g in doc["gates"]} == {"max_drop", "min_agreement", "max_size", "max_latency_ratio"}
    assert doc["layers"] and all(isinstance(x["sqnr_db"], (float, int, str)) for x in doc["layers"])
    bad = r.invoke(main, ["validate", str(tiny_model_path), str(quantized), "--data", str(tiny_data_path),
                          "--max-size", "10", "--min-cosine", "1.01"])
    assert bad.exit_code == 1
    failed = [line for line in bad.stderr.splitlines() if line.startswith(("error: gate failed", "gate failed"))]
    assert len(failed) == 2 and "max_size" in bad.stderr and "min_cosine" in bad.stderr


def test_identical_models_pass_everything(tiny_model_path, tiny_data_path):
    res = validate(tiny_model_path, tiny_model_path, tiny_data_path, ValidateConfig(min_cosine=0.999999, min_agreement=100))
    assert res["passed"] and res["top1_drop"] == 0.0
    assert res["outputs"]["logits"]["max_abs_error"] == 0.0


def test_layer_sqnr_ranks_the_damaged_layer_first(tmp_path, tiny_data_path):
    ref = tiny_cnn()
    cand = tiny_cnn()
    w2 = next(i for i in cand.graph.initializer if i.name == "w2")
    arr = onnx.numpy_helper.to_array(w2) * 1.3  # conv2 is off by 30%
    w2.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), "w2"))
    onnx.save(ref, str(tmp_path / "r.onnx"))
    onnx.save(cand, str(tmp_path / "c.onnx"))
    res = validate(tmp_path / "r.onnx", tmp_path / "c.onnx", tiny_data_path, ValidateConfig(max_drop=None), layers=True)
    by = {x["tensor"]: x["sqnr_db"] for x in res["layers"]}
    assert by["c1"] == float("inf") and by["r1"] == float("inf")  # upstream of the damage: identical
    assert by["c2"] == pytest.approx(10 * np.log10(1 / 0.09), abs=0.5)  # 30% scale error = 10.5 dB (bias aside)
    assert res["layers"][0]["tensor"] in ("c2", "r2", "g", "f", "logits")


def test_several_inputs_and_outputs_with_dynamic_dims(tmp_path):
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["a", "b"], ["p"])]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "L"]),
                                         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "L"])],
                          [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", "L"]),
                           helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", "L"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(tmp_path / "m.onnx"))
    d = tmp_path / "d"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i, length in enumerate((3, 7)):  # chunks of different sequence length
        np.savez(d / f"{i}.npz", a=rng.standard_normal((5, length)).astype(np.float32),
                 b=rng.standard_normal((5, length)).astype(np.float32))
    res = validate(tmp_path / "m.onnx", tmp_path / "m.onnx", d, ValidateConfig(max_drop=None, batch_size=2))
    assert set(res["outputs"]) == {"s", "p"} and res["samples"] == 10


@pytest.mark.skipif("OpenVINOExecutionProvider" not in ort.get_available_providers(),
                    reason="onnxruntime-openvino is not installed (.ci/openvino installs it in its own venv)")
def test_openvino_validate_and_bench(tiny_model_path, quantized, tiny_data_path):
    r = CliRunner()
    v = r.invoke(main, ["validate", str(tiny_model_path), str(quantized), "--data", str(tiny_data_path),
                        "--provider", "openvino", "--json"])
    assert v.exit_code == 0, v.output
    assert json.loads(v.stdout)["outputs"]["logits"]["agreement"] >= 90
    b = r.invoke(main, ["bench", str(tiny_model_path), str(quantized), "--providers", "cpu,openvino", "--runs", "5",
                        "--no-memory", "--json"])
    assert b.exit_code == 0, b.output
    res = json.loads(b.stdout)["results"]
    assert all("openvino/t1/b1" in v and "cpu/t1/b1" in v for v in res.values())
    assert all("speedup_vs_cpu" in v["openvino/t1/b1"] for v in res.values())


def test_missing_provider_names_the_package(tiny_model_path):
    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        pytest.skip("OpenVINO is installed here")
    res = CliRunner().invoke(main, ["bench", str(tiny_model_path), "--providers", "openvino", "--runs", "1"])
    assert res.exit_code == 2 and "pip install onnxruntime-openvino" in res.stderr


def test_bench_reports_memory_and_interleaved_ratios(tiny_model_path, quantized):
    res = CliRunner().invoke(main, ["bench", str(tiny_model_path), str(quantized), "--runs", "5", "--batch", "1,4", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert all(m["memory"]["peak_rss_mb"] > 0 for m in doc["models"].values())
    first = next(iter(doc["results"].values()))
    assert first["cpu/t1/b1"]["speedup"] == 1.0 and set(first) == {"cpu/t1/b1", "cpu/t1/b4"}
    for s in first.values():
        assert s["runs"] == 5 and s["p90_ms"] >= s["median_ms"] >= s["min_ms"] > 0
