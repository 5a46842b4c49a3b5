"""Task-aware metrics, one module per task, in a registry keyed by task name.

`TaskRun` streams (reference outputs, candidate outputs, labels) batches into the task metric (and an
optional user metric) and returns named floats; `guess_task` picks the task from the reference outputs
when the user did not name one, and says why, so the CLI can print the guess and how to override it.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ...config import TaskConfig
from ...errors import InputError
from .base import Outputs, TaskMetric, is_probability
from .classification import Classification
from .ctc import CTC
from .detection import Detection
from .embedding import Embedding
from .generic import Generic
from .segmentation import Segmentation

REGISTRY: dict[str, type[TaskMetric]] = {cls.name: cls for cls in
                                         (Classification, Detection, Segmentation, CTC, Embedding, Generic)}
COEFFICIENTS = {"cosine", "cosine_min", "rank_correlation"}  # in [-1, 1]; every other rate is in percent
EMBED_HINTS = ("embed", "pool", "sentence", "feature", "vector")
YOLOX_STRIDES = (8, 16, 32)
MAX_SEG_CLASSES = 256  # more channels than this over an image: a feature map (ADE20K has 150 classes, COCO-stuff 182)
UserFn = Callable[[Outputs, Outputs, Optional[np.ndarray]], dict]


def points(metric: str, value: float) -> float:
    """A metric value in points (percent scale) for drops and budgets: coefficients x100."""
    return 100.0 * value if metric in COEFFICIENTS else value


def words(metric: str) -> str:
    """A metric's name in words, for gate messages."""
    for cls in REGISTRY.values():
        if metric in cls.words:
            return cls.words[metric]
    return metric


def _yolo_like(y: np.ndarray) -> bool:
    """[N, anchors, 4+C(+1)] or transposed: many more anchors than attributes, non-negative widths and
    heights, scores in [0, 1]."""
    if y.ndim != 3 or min(y.shape[1:]) < 5 or max(y.shape[1:]) < 4 * min(y.shape[1:]):
        return False
    rows = np.swapaxes(y, 1, 2) if y.shape[1] < y.shape[2] else y
    return bool(np.all(rows[..., 2:4] >= 0) and is_probability(rows[..., 4:]))


def _yolox_raw(y: np.ndarray) -> bool:
    """[N, A, 5+C] whose anchor count is exactly the cells of strides 8/16/32 over a square input, with
    objectness and class scores in [0, 1], and box values that are small cell offsets and log sizes
    (decoded boxes reach the image size) (YOLOX exported without decoding)."""
    from .detection import yolox_grid

    return bool(y.shape[2] >= 6 and y.shape[1] > y.shape[2] and yolox_grid(y.shape[1], YOLOX_STRIDES) is not None
                and is_probability(y[..., 4:]) and np.abs(y[..., :4]).max(initial=0) < 16)


def _split_detection(outputs: Outputs, name: str) -> bool:
    from .detection import split_heads  # PicoDet-style: per level, scores [N, A, C] and boxes [N, A, 4k] apart

    levels = split_heads(outputs)
    return bool(levels) and any(name in pair for pair in levels)


def _distributions(y: np.ndarray) -> bool:
    """Rows over the last axis are probabilities (sum 1) or log-probabilities (logsumexp 0)."""
    y = y.astype(np.float64)
    if np.all(y >= -1e-4) and np.allclose(y.sum(-1), 1.0, atol=1e-2):
        return True
    m = y.max(-1, keepdims=True)
    return bool(np.allclose(np.log(np.exp(y - m).sum(-1)) + m[..., 0], 0.0, atol=1e-2))


def guess_task(outputs: Outputs, output: Optional[str] = None) -> tuple[str, str]:
    """(task, why) from the reference model's outputs on one batch."""
    name = output or next(iter(outputs))
    y = outputs[name]
    shape = list(y.shape)
    what = f"output '{name}' {shape}"
    squeezed = y.reshape(y.shape[:2]) if y.ndim > 2 and all(d == 1 for d in y.shape[2:]) else y
    if squeezed.ndim == 2:
        if squeezed.shape[1] < 2:
            return "generic", f"{what} has one value per sample: nothing to classify"
        if any(h in name.lower() for h in EMBED_HINTS):
            return "embedding", f"{what}: the name says embedding"
        norms = np.linalg.norm(squeezed.astype(np.float64), axis=1)
        if squeezed.shape[1] >= 16 and len(norms) and np.allclose(norms, 1.0, atol=1e-3):
            return "embedding", f"{what}: unit-length rows"
        return "classification", f"{what}: one score per class"
    if y.ndim == 3 and y.shape[2] >= 2 and _distributions(y):
        return "ctc", f"{what}: a class distribution per time step"
    if y.ndim == 3 and _split_detection(outputs, name):
        return "detection", f"{what}: one level of a split detection head (scores and boxes per level in separate outputs)"
    if y.ndim == 3 and _yolox_raw(y):
        return "detection", f"{what}: raw YOLOX grid outputs (strides {', '.join(map(str, YOLOX_STRIDES))})"
    if y.ndim == 3 and _yolo_like(y):
        return "detection", f"{what}: a YOLO-style box head (many anchors x (4 box values + class scores))"
    if y.ndim == 4 and min(y.shape[2:]) >= 4 and y.shape[1] <= MAX_SEG_CLASSES:
        kind = "a single-channel map" if y.shape[1] == 1 else f"{y.shape[1]} class maps"
        return "segmentation", f"{what}: {kind} over an image"
    return "generic", f"{what}: no task recognized, so tensors are compared"


