"""The stage loop of `convert`: the stages a config yields, one typed record per stage, a failing stage named."""
import json

import numpy as np
import pytest

from onnxcompress.config import BenchConfig, PipelineConfig, PruneConfig, QuantConfig, SimplifyConfig, ValidateConfig
from onnxcompress.errors import InputError, PassError
from onnxcompress.passes.base import PassRecord, StageRecord
from onnxcompress.pipeline import convert
from onnxcompress.pipeline.stages import LoadOnnx, Prune, Quantize, Simplify, stages_for


def test_stages_for_follows_the_config(tiny_model_path):
    names = [s.name for s in stages_for(PipelineConfig(), tiny_model_path)]
    assert names == ["load", "simplify", "quantize"]
    cfg = PipelineConfig(simplify=SimplifyConfig(enabled=False), prune=PruneConfig(enabled=True, ratio=0.25),
                         quant=QuantConfig(enabled=False))
    assert [type(s) for s in stages_for(cfg, tiny_model_path)] == [LoadOnnx, Prune]
    assert [type(s) for s in stages_for(PipelineConfig(), tiny_model_path)][1:] == [Simplify, Quantize]


def test_convert_on_a_tiny_model_yields_the_stages_with_typed_records(tmp_path, tiny_model_path, tiny_data_path):
    said = []
    out = tmp_path / "out"
    report = convert(tiny_model_path, out, PipelineConfig(bench=BenchConfig(runs=3, warmup=1)), tiny_data_path,
                     tiny_data_path, progress=said.append)
    assert [s["name"] for s in report["stages"]] == ["fp32", "simplified", "int8"]
    assert said[:2] == ["simplify", "quantize"] and "validate" in said and "bench" in said  # the load is not announced
    fp32, simp, q = report["stages"]
    assert fp32["record"] is None and fp32["path"] == str(tiny_model_path)
    for st in (simp, q):  # typed fields: names, counts by kind, files written
        rec = st["record"]
        assert set(rec) == {"name", "changed", "counts", "files", "skipped", "stats"}
        assert all(isinstance(v, int) for v in rec["counts"].values()) and rec["files"] == []
    assert json.loads((out / "report.json").read_text())["stages"][2]["record"]["name"] == "quantize"
    assert all((out / n).exists() for n in ("tiny.simplified.onnx", "tiny.int8.onnx"))


def test_a_failing_stage_is_reported_with_its_name(tmp_path, tiny_model_path, tiny_data_path, monkeypatch):
    import onnxcompress.passes.simplify as simplify

    def broken(model):
        raise ValueError("boom")

    monkeypatch.setattr(simplify, "simplify", broken)
    with pytest.raises(PassError, match=r"stage 'simplify' failed: ValueError: boom \(stages run before it: fp32\)"):
        convert(tiny_model_path, tmp_path / "out", PipelineConfig(quant=QuantConfig(enabled=False)), tiny_data_path)


def test_library_errors_keep_their_class(tmp_path, tiny_model_path):
    with pytest.raises(InputError, match="calibration"):
        convert(tiny_model_path, tmp_path / "out", PipelineConfig(quant=QuantConfig(mode="static")))


def test_quantize_aims_at_validate_without_editing_either_config():
    cfg = PipelineConfig(validate_=ValidateConfig(max_drop=0.5))
    q = cfg.quant_aim(labels=True)
    assert (q.max_drop, q.metric) == (0.5, "top1") and cfg.quant.max_drop is None and cfg.quant.metric == "auto"
    assert cfg.quant_aim(labels=False) == cfg.quant
    assert PipelineConfig(quant=QuantConfig(max_drop=2.0)).quant_aim(True).max_drop == 2.0


def test_stage_record_to_dict(tmp_path):
    rec = PassRecord("p", changed=["a"], counts={"Mul removed": 2}, files=[str(tmp_path / "m.onnx")])
    d = StageRecord("pruned", tmp_path / "m.onnx", rec, seconds=1.23456, metrics={"x": np.float64(1.0)}).to_dict()
    assert d["seconds"] == 1.235 and d["record"]["counts"] == {"Mul removed": 2} and d["path"].endswith("m.onnx")
