"""validate: metrics on real ONNX Runtime runs, gates and exit codes (0 pass, 1 gate, 2 bad input), JSON schema."""
import json
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from conftest import make_data, run_ort, tiny_cnn
from onnxcompress.cli import main
from onnxcompress.config import ValidateConfig
from onnxcompress.errors import InputError
from onnxcompress.evaluate.validate import SCHEMA_VERSION, validate

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "validate-schema.json").read_text())


@pytest.fixture
def quantized(tmp_path, tiny_model_path, tiny_data_path):
    from onnxruntime.quantization import calibrate

    if not hasattr(calibrate, "save_tensors_data"):  # onnxcompress quantize needs a newer onnxruntime
        pytest.skip(f"onnxruntime {ort.__version__} lacks quantization.calibrate.save_tensors_data, which quantize uses")
    q = tmp_path / "q.onnx"
    res = CliRunner().invoke(main, ["quantize", str(tiny_model_path), "-o", str(q), "-c", str(tiny_data_path),
                                    "--speed-check", "0"])  # a timing-driven choice would make the gates below flaky
    assert res.exit_code == 0, res.output
    return q


def _scaled(tmp_path, name: str, init: str, factor: float) -> Path:
    m = tiny_cnn()
    t = next(i for i in m.graph.initializer if i.name == init)
    t.CopyFrom(onnx.numpy_helper.from_array((onnx.numpy_helper.to_array(t) * factor).astype(np.float32), init))
    onnx.save(m, str(tmp_path / name))
    return tmp_path / name


def test_schema_version_matches_code():
    assert SCHEMA["properties"]["schema_version"]["const"] == SCHEMA_VERSION