def load_user_metric(spec: str) -> tuple[str, UserFn]:
    """'file.py:fn' -> fn(reference outputs, candidate outputs, labels) -> {name: float}."""
    path, _, fn = spec.rpartition(":")
    p = Path(path)
    if not path or not fn or p.suffix != ".py" or not p.is_file():
        raise InputError(f"metric '{spec}' is not FILE.py:FUNCTION of an existing file; e.g. --metric my_metric.py:score")
    mod_spec = importlib.util.spec_from_file_location(f"onnxcompress_user_metric_{p.stem}", p)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - user code: one line naming it
        raise InputError(f"cannot load the metric file {p} ({type(exc).__name__}: {str(exc)[:150]}); fix the file") from None
    func = getattr(module, fn, None)
    if not callable(func):
        raise InputError(f"{p} has no function '{fn}'; name a function defined in the file")
    return spec, func


def _concat(batches: list[Outputs]) -> Outputs:
    out: dict[str, Any] = {}
    for name in batches[0] if batches else []:
        parts = [b[name] for b in batches]
        same = all(p.shape[1:] == parts[0].shape[1:] for p in parts) and parts[0].ndim
        out[name] = np.concatenate(parts) if same else parts
    return out


class TaskRun:
    """One task metric (plus an optional user metric) fed batch by batch; `result()` -> dict."""

    def __init__(self, config: TaskConfig = TaskConfig(), user_metric: Optional[str] = None) -> None:
        self.config = config
        self.metric: Optional[TaskMetric] = None
        self.user = load_user_metric(user_metric) if user_metric else None
        self.kept: list[tuple[Outputs, Outputs]] = []
        self.labelled = False
        self.labels: list[np.ndarray] = []

    def start(self, ref: Outputs) -> TaskMetric:
        output = self.config.output or next(iter(ref))
        if output not in ref:
            raise InputError(f"task output '{output}' is not an output of the model ({', '.join(ref)}); "
                             "name one of them")
        if self.config.name == "auto":
            task, why = guess_task(ref, output)
            why = f"guessed from {why}; override with --task"
            if task == "detection" and "raw YOLOX" in why and not self.config.grid_strides:
                self.config = dataclasses.replace(self.config, grid_strides=YOLOX_STRIDES)
        else:
            task, why = self.config.name, "set by the user"
        self.metric = REGISTRY[task](self.config, output, why)
        return self.metric

    def update(self, ref: Outputs, cand: Outputs, labels: Optional[np.ndarray]) -> None:
        if self.metric is None:
            self.start(ref)
        self.metric.update(ref, cand, labels)
        self.labelled = self.labelled or labels is not None
        if self.user:
            self.kept.append((ref, cand))
            if labels is not None:
                self.labels.append(labels)

    def result(self) -> dict[str, Any]:
        if self.metric is None:
            return {"name": self.config.name, "why": "no data", "output": self.config.output, "metrics": {},
                    "unavailable": {}, "default_gates": []}
        metrics = self.metric.result()
        if self.user:
            metrics.update(self._user_metrics(metrics))
        return {"name": self.metric.name, "why": self.metric.why, "output": self.metric.output,
                "metrics": metrics, "unavailable": dict(self.metric.unavailable),
                "default_gates": [list(g) for g in self.metric.default_gates(self.labelled)]}

    def _user_metrics(self, taken: dict[str, float]) -> dict[str, float]:
        spec, fn = self.user
        ref = _concat([r for r, _ in self.kept])
        cand = _concat([c for _, c in self.kept])
        labels = np.concatenate(self.labels) if self.labels else None
        try:
            got = fn(ref, cand, labels)
        except Exception as exc:  # noqa: BLE001 - user code: one line naming it
            raise InputError(f"the metric {spec} raised {type(exc).__name__}: {str(exc)[:150]}; fix the metric") from None
        if not isinstance(got, dict):
            raise InputError(f"the metric {spec} returned {type(got).__name__}; return a dict of name -> float")
        out = {}
        for k, v in got.items():
            try:
                out[str(k)] = float(v)
            except (TypeError, ValueError):
                raise InputError(f"the metric {spec} returned {k!r}: {v!r}, not a number; return floats") from None
            if str(k) in taken:
                raise InputError(f"the metric {spec} returns '{k}', a name the {self.metric.name} task already "
                                 "uses; rename it")
            if math.isnan(out[str(k)]):
                raise InputError(f"the metric {spec} returned NaN for '{k}'; return a number")
        return out
