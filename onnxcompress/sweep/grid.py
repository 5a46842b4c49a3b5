"""A sweep grid: PipelineConfig keys (dotted, `quant.calibration`) mapped to lists of values, read from YAML or
JSON and checked like a config file (an unknown key or a wrong value is a one-line ConfigError naming it)."""
from __future__ import annotations

import dataclasses
import itertools
import json
import typing
from pathlib import Path
from typing import Any

from ..config import PipelineConfig, _key, from_dict, read_json_object, to_dict
from ..errors import ConfigError, MissingDependency

Grid = dict[str, list]  # "quant.calibration" -> [values], in file order


def read_grid(path: str | Path) -> Grid:
    """The grid file (.yaml/.yml or .json), flattened to dotted keys and checked against PipelineConfig."""
    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml"):
        data = _read_yaml(p)
    else:
        data = read_json_object(p, what="grid file", hint="pass an existing YAML or JSON file to --grid")
    return check_grid(data, where=f"grid file {p}")


def _read_yaml(p: Path) -> dict:
    try:
        import yaml
    except ImportError:
        raise MissingDependency(f"grid file {p} is YAML and PyYAML is not installed; pip install pyyaml, "
                                "or write the grid as JSON") from None
    if not p.is_file():
        raise ConfigError(f"grid file {p} not found; pass an existing YAML or JSON file to --grid")
    try:
        data = yaml.safe_load(p.read_text())
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"grid file {p} is not valid YAML ({first}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"grid file {p} must hold a mapping of config keys to lists of values")
    return data


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):  # nested form: {quant: {per_channel: [true, false]}}
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _field_type(key: str) -> Any:
    """The annotated type of a dotted PipelineConfig key; ConfigError naming the first unknown part."""
    cls: Any = PipelineConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {_key(f.name): f.name for f in dataclasses.fields(cls)}
        if part not in fields:
            where = ".".join(parts[:i])
            raise ConfigError(f"unknown grid key '{key}'; known keys{f' under {where!r}' if where else ''}: "
                              f"{', '.join(sorted(fields))}")
        tp = typing.get_type_hints(cls)[fields[part]]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"unknown grid key '{key}': '{'.'.join(parts[:i + 1])}' is a value, not a section")
            cls = tp
    return tp


def check_grid(data: dict, where: str = "grid") -> Grid:
    """Dotted keys -> non-empty lists; every key is a PipelineConfig field holding a value (not a section)."""
    flat = _flatten(data)
    if not flat:
        raise ConfigError(f"{where} is empty; map config keys to lists of values, e.g. prune.ratio: [0.0, 0.25]")
    grid: Grid = {}
    for key, values in flat.items():
        tp = _field_type(key)
        if dataclasses.is_dataclass(tp):
            raise ConfigError(f"grid key '{key}' is a section; name one of its values, e.g. '{key}."
                              f"{_key(dataclasses.fields(tp)[0].name)}'")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid key '{key}' must map to a non-empty list of values, e.g. [{json.dumps(values)}]")
        grid[key] = values
    return grid


def _set(d: dict, key: str, value: Any) -> None:
    *path, last = key.split(".")
    for part in path:
        d = d[part]
    d[last] = value


def expand(grid: Grid, base: PipelineConfig) -> list[tuple[dict[str, Any], PipelineConfig]]:
    """Every combination, in grid order: (the overrides, the PipelineConfig), each checked by config.from_dict
    (a wrong type or range is a ConfigError naming the key and its value)."""
    keys = list(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        overrides = dict(zip(keys, combo))
        d = to_dict(base)
        for k, v in overrides.items():
            _set(d, k, v)
        try:
            cfg = from_dict(PipelineConfig, d)
        except ConfigError as exc:
            raise ConfigError(f"grid values {label(overrides)}: {exc}") from None
        out.append((overrides, cfg))
    return out


def label(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items()) or "(base config)"