def test_json_follows_schema_and_gates_exit_codes(tiny_model_path, quantized, tiny_data_path):
    r = CliRunner()
    ok = r.invoke(main, ["validate", str(tiny_model_path), str(quantized), "--data", str(tiny_data_path), "--json",
                         "--layers", "--min-agreement", "90", "--max-size", "1M", "--max-latency-ratio", "100"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert [g["name"] for g in doc["gates"]] == ["max_drop", "min_agreement", "max_size", "max_latency_ratio"]
    assert doc["passed"] and all(g["passed"] for g in doc["gates"]) and ok.stderr == ""
    assert doc["samples"] == 64 and doc["candidate_size"] == quantized.stat().st_size
    assert next(g for g in doc["gates"] if g["name"] == "max_size")["limit"] == 1_000_000
    assert doc["layers"] and {"r1", "r2", "g", "f"} <= {x["tensor"] for x in doc["layers"]}  # conv outputs: fused with Relu
    # an impossible gate: exit 1, exactly one stderr line per failed gate, nothing else on stderr
    bad = r.invoke(main, ["validate", str(tiny_model_path), str(quantized), "--data", str(tiny_data_path),
                          "--max-size", "10", "--min-cosine", "1.01", "--min-agreement", "0", "--json"])
    assert bad.exit_code == 1
    assert bad.stderr.splitlines() == [
        f"gate failed: min_cosine: mean cosine similarity {json.loads(bad.stdout)['outputs']['logits']['cosine']:.6g} < limit 1.01",
        f"gate failed: max_size: candidate size {quantized.stat().st_size} bytes > limit 10 bytes"]
    doc = json.loads(bad.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["passed"] is False and [g["passed"] for g in doc["gates"]] == [True, True, False, False]


def test_schema_rejects_drift(tiny_model_path, tiny_data_path):
    """The schema is strict enough that a renamed or mistyped field fails (so the test above can fail)."""
    doc = json.loads(json.dumps(validate(tiny_model_path, tiny_model_path, tiny_data_path), default=str))
    doc["outputs"]["logits"]["sqnr_db"] = "inf"
    jsonschema.validate(doc, SCHEMA)
    for broken in ({**doc, "schema_version": 1}, {**doc, "top1drop": 0.0}, {**doc, "samples": "64"},
                   {k: v for k, v in doc.items() if k != "gates"}, {**doc, "verdict": "ok"},
                   {**doc, "task": {**doc["task"], "name": "regression"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA)


def test_identical_models_pass_everything(tiny_model_path, tiny_data_path):
    res = validate(tiny_model_path, tiny_model_path, tiny_data_path, ValidateConfig(min_cosine=0.999999, min_agreement=100))
    assert res["passed"] and res["top1_drop"] == 0.0 and res["reference_top1"] == 100.0
    m = res["outputs"]["logits"]
    assert m["max_abs_error"] == 0.0 and m["sqnr_db"] == float("inf") and res["task"]["metrics"]["agreement"] == 100.0
    assert res["verdict"] == "passed" and [g["name"] for g in res["gates"]] == ["max_drop", "min_agreement", "min_cosine"]
    out = CliRunner().invoke(main, ["validate", str(tiny_model_path), str(tiny_model_path), "-d", str(tiny_data_path), "--json"])
    assert json.loads(out.stdout)["outputs"]["logits"]["sqnr_db"] == "inf"  # JSON has no inf


def test_metrics_match_a_direct_computation(tmp_path, tiny_data_path):
    """Candidate = classifier weights x1.05 plus a bias shift: every metric against numpy on ORT outputs."""
    cand = _scaled(tmp_path, "c.onnx", "wf", 1.05)
    ref = tmp_path / "r.onnx"
    onnx.save(tiny_cnn(), str(ref))
    data = dict(np.load(tiny_data_path))
    r = run_ort(ref, {"input": data["input"]})[0].astype(np.float64)
    c = run_ort(cand, {"input": data["input"]})[0].astype(np.float64)
    res = validate(ref, cand, tiny_data_path, ValidateConfig(batch_size=5))
    m = res["outputs"]["logits"]
    assert m["sqnr_db"] == pytest.approx(10 * np.log10((r ** 2).sum() / ((r - c) ** 2).sum()), abs=1e-4)
    assert m["max_abs_error"] == pytest.approx(np.abs(r - c).max(), rel=1e-5)
    assert res["task"]["name"] == "classification" and "agreement" not in m  # no argmax in tensor closeness
    assert res["task"]["metrics"]["agreement"] == pytest.approx(100 * np.mean(r.argmax(1) == c.argmax(1)))
    cos = (r * c).sum(1) / np.linalg.norm(r, axis=1) / np.linalg.norm(c, axis=1)
    assert m["cosine"] == pytest.approx(cos.mean(), abs=1e-6) and m["cosine_min"] == pytest.approx(cos.min(), abs=1e-6)
    assert res["candidate_top1"] == pytest.approx(100 * np.mean(c.argmax(1) == data["labels"]))
    # batching does not change the numbers
    res64 = validate(ref, cand, tiny_data_path, ValidateConfig(batch_size=64))
    assert res64["outputs"]["logits"]["sqnr_db"] == pytest.approx(m["sqnr_db"], abs=1e-4)
    assert res64["candidate_top1"] == res["candidate_top1"]
    assert validate(ref, cand, tiny_data_path, ValidateConfig(max_samples=10))["samples"] == 10


def test_layer_sqnr_ranks_the_damaged_layer_first(tmp_path, tiny_data_path):
    ref = tmp_path / "r.onnx"
    onnx.save(tiny_cnn(), str(ref))
    cand = _scaled(tmp_path, "c.onnx", "w2", 1.3)  # conv2 weights off by 30%
    before = cand.read_bytes()
    res = validate(ref, cand, tiny_data_path, ValidateConfig(max_drop=None), layers=True)
    by = {x["tensor"]: x["sqnr_db"] for x in res["layers"]}
    assert by["c1"] == float("inf") and by["r1"] == float("inf")  # upstream of the damage: identical
    assert by["c2"] == pytest.approx(10 * np.log10(1 / 0.09), abs=0.5)  # 30% scale error = 10.5 dB (bias aside)
    assert res["layers"][0]["tensor"] in ("c2", "r2", "g", "f", "logits")
    assert [x["sqnr_db"] for x in res["layers"]] == sorted(x["sqnr_db"] for x in res["layers"])
    assert cand.read_bytes() == before  # instrumented copies only


def _model(graph) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8  # older onnxruntime builds (onnxruntime-openvino) read IR <= 10
    return m


def _two_io(path: Path, mul: float = 1.0) -> Path:
    c = helper.make_tensor("k", TensorProto.FLOAT, [], [mul])
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["a", "b"], ["p0"]),
             helper.make_node("Mul", ["p0", "k"], ["p"])]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "L"]),
                                         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "L"])],
                          [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", "L"]),
                           helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", "L"])], [c])
    onnx.save(_model(g), str(path))
    return path


def test_several_inputs_and_outputs_with_dynamic_dims(tmp_path):
    ref, cand = _two_io(tmp_path / "r.onnx"), _two_io(tmp_path / "c.onnx", mul=1.01)
    d = tmp_path / "d"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i, length in enumerate((3, 7)):  # chunks of different sequence length
        np.savez(d / f"{i}.npz", a=rng.standard_normal((5, length)).astype(np.float32),
                 b=rng.standard_normal((5, length)).astype(np.float32))
    res = validate(ref, cand, d, ValidateConfig(max_drop=None, batch_size=2))
    assert list(res["outputs"]) == ["s", "p"] and res["samples"] == 10
    assert res["outputs"]["s"]["sqnr_db"] == float("inf")
    assert res["outputs"]["p"]["sqnr_db"] == pytest.approx(40.0, abs=1e-3)  # 1% error = 40 dB
    assert res["outputs"]["p"]["max_rel_error"] == pytest.approx(0.01, rel=1e-3)


def test_fixed_batch_model_is_padded(tmp_path):
    p = tmp_path / "fixed.onnx"
    onnx.save(tiny_cnn(batch=4), str(p))
    np.savez(tmp_path / "d.npz", **make_data(10, labels_from=tiny_cnn()))
    res = validate(p, p, tmp_path / "d.npz", ValidateConfig(batch_size=3))
    assert res["samples"] == 10 and res["reference_top1"] == 100.0


def test_random_data_and_latency_ratio(tmp_path):
    ref = _two_io(tmp_path / "r.onnx")
    res = validate(ref, ref, None, ValidateConfig(min_agreement=100.0, max_latency_ratio=1000.0))
    assert res["data"] == "random" and res["samples"] == 64 and res["passed"]
    assert [g["name"] for g in res["gates"]] == ["min_agreement", "max_latency_ratio"]  # max_drop: no labels
    assert res["latency_ratio"] == pytest.approx(res["candidate_latency_ms"] / res["reference_latency_ms"])


def test_missing_metric_fails_its_gate(tmp_path):
    """A regression output (last axis 1) is generic: an agreement gate must fail, not pass silently."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    g = helper.make_graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)], "reg",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], [axes])
    onnx.save(_model(g), str(tmp_path / "reg.onnx"))
    res = CliRunner().invoke(main, ["validate", str(tmp_path / "reg.onnx"), str(tmp_path / "reg.onnx"),
                                    "--min-agreement", "50", "--min-cosine", "0.99", "--json"])
    assert res.exit_code == 1
    gates = {g["name"]: g for g in json.loads(res.stdout)["gates"]}
    assert gates["min_agreement"]["value"] is None and not gates["min_agreement"]["passed"]
    assert gates["min_cosine"]["passed"]
    assert res.stderr.splitlines() == ["gate failed: min_agreement: prediction agreement is not available "
                                       "(the generic task does not measure 'agreement'; it measures cosine, cosine_min, "
                                       "max_abs_error, max_rel_error, sqnr_db)"]


@pytest.mark.parametrize("args, message", [
    (["--data", "missing.npz"], "data file missing.npz not found"),
    (["--max-drop", "0.5"], "--max-drop needs labels"),
    (["--provider", "nosuch"], "execution provider 'nosuch' is not available"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, tiny_model_path, args, message):
    np.savez(tmp_path / "nolabels.npz", input=make_data(8)["input"])
    if "--data" not in args:
        args = args + ["--data", str(tmp_path / "nolabels.npz")]
    res = CliRunner().invoke(main, ["validate", str(tiny_model_path), str(tiny_model_path), *args])
    assert res.exit_code == 2, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr and "Traceback" not in res.output


def test_different_networks_are_refused(tmp_path, tiny_model_path):
    with pytest.raises(InputError, match="different inputs"):
        validate(tiny_model_path, _two_io(tmp_path / "two.onnx"), None)
    res = CliRunner().invoke(main, ["validate", str(tiny_model_path), str(tmp_path / "two.onnx"), "--max-size", "huge"])
    assert res.exit_code == 2 and "is not a size" in res.stderr
