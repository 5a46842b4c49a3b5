"""Without -v, quantize measures the int8 model's task metric against FP32 on calibration samples and warns
when the task's default gate fails: a detector that loses its detections is never passed silently."""
import numpy as np
import onnx
from click.testing import CliRunner

from conftest import make_data, tiny_cnn
from onnxcompress.cli import main
from onnxcompress.config import QuantConfig
from onnxcompress.data import Dataset
from onnxcompress.quant.search import quantize_model

from quant.test_mixed_ranges import yolo_head


def test_classifier_quality_is_measured_and_passes():
    data = Dataset([{"input": make_data(64)["input"]}], None, "t")
    _, rec = quantize_model(tiny_cnn(), data, None, QuantConfig(speed_check_seconds=0))
    q = rec.stats["quality"]
    assert q["task"] == "classification" and q["samples"] == 64 and q["passed"] is True
    assert q["metrics"]["agreement"] >= 95 and not any(s.target == "quality" for s in rec.skipped)


def test_broken_detector_gets_a_warning_line(tmp_path, monkeypatch):
    import onnxcompress.quant.qdq as qdq

    monkeypatch.setattr(qdq, "mixed_range_concats", lambda *a, **k: [])  # the head Concat quantized on one scale
    m = yolo_head(sharp=6.0)
    onnx.save_model(m, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(1).standard_normal((32, 3, 8, 8)).astype(np.float32))
    r = CliRunner().invoke(main, ["quantize", str(tmp_path / "m.onnx"), "-c", str(tmp_path / "c.npz"),
                                  "-o", str(tmp_path / "q.onnx"), "--speed-check", "0", "--task", "detection"])
    assert r.exit_code == 0, r.output
    assert "quality on 32 calibration samples (detection vs the input model)" in r.output
    warn = [line for line in r.output.splitlines() if line.startswith("warning:") and "recall" in line]
    assert warn and "pass -v VAL" in warn[0], r.output
    broken = float(warn[0].split("FP32 ")[1].split("%")[0])
    monkeypatch.undo()  # with the Concat kept FP32 the same model passes
    r = CliRunner().invoke(main, ["quantize", str(tmp_path / "m.onnx"), "-c", str(tmp_path / "c.npz"),
                                  "-o", str(tmp_path / "q2.onnx"), "--speed-check", "0", "--task", "detection"])
    assert r.exit_code == 0 and "quality on 32" in r.output, r.output
    # a random toy head has hundreds of boxes near the score threshold: the fixed model need not pass the
    # 90% gate, but it keeps far more of the FP32 detections than the broken one
    fixed = float(r.output.split("recall ")[1].split(",")[0])
    assert fixed > broken + 30, (broken, fixed)


def test_auto_with_no_candidate_in_budget_prints_a_warning():
    from onnxcompress.cli.quant import _summary

    st = {"mode": "static", "target": {"why": "vnni"},
          "auto": {"why": "no mode fits the budget of 1.000 f1 points; kept static", "metric": "f1", "budget": 1.0,
                   "candidates": [{"mode": "static", "fits": False}], "skipped": []}}
    text = _summary("q.onnx", {"stats": st})
    assert "warning: no int8 model within the 1.000-point f1 budget" in text
    st["auto"]["candidates"][0]["fits"] = True
    assert "warning:" not in _summary("q.onnx", {"stats": st})
