"""Per-stage records -> report.json (and a readable table for the terminal).

The verdicts come from evaluate.gates (each stage's "gates", the report's "accuracy"); nothing here
works one out. `int8_recipe` reads how an int8 model was made from its quantize PassRecord stats.
"""
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


def int8_recipe(record: dict[str, Any]) -> dict[str, Any]:
    """How an int8 model was made, from the quantize PassRecord stats: mode (static/dynamic), weights
    per-channel or per-tensor, int8 types, calibration, and which layers stayed FP32 and why."""
    st = record.get("stats") or {}
    target = st.get("target") or {}
    fb = st.get("fallback") or {}
    fp32: dict[str, str] = {}
    for name in (st.get("op_types") or {}).get("kept_fp32_by_default") or []:
        fp32[str(name)] = "kept FP32 by the model-type defaults"
    for name in st.get("excluded") or []:
        fp32.setdefault(str(name), "excluded")
    for name in fb.get("excluded") or []:
        fp32[str(name)] = "accuracy fallback"
    for name in (st.get("speed") or {}).get("kept_fp32_for_speed") or []:
        fp32[str(name)] = "faster in FP32"
    recipe = {"mode": st.get("mode"),
              "weights": None if "per_channel" not in target else ("per-channel" if target["per_channel"] else "per-tensor"),
              "activation_type": target.get("activation_type"), "weight_type": target.get("weight_type"),
              "reduce_range": target.get("reduce_range"), "calibration": (st.get("calibration") or {}).get("method"),
              "bias_correction": fb.get("bias_correction"), "fp32_layers": fp32,
              "why": (st.get("auto") or {}).get("why")}
    return {k: v for k, v in recipe.items() if v is not None}


def _annotate(report: dict[str, Any]) -> None:
    for st in report.get("stages", []):
        rec = st.get("record")
        if rec and rec.get("name") == "quantize":
            st["quantization"] = int8_recipe(rec)


def recipe_text(q: dict[str, Any]) -> str:
    parts = [q.get("mode", "?"), q.get("weights"), q.get("calibration") and f"{q['calibration']} calibration",
             q.get("activation_type") and f"activations {q['activation_type']}",
             "bias correction" if q.get("bias_correction") else None]
    fp32 = q.get("fp32_layers") or {}
    parts.append(f"{len(fp32)} FP32 layers" + (f" ({', '.join(list(fp32)[:6])}{', ...' if len(fp32) > 6 else ''})" if fp32 else ""))
    return ", ".join(p for p in parts if p)


def verdict_lines(report: dict[str, Any]) -> list[str]:
    """Task, how each int8 model was made, and the gates of the delivered (last) stage."""
    from .evaluate.gates import AccuracyResult

    lines = []
    task = report.get("task")
    if task:
        lines.append(f"task: {task['name']} ({task['why']})")
    for st in report.get("stages", []):
        if st.get("quantization"):
            lines.append(f"{st['name']}: {recipe_text(st['quantization'])}")
        tm = st["metrics"].get("task_metrics") or {}
        if st is report["stages"][-1] and tm:
            lines.append(f"{st['name']} against FP32: " + ", ".join(f"{k} {v:.4g}" for k, v in tm.items()
                                                                 if isinstance(v, (int, float))))
    acc = report.get("accuracy") or {}
    res = AccuracyResult.from_dict(acc)
    lines += [f"gates on {acc.get('stage', 'the output')}:"] if res.gates else []
    lines += res.lines()
    return lines


def write_reports(report: dict[str, Any], out_dir: Path) -> list[Path]:
    from .report_html import render

    _annotate(report)

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
