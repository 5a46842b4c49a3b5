import dataclasses
import json

import pytest

from onnxcompress.config import PipelineConfig, PruneConfig, QuantConfig, from_dict, load_config, save_config, to_dict
from onnxcompress.errors import ConfigError


def test_round_trip_through_file(tmp_path):
    cfg = PipelineConfig(quant=QuantConfig(calibration="percentile", exclude=("conv1",)),
                         prune=PruneConfig(enabled=True, ratio=0.5))
    p = tmp_path / "cfg.json"
    save_config(cfg, p)
    back = load_config(p)
    assert back == cfg
    assert json.loads(p.read_text())["version"] == 1
    assert json.loads(p.read_text())["validate"]["max_drop"] == 1.0


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        QuantConfig().mode = "dynamic"  # type: ignore[misc]


@pytest.mark.parametrize("data, needle", [
    ({"quant": {"modee": "static"}}, "quant.modee"),
    ({"bogus": 1}, "'bogus'"),
    ({"quant": {"batch_size": "32"}}, "quant.batch_size"),
    ({"prune": {"ratio": 1.5}}, "ratio"),
    ({"quant": {"calibration": "magic"}}, "magic"),
    ({"version": 99}, "version 99"),
    ({"bench": {"threads": 2}}, "bench.threads"),
])
def test_bad_config_names_the_key(data, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("'", "'")):
        from_dict(PipelineConfig, data)


def test_int_is_accepted_for_float_and_lists_become_tuples():
    cfg = from_dict(PipelineConfig, {"prune": {"ratio": 0}, "bench": {"threads": [1, 2]}})
    assert cfg.prune.ratio == 0.0 and isinstance(cfg.prune.ratio, float)
    assert cfg.bench.threads == (1, 2)
    assert to_dict(cfg)["bench"]["threads"] == [1, 2]


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)


def test_quant_settings_live_in_the_config_and_round_trip(tmp_path):
    q = QuantConfig()
    assert (q.fallback_samples, q.bias_samples) == (1000, 256)
    cfg = PipelineConfig(quant=QuantConfig(fallback_samples=300, bias_samples=64))
    save_config(cfg, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == cfg
    with pytest.raises(ConfigError, match="fallback_samples"):
        from_dict(PipelineConfig, {"quant": {"fallback_samples": 0}})
