"""Quality of a quantized model when the user gave no validation data: the task's own metric against
FP32 on (a slice of) the calibration data, with the task's default gates.

Without `-v` nothing searches for a better model, but a silent pass is worse than a warning: a real
YOLOv8n kept 0 of 5 FP32 detections at cosine 0.998, a mel-spectrogram front end fell to cosine 0.84.
The same metrics and gates as `validate` (evaluate.tasks, evaluate.gates); the record says which data
it was measured on (calibration samples are not held out: the figure is the quantization damage, not
a generalization estimate).
"""
from __future__ import annotations

from typing import Any, Optional

import onnx

from ..config import ValidateConfig
from ..data import Dataset
from ..evaluate.gates import evaluate_comparison, validation_gates
from ..evaluate.runner import make_session
from ..evaluate.validate import compare_sessions

SAMPLES = 64  # enough for detection recall / agreement to say "broken"; two ORT runs over them


def calibration_quality(model: onnx.ModelProto, qmodel: onnx.ModelProto, data: Dataset, config,
                        samples: int = SAMPLES) -> Optional[dict[str, Any]]:
    """{"samples", "task", "metrics", "gates", "passed"} of `qmodel` against `model` on `data` (QuantConfig's
    task; with labels, top-1 too), or None when there is nothing to run."""
    if data is None or len(data) == 0:
        return None
    part = data.take(min(samples, len(data)))
    result = compare_sessions(make_session(model), make_session(qmodel), part, task=config.task)
    task = result.get("task") or {}
    verdict = evaluate_comparison(result, validation_gates(ValidateConfig(max_drop=None), task, real_data=True))
    return {"samples": result.get("samples", len(part)), "data": "calibration (no -v given)",
            "task": task.get("name"), "why": task.get("why"),
            "metrics": {k: v for k, v in task.get("metrics", {}).items() if not k.startswith("reference_")},
            "gates": verdict.to_dict()["gates"], "passed": verdict.passed, "failures": verdict.failures()}
