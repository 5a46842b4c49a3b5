"""End-to-end CLI on a tiny model with click's CliRunner: convert, quantize, validate, bench, errors."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from conftest import make_data, run_ort, tiny_cnn
from onnxcompress.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_convert_end_to_end(runner, tmp_path, tiny_model_path, tiny_data_path):
    out = tmp_path / "out"
    res = runner.invoke(main, ["convert", str(tiny_model_path), "-o", str(out), "-c", str(tiny_data_path),
                               "-v", str(tiny_data_path), "--runs", "5", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    names = [s["name"] for s in report["stages"]]
    assert names == ["fp32", "simplified", "int8"]
    fp32, _, int8 = (s["metrics"] for s in report["stages"])
    assert fp32["top1"] == 100.0  # labels are the FP32 model's own predictions
    assert int8["top1"] >= 90.0 and int8["agreement"] >= 90.0
    assert fp32["params"] == sum(int(np.prod(i.dims)) for i in tiny_cnn().graph.initializer)
    q = onnx.load(str(out / "tiny.int8.onnx"))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert json.loads((out / "report.json").read_text())["version"] == 1
    # the quantized model still computes the same function, approximately
    x = make_data(16, seed=7)["input"]
    ref, got = run_ort(tiny_model_path, {"input": x})[0], run_ort(out / "tiny.int8.onnx", {"input": x})[0]
    assert np.abs(ref - got).max() < 0.1 * np.abs(ref).max()


def test_quantize_then_validate_gates(runner, tmp_path, tiny_model_path, tiny_data_path):
    q = tmp_path / "q.onnx"
    res = runner.invoke(main, ["quantize", str(tiny_model_path), "-o", str(q), "-c", str(tiny_data_path),
                               "--speed-check", "0"])  # no timing-driven choice: the gates below must be deterministic
    assert res.exit_code == 0, res.output
    ok = runner.invoke(main, ["validate", str(tiny_model_path), str(q), "--data", str(tiny_data_path), "--json"])
    assert ok.exit_code == 0, ok.output
    verdict = json.loads(ok.stdout)
    assert verdict["passed"] is True and verdict["schema_version"] == 2
    bad = runner.invoke(main, ["validate", str(tiny_model_path), str(q), "--data", str(tiny_data_path),
                               "--min-cosine", "1.0000001"])
    assert bad.exit_code == 1
    assert "min_cosine" in bad.output


def test_bench_two_models(runner, tmp_path, tiny_model_path):
    res = runner.invoke(main, ["bench", str(tiny_model_path), str(tiny_model_path), "--runs", "3", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert len(data["results"]) == 2


@pytest.mark.parametrize("make_args, needle", [
    (lambda t, m, d: ["quantize", str(t / "notes.txt"), "-o", str(t / "o.onnx"), "-c", str(d)], "not an ONNX model"),
    (lambda t, m, d: ["quantize", str(m), "-o", str(t / "o.onnx"), "-c", str(t / "missing.npz")], "not found"),
    (lambda t, m, d: ["quantize", str(m), "-o", str(t / "o.onnx"), "-c", str(t / "wrongname.npz")], "no array for model input 'input'"),
    (lambda t, m, d: ["quantize", str(m), "-o", str(t / "o.onnx"), "-c", str(t / "wrongshape.npz")], "expects shape"),
    (lambda t, m, d: ["quantize", str(m), "-o", str(m), "-c", str(d)], "is the input file"),
])
def test_bad_input_is_one_line_exit_2(runner, tmp_path, tiny_model_path, tiny_data_path, make_args, needle):
    (tmp_path / "notes.txt").write_text("some notes\n")
    np.savez(tmp_path / "wrongname.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    np.savez(tmp_path / "wrongshape.npz", input=np.zeros((4, 1, 9, 9), np.float32))
    before = tiny_model_path.read_bytes()
    res = runner.invoke(main, make_args(tmp_path, tiny_model_path, tiny_data_path))
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in res.output
    assert not (tmp_path / "o.onnx").exists()
    assert tiny_model_path.read_bytes() == before


def test_convert_from_torch_with_prune_and_distill(runner, tmp_path):
    pytest.importorskip("torch")
    f = tmp_path / "net.py"
    f.write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),\n"
        "                               torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),\n"
        "                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 3))\n")
    np.savez(tmp_path / "d.npz", input=make_data(64)["input"])
    res = runner.invoke(main, ["convert", f"{f}:build", "--input", "input:Nx1x8x8", "-o", str(tmp_path / "out"),
                               "-c", str(tmp_path / "d.npz"), "-v", str(tmp_path / "d.npz"), "--train-ratio", "0.5",
                               "--train-epochs", "1", "--runs", "3", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [s["name"] for s in report["stages"]] == ["fp32", "simplified", "distilled", "int8"]
    fp32, _, distilled, _ = (s["metrics"] for s in report["stages"])
    assert distilled["params"] < fp32["params"] and distilled["macs"] < fp32["macs"]
    assert report["stages"][0]["record"]["name"] == "export"


def test_convert_task_and_gate_flags(tmp_path, tiny_model_path, tiny_data_path):
    r = CliRunner().invoke(main, ["convert", str(tiny_model_path), "-o", str(tmp_path / "out"), "-c", str(tiny_data_path),
                                  "-v", str(tiny_data_path), "--runs", "2", "--task", "classification",
                                  "--gate", "agreement>=100.5"])
    assert r.exit_code == 1 and "gate failed: agreement: prediction agreement" in r.output, r.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["config"]["validate"]["gates"] == ["agreement>=100.5"]
    assert report["config"]["validate"]["task"]["name"] == "classification" == report["config"]["quant"]["task"]["name"]
