"""The sweep the sweep tests share: 2 tiny models (+ one broken file) x 2 configs, with two injected worker deaths.

Jobs, in plan order: 0 a/per-channel, 1 a/per-tensor (its worker is SIGKILLed once mid-job, in quantize),
2 b/per-channel, 3 b/per-tensor, 4 broken/per-channel (InputError), 5 broken/per-tensor (its worker is
SIGKILLed at the start of both attempts).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from conftest import make_data, tiny_cnn
from onnxcompress.config import load_config
from onnxcompress.sweep import plan, read_grid, run_sweep
from onnxcompress.sweep.faults import Faults, KillWorker

BASE = {"simplify": {"enabled": False},  # onnxsim imports torch: ~5 s per fresh worker on this machine
        "quant": {"mode": "static", "speed_check_seconds": 0, "calibration_samples": 32},
        "bench": {"runs": 10, "warmup": 1}}
GRID = "quant.per_channel: [true, false]\n"
KILLED_ONCE, KILLED_TWICE = 1, 5


def make_inputs(root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    onnx.save_model(tiny_cnn(0), str(root / "a.onnx"))
    onnx.save_model(tiny_cnn(1, channels=16), str(root / "b.onnx"))
    (root / "broken.onnx").write_bytes(b"not an onnx model")
    np.savez(root / "cal.npz", **make_data(32, seed=1))
    np.savez(root / "val.npz", **make_data(32, seed=2))
    (root / "grid.yaml").write_text(GRID)
    (root / "base.json").write_text(json.dumps(BASE))
    return {"models": [str(root / m) for m in ("a.onnx", "b.onnx", "broken.onnx")],
            "grid": str(root / "grid.yaml"), "base": str(root / "base.json"),
            "calibration": str(root / "cal.npz"), "validation": str(root / "val.npz")}


def args(inputs: dict, out: Path) -> tuple:
    return (inputs["models"], read_grid(inputs["grid"]), out, load_config(inputs["base"]))


def faults(inputs: dict, out: Path, markers: Path) -> Faults:
    specs = plan(*args(inputs, out), calibration=inputs["calibration"], validation=inputs["validation"])
    return Faults((KillWorker(specs[KILLED_ONCE].id, str(markers / "once"), stage="quantize"),
                   KillWorker(specs[KILLED_TWICE].id, str(markers / "twice"), stage="start", times=2)))


def run(inputs: dict, out: Path, markers: Path | None, **kw) -> tuple[dict, list]:
    """The sweep, with the two injected worker deaths unless `markers` is None."""
    events: list = []
    if markers is not None:
        markers.mkdir(parents=True, exist_ok=True)
    report = run_sweep(*args(inputs, out), calibration=inputs["calibration"], validation=inputs["validation"],
                       progress=events.append, fault=faults(inputs, out, markers) if markers else None, **kw)
    return report, events


TIMING = {"latency_ms", "fp32_latency_ms", "seconds"}


def without_timings(report: dict) -> dict:
    """The merged report minus what depends on the clock or the run: latencies, durations, the latency front,
    the backend and the run's own facts."""
    def clean(obj):
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if k not in TIMING | {"pareto_latency", "run", "files"}}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj
    return clean(report)
