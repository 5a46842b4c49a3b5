"""The issue's "must show" on the bundled Fashion-MNIST model: FP32 vs INT8 validate exit codes and schema,
bench side by side on CPU (and OpenVINO where onnxruntime-openvino is installed)."""
import json
import os
from pathlib import Path

import jsonschema
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxcompress.cli import main

REPO = Path(__file__).resolve().parents[2]
MODEL, CALIB, VAL = REPO / "models/fashion_net.onnx", REPO / "calibration/fashion_calib.npz", REPO / "calibration/fashion_val.npz"
SCHEMA = json.loads((REPO / "docs/validate-schema.json").read_text())
pytestmark = pytest.mark.skipif(not (MODEL.is_file() and CALIB.is_file() and VAL.is_file()),
                                reason="bundled model/data not in this checkout")


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    """Quantized here, or (in the OpenVINO venv, whose onnxruntime is older) given by .ci/openvino."""
    from onnxruntime.quantization import calibrate

    given = os.environ.get("ONNXCOMPRESS_BUNDLED_INT8")
    if given:
        return Path(given)
    if not hasattr(calibrate, "save_tensors_data"):
        pytest.skip(f"onnxruntime {ort.__version__} lacks quantization.calibrate.save_tensors_data, which quantize uses")
    out = tmp_path_factory.mktemp("bundled") / "fashion_net.int8.onnx"
    res = CliRunner().invoke(main, ["quantize", str(MODEL), "-o", str(out), "-c", str(CALIB)])
    assert res.exit_code == 0, res.output
    return out


def test_validate_fp32_vs_int8_default_gates_pass(int8):
    res = CliRunner().invoke(main, ["validate", str(MODEL), str(int8), "--data", str(VAL), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["samples"] == 2000 and doc["gates"][0]["name"] == "max_drop" and doc["passed"]
    assert 90.0 < doc["reference_top1"] < 95.0 and 0.0 <= doc["top1_drop"] <= 1.0  # 92.45% FP32 (models/README.md)
    assert doc["task"]["name"] == "classification" and doc["verdict"] == "passed"
    assert doc["task"]["metrics"]["agreement"] > 98.0 and doc["outputs"]["logits"]["sqnr_db"] > 25.0
    assert doc["size_ratio"] < 0.35


def test_validate_impossible_gate_exits_1(int8):
    res = CliRunner().invoke(main, ["validate", str(MODEL), str(int8), "--data", str(VAL), "--max-drop", "-1",
                                    "--max-samples", "500"])
    assert res.exit_code == 1
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("gate failed: max_drop: top-1 drop ")
    assert "FAIL max_drop" in res.stdout and res.stdout.rstrip().endswith("FAILED: 1 of 1 gates")


def test_bench_side_by_side(int8):
    providers = "cpu,openvino" if "OpenVINOExecutionProvider" in ort.get_available_providers() else "cpu"
    res = CliRunner().invoke(main, ["bench", str(MODEL), str(int8), "--providers", providers, "--runs", "20", "--no-memory"])
    assert res.exit_code == 0, res.output
    assert "fashion_net.int8.onnx" in res.stdout and "vs first" in res.stdout
    if providers != "cpu":
        assert "execution providers side by side" in res.stdout
