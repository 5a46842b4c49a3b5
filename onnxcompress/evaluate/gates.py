"""One gate evaluator for every command (validate, quantize, convert, the Python API, the report).

Run first, compare afterwards (Polygraphy's run -> compare -> AccuracyResult): the metrics are measured
elsewhere; here a gate is data (name, metric, comparison, limit) and `evaluate` turns gates plus
measured values into one `AccuracyResult` (each gate with its value and verdict). The CLI, the pipeline
and the report read that object or its dict; nobody works out a verdict on their own.

With no gates set the verdict is "no gates": nothing says "passed" when nothing was checked. A gate
whose metric was not measured fails and says why (a gate that silently passes is worse than none).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from ..config import gate_syntax
from ..errors import AccuracyRegression

COMPARISONS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
PERCENT = {"top1", "top5", "agreement", "recall", "precision", "f1", "map50", "pixel_agreement", "miou", "iou",
           "sequence_accuracy", "char_agreement", "accuracy", "nn_agreement", "reference_top1", "reference_map50"}
UNITS = {"top1_drop": " points", "map50_drop": " points", "accuracy_drop": " points", "size_bytes": " bytes",
         "sqnr_db": " dB", "fused_share": "", "latency_ratio": ""}
# the named gates of ValidateConfig: config field -> (metric, comparison)
CONFIG_GATES = {"max_drop": ("top1_drop", "<="), "min_agreement": ("agreement", ">="), "min_cosine": ("cosine", ">="),
                "max_size": ("size_bytes", "<="), "max_latency_ratio": ("latency_ratio", "<=")}
EXTRA_WORDS = {"size_bytes": "candidate size", "latency_ratio": "latency ratio candidate/reference",
               "fused_share": "share of the quantized MACs on int8 kernels", "drop": "accuracy drop"}


@dataclass(frozen=True)
class Gate:
    name: str
    metric: str
    comparison: str  # one of COMPARISONS
    limit: float
    origin: str = "user"  # "user" | "default (<task>)" | "quantize"
    what: str = ""  # the metric in words (default: from the task that measures it)

    def words(self) -> str:
        from .tasks import words

        return self.what or EXTRA_WORDS.get(self.metric) or words(self.metric)

    def unit(self) -> str:
        return "%" if self.metric in PERCENT else UNITS.get(self.metric, "")


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: Optional[float]
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        g = self.gate
        return {"name": g.name, "metric": g.metric, "comparison": g.comparison, "limit": g.limit, "value": self.value,
                "passed": self.passed, "origin": g.origin, "message": self.message}


@dataclass(frozen=True)
class AccuracyResult:
    """Every gate with its measured value and verdict."""

    gates: tuple[GateResult, ...] = ()

    @property
    def verdict(self) -> str:
        if not self.gates:
            return "no gates"
        return "passed" if all(g.passed for g in self.gates) else "failed"

    @property
    def passed(self) -> Optional[bool]:
        """True / False, or None when no gate was set."""
        return None if not self.gates else all(g.passed for g in self.gates)

    def failures(self) -> list[str]:
        return [g.message for g in self.gates if not g.passed]

    def headline(self) -> str:
        if not self.gates:
            return "no gates were set: nothing was checked (set --gate/--min-cosine/... or keep the task's default gates)"
        bad = len(self.failures())
        return f"FAILED: {bad} of {len(self.gates)} gates" if bad else f"passed: all {len(self.gates)} gates"

    def lines(self) -> list[str]:
        return [("PASS " if g.passed else "FAIL ") + g.message for g in self.gates] + [self.headline()]

    def raise_for_failures(self, suffix: str = "") -> None:
        """AccuracyRegression (exit 1), one line naming every failed gate, for callers that want an exception."""
        bad = [g for g in self.gates if not g.passed]
        if bad:
            raise AccuracyRegression("; ".join(f"{g.gate.name} gate failed: {g.message.removeprefix(g.gate.name + ': ')}"
                                               for g in bad) + suffix)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "passed": self.passed, "gates": [g.to_dict() for g in self.gates]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AccuracyResult":
        return cls(tuple(GateResult(Gate(g["name"], g["metric"], g["comparison"], g["limit"], g.get("origin", "user")),
                                    g["value"], g["passed"], g["message"]) for g in d.get("gates", [])))


def parse_gate(text: str, origin: str = "user") -> Gate:
    """'recall>=90' -> Gate(name='recall', metric='recall', comparison='>=', limit=90.0)."""
    metric, comparison, limit = gate_syntax(text)
    return Gate(metric, metric, comparison, limit, origin)


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def check(gate: Gate, value: Optional[float], why_missing: str = "") -> GateResult:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        reason = why_missing or "not measured on this data"
        return GateResult(gate, None, False, f"{gate.name}: {gate.words()} is not available ({reason})")
    ok = bool(COMPARISONS[gate.comparison](value, gate.limit))
    opposite = {">=": "<", "<=": ">", ">": "<=", "<": ">="}[gate.comparison]
    unit = gate.unit()
    return GateResult(gate, float(value), ok, f"{gate.name}: {gate.words()} {_fmt(value)}{unit} "
                      f"{gate.comparison if ok else opposite} limit {_fmt(gate.limit)}{unit}")


def evaluate(values: dict[str, Optional[float]], gates: Iterable[Gate],
             unavailable: Optional[dict[str, str]] = None) -> AccuracyResult:
    """Each gate against the measured `values` (metric -> value); `unavailable`: metric -> why it
    was not measured (the failing gate says so)."""
    missing = unavailable or {}
    return AccuracyResult(tuple(check(g, values.get(g.metric), missing.get(g.metric, "")) for g in gates))


def validation_gates(config, task: dict[str, Any], real_data: bool = True) -> list[Gate]:
    """The gates of a ValidateConfig for one comparison: the named ones (max_drop only where top-1 is
    measured, unless it was asked for explicitly), the --gate expressions, then the task's defaults
    (config.default_gates, real data only: random inputs say nothing about a task) on the metrics no
    user gate names."""
    gates: list[Gate] = []
    for field, (metric, comparison) in CONFIG_GATES.items():
        limit = getattr(config, field)
        if limit is None:
            continue
        if field == "max_drop" and "top1_drop" not in task.get("metrics", {}) and not config.require_labels:
            continue  # the top-1 gate is on by default, and applies only where labels give top-1
        gates.append(Gate(field, metric, comparison, float(limit)))
    gates += [parse_gate(t) for t in config.gates]
    if config.default_gates and real_data:
        named = {g.metric for g in gates}
        origin = f"default ({task.get('name')})"
        gates += [Gate(m, m, op, float(limit), origin) for m, op, limit in task.get("default_gates", []) if m not in named]
    return gates


def comparison_values(result: dict[str, Any]) -> dict[str, Optional[float]]:
    """A compare result (validate's or a pipeline stage's) -> metric name -> value, for `evaluate`:
    the task metrics, then the closeness of the task's output (cosine, SQNR, errors), size and latency."""
    task = result.get("task") or {}
    values: dict[str, Optional[float]] = dict(task.get("metrics", {}))
    outputs = result.get("outputs") or {}
    closeness = outputs.get(task.get("output")) or next(iter(outputs.values()), {})
    for k, v in closeness.items():
        values.setdefault(k, v)
    for k in ("size_bytes", "latency_ratio"):
        if result.get(k) is not None:
            values[k] = result[k]
    return values


