"""evaluate.gates: gates are data, one evaluator, one result object; config round trip of the new fields."""
import pytest

from onnxcompress.config import PipelineConfig, TaskConfig, ValidateConfig, from_dict, to_dict
from onnxcompress.errors import AccuracyRegression, ConfigError
from onnxcompress.evaluate.gates import (AccuracyResult, Gate, evaluate, parse_gate, quantize_verdict,
                                         validation_gates)


def test_parse_and_evaluate():
    g = parse_gate(" recall >= 90 ")
    assert (g.name, g.metric, g.comparison, g.limit) == ("recall", "recall", ">=", 90.0)
    assert parse_gate("max_abs_error<1e-3").limit == 1e-3
    for bad in ("recall=>90", "recall>=", ">=3", "recall >= ninety"):
        with pytest.raises(ConfigError, match="is not METRIC>=NUMBER"):
            parse_gate(bad)
    res = evaluate({"recall": 85.0, "sqnr_db": 31.0}, [g, parse_gate("sqnr_db>30"), parse_gate("miou>=90")],
                   {"miou": "the output has one channel"})
    assert [r.passed for r in res.gates] == [False, True, False] and res.verdict == "failed" and res.passed is False
    assert res.gates[0].message == "recall: detection recall against FP32 85% < limit 90%"
    assert res.gates[1].message == "sqnr_db: SQNR 31 dB > limit 30 dB"
    assert res.gates[2].value is None and res.gates[2].message.endswith("is not available (the output has one channel)")
    back = AccuracyResult.from_dict(res.to_dict())
    assert back.to_dict() == res.to_dict() and back.failures() == res.failures()
    with pytest.raises(AccuracyRegression, match="recall gate failed: detection recall") as exc:
        res.raise_for_failures()
    assert exc.value.exit_code == 1 and "miou gate failed" in str(exc.value)


def test_no_gates_is_its_own_verdict():
    res = AccuracyResult()
    assert res.verdict == "no gates" and res.passed is None and res.failures() == []
    assert res.lines() == [res.headline()] and res.headline().startswith("no gates were set: nothing was checked")
    res.raise_for_failures()  # nothing to raise


def test_validation_gates_defaults_and_overrides():
    task = {"name": "detection", "metrics": {"recall": 95.0}, "default_gates": [["recall", ">=", 90.0], ["precision", ">=", 90.0]]}
    names = lambda gs: [(g.name, g.origin) for g in gs]  # noqa: E731
    assert names(validation_gates(ValidateConfig(), task)) == [("recall", "default (detection)"), ("precision", "default (detection)")]
    user = validation_gates(ValidateConfig(gates=("recall>=99",), min_cosine=0.99), task)
    assert names(user) == [("min_cosine", "user"), ("recall", "user"), ("precision", "default (detection)")]
    assert validation_gates(ValidateConfig(), task, real_data=False) == []
    assert validation_gates(ValidateConfig(default_gates=False), task) == []
    # max_drop: on by default where top-1 is measured; asked for explicitly it applies (and fails) anyway
    cls = {"name": "classification", "metrics": {"top1_drop": 0.5}, "default_gates": []}
    assert names(validation_gates(ValidateConfig(), cls)) == [("max_drop", "user")]
    assert validation_gates(ValidateConfig(require_labels=True), task)[0].metric == "top1_drop"


def test_quantize_verdict_from_the_record():
    stats = {"fusion": {"fused_share": 0.8},
             "auto": {"metric": "f1", "budget": 1.0, "chosen": "static",
                      "candidates": [{"mode": "static", "drop": 0.4}, {"mode": "dynamic", "drop": 3.0}]}}
    res = quantize_verdict(stats, True, "auto", require_fusion=0.95)
    assert [(g.gate.name, g.passed) for g in res.gates] == [("fusion", False), ("accuracy", True)]
    fb = {"fallback": {"metric": "top1", "budget": 0.5, "drop": 0.9, "excluded": ["a"], "stopped": "time budget"}}
    res = quantize_verdict(fb, True, "static")
    assert not res.passed and "top1 drop after 1 FP32 layers" in res.failures()[0]
    assert quantize_verdict({}, False, "static").verdict == "no gates"


def test_config_round_trip_with_task_and_gates():
    cfg = PipelineConfig(validate_=ValidateConfig(task=TaskConfig(name="detection", score_threshold=0.3, objectness=True),
                                                  gates=("recall>=95",), metric="m.py:f", default_gates=False))
    assert from_dict(PipelineConfig, to_dict(cfg)) == cfg
    for bad, msg in (({"validate": {"gates": ["recall=95"]}}, "is not METRIC>=NUMBER"),
                     ({"validate": {"task": {"name": "ocr"}}}, "task='ocr' is not valid"),
                     ({"validate": {"task": {"nms_iou": 2}}}, "nms_iou 2.0 is out of range"),
                     ({"validate": {"metric": "m.py"}}, "must be FILE.py:FUNCTION")):
        with pytest.raises(ConfigError, match=msg):
            from_dict(PipelineConfig, bad)
