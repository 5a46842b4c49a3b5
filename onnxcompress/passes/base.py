"""Pass records: every graph transformation returns what it changed and what it skipped and why.

A skip is data (it lands in report.json), not a log line. Idea from onnxscript's rewriter
(`fail(reason, node)`) and onnx_ir's pass infrastructure (requires/ensures, re-raise with history).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

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
    """What one pass did. `stats` holds numbers (params before/after, groups removed, ...)."""

    name: str
    changed: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def skip(self, target: str, reason: str) -> None:
        self.skipped.append(Skip(target, reason))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "changed": list(self.changed),
            "skipped": [s.to_dict() for s in self.skipped],
            "stats": dict(self.stats),
        }


PassFn = Callable[[onnx.ModelProto], "tuple[onnx.ModelProto, PassRecord]"]


def run_passes(model: onnx.ModelProto, passes: list[tuple[str, PassFn]]) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Run passes in order. A failure is re-raised as PassError naming the pass and those that ran."""
    records: list[PassRecord] = []
    for name, fn in passes:
        try:
            model, rec = fn(model)
        except OnnxCompressError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with context, never swallowed
            ran = ", ".join(r.name for r in records) or "none"
            raise PassError(f"pass '{name}' failed: {type(exc).__name__}: {exc} (passes run before it: {ran})") from exc
        records.append(rec)
    return model, records
