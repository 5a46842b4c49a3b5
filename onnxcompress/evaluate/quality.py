"""A transformed model's quality against the model it came from, by the task's own metric, with gates:
one function for `quantize` and `prune` (the same tasks and gate evaluator as `validate`).

With validation data the user's gates (and the task's defaults) decide, and a failure is exit 1. Without
it, the damage is measured on up to 64 calibration samples and a failed default gate is a warning: a
silent pass is worse (a real YOLOv8n kept 0 of 5 FP32 detections at cosine 0.998; a mel-spectrogram
front end fell to cosine 0.84). Calibration samples are not held out: the figure is the damage the
transformation did, not a generalization estimate, and the record says which data it was measured on.
"""
from __future__ import annotations

from typing import Any, Optional

import onnx

from ..config import TaskConfig, ValidateConfig
from ..data import Dataset
from .gates import evaluate_comparison, validation_gates
from ..runtime.budget import run_batch
from ..runtime.session import make_session
from .validate import compare_sessions

CALIBRATION_SAMPLES = 64  # enough for detection recall / agreement to say "broken"; two ORT runs over them


def against_reference(model: onnx.ModelProto, candidate: onnx.ModelProto, data: Optional[Dataset],
                      task: TaskConfig = TaskConfig(), gates: tuple[str, ...] = (), held_out: bool = False,
                      samples: Optional[int] = None) -> Optional[dict[str, Any]]:
    """{"samples", "data", "task", "metrics", "gates", "passed", "failures"} of `candidate` against `model`
    on `data` (`held_out`: validation data; else calibration data, at most CALIBRATION_SAMPLES), with the
    task's default gates plus `gates` ('recall>=95', ...). None when there is no data."""
    if data is None or len(data) == 0:
        return None
    limit = samples or (len(data) if held_out else CALIBRATION_SAMPLES)
    part = data.take(min(limit, len(data)))
    batch = run_batch(model, part, 64)  # the model's working set x batch within the data's memory budget
    result = compare_sessions(make_session(model), make_session(candidate), part, batch, task=task)
    info = result.get("task") or {}
    verdict = evaluate_comparison(result, validation_gates(ValidateConfig(gates=tuple(gates)), info))  # as validate
    return {"samples": result.get("samples", len(part)),
            "data": "validation" if held_out else "calibration (no -v given)",
            "task": info.get("name"), "why": info.get("why"),
            "metrics": {k: v for k, v in info.get("metrics", {}).items() if not k.startswith("reference_")},
            "gates": verdict.to_dict()["gates"], "passed": verdict.passed, "failures": verdict.failures()}


def quality_lines(quality: Optional[dict[str, Any]], what: str, hint: str) -> list[str]:
    """The CLI's lines for a quality record: the metrics, then one `warning:` (calibration data) or
    `FAIL` (validation data) line per failed gate."""
    if quality is None:
        return [f"warning: {what} quality not measured: no data; pass -c or -v to measure it against the input model"]
    shown = ", ".join(f"{k} {v:.4g}" for k, v in list(quality["metrics"].items())[:4])
    on = "validation" if quality["data"] == "validation" else "calibration"
    lines = [f"quality on {quality['samples']} {on} samples ({quality['task']} vs the input model): {shown}"]
    if on == "calibration":
        lines += [f"warning: {line} (on calibration data; {hint})" for line in quality["failures"]]
    else:
        lines += [("PASS " if g["passed"] else "FAIL ") + g["message"] for g in quality["gates"]]
    return lines
