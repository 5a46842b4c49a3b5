"""Per-stage records -> report.json (and a readable table for the terminal)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .io import atomic_write_bytes


def _clean(obj: Any) -> Any:
    """JSON has no inf/nan: write them as strings so every parser accepts the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(_clean(report), indent=2, sort_keys=False)


def write_reports(report: dict[str, Any], out_dir: Path) -> list[Path]:
    from .report_html import render

    path = Path(out_dir) / "report.json"
    atomic_write_bytes(path, (to_json(report) + "\n").encode())
    page = Path(out_dir) / "report.html"
    atomic_write_bytes(page, render(report).encode())
    return [path, page]


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def _num(v: Any, spec: str, suffix: str = "") -> str:
    return f"{v:{spec}}{suffix}" if isinstance(v, (int, float)) else "-"


def stage_table(report: dict[str, Any]) -> str:
    """Plain-text table: one row per stage with size, accuracy, latency and ratios against FP32."""
    stages = report["stages"]
    base = stages[0]["metrics"]
    head = ["stage", "size", "size x", "params", "MACs", "top-1 %", "agree %", "SQNR dB", "latency ms", "speedup"]
    rows = [head]
    for st in stages:
        m = st["metrics"]
        rows.append([
            st["name"], _mb(m["size_bytes"]), f"{m['size_bytes'] / base['size_bytes']:.2f}",
            _num(m.get("params"), ","), _num(m.get("macs"), ","), _num(m.get("top1"), ".2f"),
            _num(m.get("agreement"), ".2f"), _num(m.get("sqnr_db"), ".1f"),
            _num(m.get("latency_ms"), ".3f"), _num(m.get("speedup"), ".2f", "x"),
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