def evaluate_comparison(result: dict[str, Any], gates: Iterable[Gate]) -> AccuracyResult:
    """`evaluate` on a compare result; a gate on a metric the task does not measure says which it does."""
    values = comparison_values(result)
    task = result.get("task") or {}
    missing = dict(task.get("unavailable", {}))
    measured = ", ".join(sorted(k for k in task.get("metrics", {}) if not k.startswith("reference_")))
    gates = list(gates)
    for g in gates:
        if g.metric not in values and g.metric not in missing:
            missing[g.metric] = (f"the {task.get('name', '?')} task does not measure '{g.metric}'"
                                 + (f"; it measures {measured}" if measured else ""))
    return evaluate(values, gates, missing)


def stage_verdicts(stages: list[dict[str, Any]], compared: dict[str, dict[str, Any]], config) -> dict[str, Any]:
    """The pipeline's gates (ValidateConfig `config`) on every stage after the first, against FP32:
    each stage dict gets "gates" (AccuracyResult.to_dict()); returns the last stage's, which decides
    `convert`'s exit code, with its stage name. `compared`: stage name -> compare result (validation
    data given), else accuracy gates fail as not measured; latency ratio from the bench of the stages."""
    base = stages[0]["metrics"]
    last: dict[str, Any] = AccuracyResult().to_dict()
    for st in stages[1:]:
        m = st["metrics"]
        cmp = compared.get(st["name"])
        task = (cmp or {}).get("task") or {"name": "unvalidated", "metrics": {}, "unavailable": {}, "default_gates": []}
        gates = validation_gates(config, task, real_data=cmp is not None)
        values = {**(cmp or {}), "size_bytes": m.get("size_bytes")}
        if isinstance(m.get("latency_ms"), (int, float)) and isinstance(base.get("latency_ms"), (int, float)) \
                and base["latency_ms"] > 0:
            values["latency_ratio"] = m["latency_ms"] / base["latency_ms"]
        if cmp is None:
            values["task"] = {**task, "unavailable": {g.metric: "convert got no validation data; pass --validation DATA"
                                                      for g in gates}}
        result = evaluate_comparison(values, gates)
        st["gates"] = result.to_dict()
        last = {**result.to_dict(), "stage": st["name"]}
    return last


def quantize_verdict(stats: dict[str, Any], max_drop_set: bool, mode: str,
                     require_fusion: Optional[float] = None) -> AccuracyResult:
    """The quantize command's gates, from its PassRecord stats: the fusion share (require_fusion) and the
    accuracy budget (max_drop: the kept model's drop, from the fallback search or auto mode's choice)."""
    results: list[GateResult] = []
    if require_fusion is not None:
        share = (stats.get("fusion") or {}).get("fused_share")
        results.append(check(Gate("fusion", "fused_share", ">=", require_fusion, "quantize"), share,
                             "the quantize record has no fusion audit"))
    auto, fb = stats.get("auto") or {}, stats.get("fallback")
    if max_drop_set and auto.get("candidates"):
        rows = auto["candidates"]
        kept = next((r for r in rows if r.get("mode") == auto.get("chosen")), min(rows, key=lambda r: r["drop"]))
        what = f"{auto.get('metric', 'accuracy')} drop of the kept {kept['mode']} model (points)"
        results.append(check(Gate("accuracy", "drop", "<=", float(auto["budget"]), "quantize", what), kept["drop"]))
    elif fb and mode == "static":
        what = f"{fb['metric']} drop after {len(fb['excluded'])} FP32 layers ({fb['stopped']}) (points)"
        results.append(check(Gate("accuracy", "drop", "<=", float(fb["budget"]), "quantize", what), fb["drop"]))
    return AccuracyResult(tuple(results))
