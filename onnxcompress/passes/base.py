"""Records and the stage protocol: every graph transformation returns what it changed and what it skipped
and why; every pipeline stage is `stage(model, context) -> (model, StageRecord)`, composed by `run_stages`.

A skip is data (it lands in report.json), not a log line. Idea from onnxscript's rewriter
(`fail(reason, node)`) and onnx_ir's pass infrastructure (requires/ensures, re-raise with history).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import onnx

from ..errors import OnnxCompressError, PassError


@dataclass
class Skip:
    """Something a pass looked at and left alone, with the reason."""

    target: str  # node / tensor / group name
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PassRecord:
    """What one pass did, one kind of fact per field:
    `changed` names what it changed (nodes, tensors, layer pairs); `counts` counts changes by kind
    (ops removed, sub-passes of quantize); `files` are the files it wrote; `skipped` what it left alone and
    why; `stats` holds measurements (params before/after, groups removed, the quality record, ...)."""

    name: str
    changed: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def skip(self, target: str, reason: str) -> None:
        self.skipped.append(Skip(target, reason))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "changed": list(self.changed),
            "counts": dict(self.counts),
            "files": list(self.files),
            "skipped": [s.to_dict() for s in self.skipped],
            "stats": dict(self.stats),
        }


def split_step(skipped: list[dict[str, str]], step: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Skips (as in report.json) of a pass's sub-step, whose reasons read "<step>: why", as (target, why); and the
    other skips as (target, reason). The one place that reads the sub-step convention."""
    prefix = f"{step}:"
    mine = [(s["target"], s["reason"][len(prefix):].lstrip()) for s in skipped if s["reason"].startswith(prefix)]
    rest = [(s["target"], s["reason"]) for s in skipped if not s["reason"].startswith(prefix)]
    return mine, rest


@dataclass
class StageRecord:
    """One pipeline stage: its report name ("fp32", "simplified", "distilled", "pruned", "int8"), the model
    file it wrote (or read), the pass record, its wall time, and the metrics measured on it afterwards."""

    name: str
    path: Path
    record: Optional[PassRecord] = None
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "seconds": round(self.seconds, 3),
                "metrics": self.metrics, "record": self.record.to_dict() if self.record else None}


class Stage(Protocol):
    """A pipeline stage: `name` (what progress and errors call it) and a call taking the current model (None
    before the first stage) and the run's context (pipeline.Context: configs, data, output folder, progress).
    A stage with `quiet = True` is not announced to progress (loading the input file)."""

    name: str

    def __call__(self, model: Optional[onnx.ModelProto], context: Any) -> tuple[onnx.ModelProto, StageRecord]: ...


def run_stages(model: Optional[onnx.ModelProto], stages: Sequence[Stage], context: Any,
               say: Callable[[str], None] = lambda _m: None) -> tuple[onnx.ModelProto, list[StageRecord]]:
    """Run stages in order, each on the model the one before returned; each record gets its wall time.
    An OnnxCompressError keeps its class (its exit code); any other failure is re-raised as PassError naming
    the stage and those that ran before it."""
    records: list[StageRecord] = []
    for stage in stages:
        if not getattr(stage, "quiet", False):
            say(stage.name)
        t0 = time.perf_counter()
        try:
            model, rec = stage(model, context)
        except OnnxCompressError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with context, never swallowed
            ran = ", ".join(r.name for r in records) or "none"
            raise PassError(f"stage '{stage.name}' failed: {type(exc).__name__}: {exc} (stages run before it: {ran})") from exc
        rec.seconds = time.perf_counter() - t0
        records.append(rec)
    return model, records
