"""Each task's gate catches a damaged model that a cosine >= 0.99 gate passes; convert applies the gates
(exit 1) and the CLI, the API and the report agree; the accuracy search optimizes the task metric."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from onnxcompress.cli import main
from onnxcompress.config import BenchConfig, PipelineConfig, QuantConfig, SimplifyConfig, ValidateConfig, save_config
from onnxcompress.evaluate.gates import AccuracyResult
from onnxcompress.evaluate.validate import validate
from task_models import ctc_data, ctc_recognizer, embedder, fake_quant, seg_net, yolo_head

from onnxruntime.quantization import calibrate as _calibrate

# the OpenVINO CI venv (.ci/openvino) runs tests/evaluate on onnxruntime-openvino's older onnxruntime
needs_quantize = pytest.mark.skipif(not hasattr(_calibrate, "save_tensors_data"),
                                    reason="this onnxruntime lacks quantization.calibrate.save_tensors_data, which quantize uses")


def bias_shift(m: onnx.ModelProto, name: str, index: int, delta: float) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    t = next(i for i in out.graph.initializer if i.name == name)
    a = numpy_helper.to_array(t).copy()
    a[index] += delta
    t.CopyFrom(numpy_helper.from_array(a, name))
    return out


def rng_data(shape, seed=3):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# task -> (model, damaged copy, fine copy, input name, data, the default gate that must catch the damage)
CASES = {
    "detection-v8": (lambda: yolo_head(), lambda m: fake_quant(m, "w2", 6), lambda m: fake_quant(m, "w2", 12),
                     "feats", lambda: rng_data((8, 256, 8)), "recall"),
    "detection-v5": (lambda: yolo_head(transposed=False, objectness=True), lambda m: fake_quant(m, "w2", 6),
                     lambda m: fake_quant(m, "w2", 12), "feats", lambda: rng_data((8, 256, 8)), "precision"),
    "ctc": (ctc_recognizer, lambda m: bias_shift(m, "b", 0, 0.2), lambda m: bias_shift(m, "b", 0, 0.01),
            "feats", ctc_data, "char_agreement"),
    "segmentation": (seg_net, lambda m: fake_quant(m, "w2", 4), lambda m: fake_quant(m, "w2", 10),
                     "image", lambda: rng_data((4, 3, 16, 16)), "miou"),
    "embedding": (embedder, lambda m: fake_quant(m, "w", 2), lambda m: fake_quant(m, "w", 8),
                  "x", lambda: rng_data((64, 16)), "rank_correlation"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damage_fails_the_task_gate_where_cosine_passes(tmp_path, case):
    build, damage, fine, name, data, gate = CASES[case]
    ref = build()
    paths = {}
    for tag, m in (("ref", ref), ("bad", damage(ref)), ("good", fine(ref))):
        paths[tag] = tmp_path / f"{tag}.onnx"
        onnx.save(m, str(paths[tag]))
    np.savez(tmp_path / "d.npz", **{name: data()})
    cfg = ValidateConfig(min_cosine=0.99)
    bad = validate(paths["ref"], paths["bad"], tmp_path / "d.npz", cfg)
    assert bad["task"]["name"] == case.split("-")[0] and "guessed from" in bad["task"]["why"]
    gates = {g["name"]: g for g in bad["gates"]}
    assert gates["min_cosine"]["passed"] and gates["min_cosine"]["value"] >= 0.99  # the tensor gate is fooled
    assert not gates[gate]["passed"] and gates[gate]["origin"] == f"default ({bad['task']['name']})"
    assert bad["verdict"] == "failed" and bad["passed"] is False
    good = validate(paths["ref"], paths["good"], tmp_path / "d.npz", cfg)
    assert good["verdict"] == "passed" and {g["name"] for g in good["gates"]} == set(gates)
    # the CLI reads the same verdict: exit 1, one line per failed gate, the evaluator's messages
    res = CliRunner().invoke(main, ["validate", str(paths["ref"]), str(paths["bad"]), "-d", str(tmp_path / "d.npz"),
                                    "--min-cosine", "0.99"])
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [f"gate failed: {m}" for m in AccuracyResult.from_dict(bad).failures()]


def test_no_gates_never_says_passed(tmp_path):
    ref = tmp_path / "r.onnx"
    onnx.save(embedder(), str(ref))
    np.savez(tmp_path / "d.npz", x=rng_data((16, 16)))
    res = validate(ref, ref, tmp_path / "d.npz", ValidateConfig(default_gates=False))
    assert res["gates"] == [] and res["verdict"] == "no gates" and res["passed"] is None
    out = CliRunner().invoke(main, ["validate", str(ref), str(ref), "-d", str(tmp_path / "d.npz"), "--no-default-gates"])
    assert out.exit_code == 0 and "passed" not in out.stdout.lower().replace("no gates were set", "")
    assert out.stdout.rstrip().endswith("nothing was checked (set --gate/--min-cosine/... or keep the task's default gates)")
    # random inputs say nothing about a task: its default gates are off, explicit ones still apply
    rnd = validate(ref, ref, None, ValidateConfig(gates=("nn_agreement>=100", "sqnr_db>=1e9")))
    assert [g["name"] for g in rnd["gates"]] == ["nn_agreement", "sqnr_db"] and rnd["verdict"] == "passed"


def test_task_override_and_user_gate(tmp_path):
    """--task overrides the guess; --gate names any metric; a gate on a metric the task lacks fails and says why."""
    ref = tmp_path / "r.onnx"
    onnx.save(ctc_recognizer(), str(ref))
    np.savez(tmp_path / "d.npz", feats=ctc_data(4))
    res = CliRunner().invoke(main, ["validate", str(ref), str(ref), "-d", str(tmp_path / "d.npz"), "--task", "generic",
                                    "--gate", "sqnr_db>=100", "--gate", "recall>=90", "--json"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 1 and doc["task"]["name"] == "generic" and doc["task"]["why"] == "set by the user"
    assert [g["passed"] for g in doc["gates"]] == [True, False]
    assert "the generic task does not measure 'recall'" in res.stderr


@needs_quantize
def test_convert_applies_the_gates_and_everyone_agrees(tmp_path):
    """Per-tensor int8 of a YOLO head (boxes ~100 px and scores <= 1 share one activation scale) keeps cosine
    near 1 and loses detections: convert exits 1 with the failed gates; the report, the API and validate agree."""
    model, data = tmp_path / "det.onnx", tmp_path / "val.npz"
    onnx.save(yolo_head(), str(model))
    np.savez(data, feats=rng_data((8, 256, 8)))
    cfg = PipelineConfig(simplify=SimplifyConfig(enabled=False), quant=QuantConfig(mode="static", per_channel=False, equalize=False),
                         validate_=ValidateConfig(min_cosine=0.99), bench=BenchConfig(runs=3, warmup=1))
    cfg = _no_speed_check(cfg)
    save_config(cfg, tmp_path / "cfg.json")
    res = CliRunner().invoke(main, ["convert", str(model), "-o", str(tmp_path / "out"), "-c", str(data), "-v", str(data),
                                    "--config", str(tmp_path / "cfg.json"), "--json"])
    assert res.exit_code == 1, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    api = json.loads(res.stdout)  # what pipeline.convert returned (the CLI only prints it and sets the exit code)
    assert api["accuracy"] == report["accuracy"] and api["accuracy"]["verdict"] == "failed"
    acc = AccuracyResult.from_dict(report["accuracy"])
    assert report["accuracy"]["stage"] == "int8" and acc.verdict == "failed"
    failed = [line for line in res.stderr.splitlines() if line.startswith("gate failed: ")]
    assert failed == [f"gate failed: {m}" for m in acc.failures()] and any("recall" in m for m in failed)
    assert next(g for g in report["accuracy"]["gates"] if g["name"] == "min_cosine")["passed"]
    assert report["task"]["name"] == "detection" and report["stages"][-1]["quantization"]["weights"] == "per-tensor"
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Gates on int8: <span class='bad'>failed</span>" in page and "How <code>int8</code> was made" in page
    assert page.count("<svg") == 2 and "detection F1 against FP32 %" in page  # plotted on the task's own measure
    # validate (API) on the written models gives the same verdicts and values
    again = validate(model, tmp_path / "out" / "det.int8.onnx", data, cfg.validate_)
    assert [(g["name"], g["passed"]) for g in again["gates"]] == [(g["name"], g["passed"]) for g in report["accuracy"]["gates"]]
    assert again["task"]["metrics"]["recall"] == pytest.approx(report["stages"][-1]["metrics"]["task_metrics"]["recall"])


def _no_speed_check(cfg: PipelineConfig) -> PipelineConfig:
    import dataclasses

    if any(f.name == "speed_check_seconds" for f in dataclasses.fields(QuantConfig)):  # the quantizer's speed guard
        cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, speed_check_seconds=0.0))
    return cfg


@needs_quantize
def test_fallback_search_optimizes_the_task_metric():
    from onnxcompress.data import Dataset
    from onnxcompress.quant.fallback import Budget, Evaluator, fallback_search

    m = yolo_head()
    calib = Dataset([{"feats": rng_data((8, 256, 8), seed=5)}], None, "c")
    val = Dataset([{"feats": rng_data((8, 256, 8))}], None, "v")
    ev = Evaluator(m, val, Budget(max_drop=2.0))
    assert ev.task == "detection" and ev.metric == "f1" and ev.reference_value == 100.0
    cfg = _no_speed_check(PipelineConfig(quant=QuantConfig(mode="static", per_channel=False, equalize=False))).quant
    q, rec = fallback_search(m, calib, val, cfg, Budget(max_drop=2.0), max_layers=1)
    fb = rec.stats["fallback"]
    assert fb["metric"] == "f1" and fb["steps"][0]["drop"] > 2.0  # all-int8 loses detections
    kept = [s["drop"] for s in fb["steps"] if s["kept"]]
    assert kept == sorted(kept, reverse=True) and fb["drop"] < fb["steps"][0]["drop"]  # each kept step: better F1
    assert fb["drop"] == pytest.approx(ev.drop(q))  # the recorded drop is the F1 drop of the kept model
