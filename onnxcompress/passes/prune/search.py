"""The prune gate: the largest reduction whose accuracy drop stays within a budget, by bisection.

The knob is the target (fraction of MACs or parameters kept; or the --ratio, when that is what was asked):
the most aggressive value is tried first, then bisection between the last failing and the last passing
value (the unpruned model passes by definition). Every candidate is judged by the gate evaluator `validate`
uses (compare_sessions -> validation_gates -> evaluate_comparison) on the validation data: with labels the
top-1 (or mAP/accuracy) drop is gated at `max_drop` points, without them the agreement-like metric is gated
at 100 - max_drop; the task's other default gates and the user's --gate expressions apply as in validate.
Each passing candidate better than the last is handed to `on_best` (the CLI writes it, atomically, through
the back door), so a search stopped early leaves the best model so far. The sensitivity measurement is
made once (allocate.Planner) and reused by every candidate.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import onnx

from ...config import PruneConfig, TaskConfig, ValidateConfig
from ...data import Dataset
from ...evaluate.gates import AccuracyResult, Gate, evaluate_comparison, parse_gate, validation_gates
from ...runtime.session import make_session
from ...evaluate.validate import compare_sessions
from ..base import PassRecord
from .allocate import Planner

DROP_METRICS = ("top1_drop", "map50_drop", "accuracy_drop")  # labelled tasks: points below FP32
AGREEMENT_METRICS = ("agreement", "char_agreement", "pixel_agreement", "recall", "nn_agreement")  # % of FP32
DEFAULT_LOWEST = 0.5  # with no target or ratio given, the search goes down to half the MACs


def drop_gates(result: dict[str, Any], max_drop: Optional[float], user: tuple[str, ...]) -> list[Gate]:
    """validate's gates for one comparison, with the budget as the drop gate: `max_drop` points on the
    task's drop metric (labels), else on its agreement with FP32 (100 - max_drop); a user gate on the same
    metric wins."""
    task = result.get("task") or {}
    metrics = task.get("metrics", {})
    extra: list[str] = []
    if max_drop is not None and not any(m in metrics for m in DROP_METRICS):
        named = {parse_gate(g).metric for g in user}
        agree = next((m for m in AGREEMENT_METRICS if m in metrics and m not in named), None)
        if agree is not None:
            extra.append(f"{agree}>={100.0 - max_drop:g}")
    cfg = ValidateConfig(max_drop=max_drop if max_drop is not None else 1.0, gates=tuple(user) + tuple(extra))
    return validation_gates(cfg, task)


def drop_of(result: dict[str, Any]) -> Optional[float]:
    """The measured drop in points: of the drop metric, else 100 - agreement."""
    metrics = (result.get("task") or {}).get("metrics", {})
    for m in DROP_METRICS:
        if m in metrics:
            return float(metrics[m])
    for m in AGREEMENT_METRICS:
        if m in metrics:
            return 100.0 - float(metrics[m])
    return None


@dataclass
class Candidate:
    amount: float  # the target (fraction kept) or ratio tried
    reached: Optional[float]  # MACs (or params) kept, measured on the result
    drop: Optional[float]
    verdict: AccuracyResult
    quality: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"amount": self.amount, "reached": self.reached, "drop": self.drop, "passed": self.verdict.passed,
                "failures": self.verdict.failures()}


@dataclass
class SearchResult:
    knob: str  # "target_macs" | "target_params" | "ratio"
    tried: list[Candidate] = field(default_factory=list)
    best: Optional[Candidate] = None
    best_model: Optional[onnx.ModelProto] = None
    best_record: Optional[PassRecord] = None

    def to_dict(self) -> dict[str, Any]:
        return {"knob": self.knob, "tried": [c.to_dict() for c in self.tried],
                "best": None if self.best is None else self.best.to_dict()}


def _knob(config: PruneConfig) -> tuple[str, float, float]:
    """(config field searched, its most aggressive value, its identity value)."""
    if config.target_params is not None:
        return "target_params", config.target_params, 1.0
    if config.target_latency is not None:
        return "target_latency", config.target_latency, 1.0
    if config.target_macs is not None:
        return "target_macs", config.target_macs, 1.0
    if config.ratio > 0:
        return "ratio", config.ratio, 0.0
    return "target_macs", DEFAULT_LOWEST, 1.0


def search(model: onnx.ModelProto, config: PruneConfig, validation: Dataset, calibration: Any = None,
           task: TaskConfig = TaskConfig(), gates: tuple[str, ...] = (), feed: Any = None, input_shapes: Any = None,
           progress: Optional[Callable[[int, int, str], None]] = None,
           on_best: Optional[Callable[[onnx.ModelProto, PassRecord, Candidate], None]] = None) -> SearchResult:
    """Bisection on the target for the largest reduction whose drop is within config.max_drop (see the
    module docstring). `on_best(model, record, candidate)` is called with each better passing model."""
    from . import prune_model

    from ...data import example_feed

    say = progress or (lambda done, total, what: None)
    if feed is None and calibration is not None:  # as prune_model: MACs are counted on one run of the data
        feed = example_feed(calibration, 1, model) if hasattr(calibration, "batches") else next(iter(calibration), None)
    knob, aggressive, identity = _knob(config)
    base = dataclasses.replace(config, **{knob: aggressive})
    planner: Optional[Planner] = None
    reference = make_session(model)
    out = SearchResult(knob)
    total = config.search_steps + 1

    def attempt(amount: float) -> bool:
        nonlocal planner
        cfg = dataclasses.replace(base, **{knob: amount})
        say(len(out.tried), total, f"gate: trying {knob} {amount:.3f}")
        if knob != "ratio" and planner is None:
            planner = Planner(model, cfg, calibration, _macs_counter(feed, input_shapes), feed, input_shapes, say)
        pruned, rec = prune_model(model, cfg, calibration=calibration, progress=say, feed=feed,
                                  input_shapes=input_shapes, planner=planner)
        result = compare_sessions(reference, make_session(pruned), validation, task=task)
        verdict = evaluate_comparison(result, drop_gates(result, config.max_drop, gates))
        s = rec.stats
        reached = s.get("reached")
        if reached is None and s.get("macs_before"):
            reached = (s.get("macs_after") or 0) / s["macs_before"]
        info = result.get("task") or {}
        quality = {"samples": result.get("samples"), "data": "validation", "task": info.get("name"),
                   "why": info.get("why"), "metrics": {k: v for k, v in info.get("metrics", {}).items()
                                                       if not k.startswith("reference_")},
                   "gates": verdict.to_dict()["gates"], "passed": verdict.passed, "failures": verdict.failures()}
        cand = Candidate(amount, reached, drop_of(result), verdict, quality)
        out.tried.append(cand)
        if verdict.passed is not False and _better(cand, out.best, knob):
            out.best, out.best_model, out.best_record = cand, pruned, rec
            if on_best is not None:
                on_best(pruned, rec, cand)
        return verdict.passed is not False

    fail, ok = aggressive, identity
    if not attempt(aggressive):
        for _ in range(config.search_steps):
            mid = (fail + ok) / 2
            if attempt(mid):
                ok = mid
            else:
                fail = mid
    say(total, total, "gate: done")
    return out


def _better(cand: Candidate, best: Optional[Candidate], knob: str) -> bool:
    """A smaller model than the best so far: by what was reached (two targets may give the same model), else
    by the amount asked."""
    if best is None:
        return True
    if cand.reached is not None and best.reached is not None:
        return cand.reached < best.reached - 1e-12
    return cand.amount > best.amount if knob == "ratio" else cand.amount < best.amount


def _macs_counter(feed: Any, input_shapes: Any):
    from ...stats import macs_or_none

    return lambda m: macs_or_none(m, feed, input_shapes)[0]
