"""The grid is checked like a config file, and a job's id changes with anything that changes its result."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from onnxcompress.cli import main
from onnxcompress.config import PipelineConfig
from onnxcompress.errors import ConfigError, InputError
from onnxcompress.sweep import check_grid, expand, plan, read_grid
from sweep_case import make_inputs


def test_dotted_and_nested_keys(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("quant:\n  per_channel: [true, false]\nprune.ratio: [0.0, 0.25]\nvalidate.task.name: [classification]\n")
    grid = read_grid(p)
    assert grid == {"quant.per_channel": [True, False], "prune.ratio": [0.0, 0.25],
                    "validate.task.name": ["classification"]}
    configs = expand(grid, PipelineConfig())
    assert len(configs) == 4
    assert [(c.quant.per_channel, c.prune.ratio) for _, c in configs] == [(True, 0.0), (True, 0.25), (False, 0.0), (False, 0.25)]
    assert all(c.validate_.task.name == "classification" for _, c in configs)
    (tmp_path / "g.json").write_text(json.dumps({"quant.calibration": ["minmax", "entropy"]}))
    assert read_grid(tmp_path / "g.json") == {"quant.calibration": ["minmax", "entropy"]}


@pytest.mark.parametrize("grid, words", [
    ({"quant.methd": ["minmax"]}, "unknown grid key 'quant.methd'; known keys under 'quant': activation_type"),
    ({"qaunt.per_channel": [True]}, "unknown grid key 'qaunt.per_channel'; known keys: bench"),
    ({"quant.per_channel.x": [True]}, "'quant.per_channel' is a value, not a section"),
    ({"quant.task": [{}]}, "grid key 'quant.task' is a section"),
    ({"prune.ratio": 0.5}, "grid key 'prune.ratio' must map to a non-empty list of values, e.g. [0.5]"),
    ({"prune.ratio": []}, "must map to a non-empty list"),
])
def test_bad_keys(grid, words):
    with pytest.raises(ConfigError) as exc:
        check_grid(grid)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="grid values quant.per_channel=\"yes\": config key 'quant.per_channel' must be bool"):
        expand(check_grid({"quant.per_channel": ["yes"]}), PipelineConfig())
    with pytest.raises(ConfigError, match="prune ratio 1.5 is out of range"):
        expand(check_grid({"prune.ratio": [0.5, 1.5]}), PipelineConfig())


def test_job_ids(tmp_path):
    inp = make_inputs(tmp_path / "in")
    grid = check_grid({"quant.per_channel": [True, False]})
    a, b = inp["models"][:2]
    first = plan([a, b, a], grid, tmp_path / "out", calibration=inp["calibration"])
    assert len(first) == 4  # the same model twice is the same jobs
    again = plan([a, b], grid, tmp_path / "out", calibration=inp["calibration"])
    assert [s.id for s in first] == [s.id for s in again]
    assert len({s.id for s in first}) == 4
    # other data: other jobs; per-model data over the data for all
    np.savez(tmp_path / "cal2.npz", input=np.zeros((4, 1, 8, 8), np.float32))
    other = plan([a, b], grid, tmp_path / "out", per_model={"a": (str(tmp_path / "cal2.npz"), None)},
                 calibration=inp["calibration"])
    assert [s.id == t.id for s, t in zip(first, other)] == [False, False, True, True]
    assert other[0].calibration == str(tmp_path / "cal2.npz") and other[2].calibration == inp["calibration"]
    with pytest.raises(InputError, match="--data c=... matches no model"):
        plan([a, b], grid, tmp_path / "out", per_model={"c": ("x.npz", None)})
    with pytest.raises(InputError, match="calibration data .*missing.npz not found"):
        plan([a], grid, tmp_path / "out", calibration=str(tmp_path / "missing.npz"))


def test_cli_unknown_grid_key_is_one_line_exit_2(tmp_path):
    inp = make_inputs(tmp_path / "in")
    (tmp_path / "bad.yaml").write_text("quant.methd: [minmax, entropy]\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["sweep", *inp["models"][:2], "--grid", str(tmp_path / "bad.yaml"), "-o", str(out)])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: unknown grid key 'quant.methd'") and res.stderr.count("\n") == 1
    assert not out.exists()


def test_cli_threads_over_the_cpus_per_job_is_exit_2(tmp_path):
    inp = make_inputs(tmp_path / "in")
    (tmp_path / "g.yaml").write_text("bench.threads: [[1], [2]]\n")
    res = CliRunner().invoke(main, ["sweep", inp["models"][0], "--grid", str(tmp_path / "g.yaml"), "-o",
                                    str(tmp_path / "out")])
    assert res.exit_code == 2 and "bench.threads 2 is more than the 1 CPU(s) each job gets" in res.stderr
    assert not (tmp_path / "out" / "jobs").exists()
