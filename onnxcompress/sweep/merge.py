"""The merged report of a sweep: OUT/sweep.json and a self-contained OUT/sweep.html.

Per model: the Pareto fronts of size and of latency against the task metric (the one the single-job report
plots, report_html.PLOTTED), and the best configuration under the gates (each job's own verdict from
evaluate.gates; nothing is judged here). Then a table of every job.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Optional

from ..io import atomic_write_bytes
from ..report import to_json
from ..report_html import CSS, PLOTTED, scatter
from .grid import Grid, label
from .jobs import JobSpec

SWEEP_VERSION = 1


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Ids whose (x lower is better, y higher is better) no other point beats on both axes, by x."""
    front = [p for p in points if not any((q[1], q[2]) != (p[1], p[2]) and q[1] <= p[1] and q[2] >= p[2]
                                          for q in points)]
    return [p[0] for p in sorted(front, key=lambda p: (p[1], -p[2], p[0]))]


def _row(i: int, spec: JobSpec, rec: Optional[dict]) -> dict[str, Any]:
    rec = rec or {"status": "not run"}
    done = rec["status"] == "done"
    return {"index": i, "id": spec.id, "model": spec.model, "overrides": spec.overrides, "label": label(spec.overrides),
            "status": rec["status"], "error": rec.get("error"), "exit_code": rec.get("exit_code"),
            "attempts": rec.get("attempts"), "seconds": rec.get("seconds"), "summary": rec.get("summary"),
            "folder": f"jobs/{spec.id}", "report": f"jobs/{spec.id}/report.html" if done else None}


def _best(done: list[dict], objective: str) -> tuple[Optional[str], str]:
    gated = [j for j in done if j["summary"]["verdict"] in ("passed", "failed")]
    cands = [j for j in done if j["summary"]["verdict"] == "passed"] if gated else done
    if not cands:
        return None, ("no configuration passed its gates" if gated else "no job of this model finished")

    def key(j: dict) -> tuple:
        s = j["summary"]
        metric = -s["metric_value"] if s["metric_value"] is not None else math.inf
        latency = s["latency_ms"] if s["latency_ms"] is not None else math.inf
        return (s["size_bytes"], metric, latency, j["index"]) if objective == "size" else \
            (latency, s["size_bytes"], metric, j["index"])

    best = min(cands, key=key)
    what = "smallest" if objective == "size" else "fastest"
    among = f"the {len(cands)} that passed their gates" if gated else f"all {len(cands)} converted (no gates were set)"
    return best["id"], f"{what} of {among}"


def merge(specs: list[JobSpec], records: dict[str, dict], grid: Grid, objective: str,
          facts: dict[str, Any]) -> dict[str, Any]:
    jobs = [_row(i, s, records.get(s.id)) for i, s in enumerate(specs)]
    models: dict[str, dict] = {}
    for m in dict.fromkeys(s.model for s in specs):
        rows = [j for j in jobs if j["model"] == m]
        done = [j for j in rows if j["status"] == "done"]
        scored = [j for j in done if j["summary"]["metric_value"] is not None]
        best, why = _best(done, objective)
        models[m] = {
            "jobs": [j["id"] for j in rows], "done": len(done), "failed": sum(j["status"] == "failed" for j in rows),
            "metric": next((j["summary"]["metric"] for j in scored), None),
            "pareto_size": pareto([(j["id"], j["summary"]["size_bytes"], j["summary"]["metric_value"]) for j in scored]),
            "pareto_latency": pareto([(j["id"], j["summary"]["latency_ms"], j["summary"]["metric_value"])
                                      for j in scored if j["summary"]["latency_ms"] is not None]),
            "best": best, "best_why": why}
    totals = {"jobs": len(jobs), "done": sum(j["status"] == "done" for j in jobs),
              "failed": sum(j["status"] == "failed" for j in jobs), "not_run": sum(j["status"] == "not run" for j in jobs)}
    return {"version": SWEEP_VERSION, "objective": objective, "grid": grid, "totals": totals, "run": facts,
            "models": models, "jobs": jobs}


def write_merged(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "sweep.json", out / "sweep.html"]
    atomic_write_bytes(paths[0], (to_json({k: v for k, v in report.items() if k != "files"}) + "\n").encode())
    atomic_write_bytes(paths[1], render(report).encode())
    return paths


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The terminal summary: totals, then per model its best configuration."""
    t, run = report["totals"], report["run"]
    lines = [f"{t['jobs']} jobs: {t['done']} converted, {t['failed']} failed"
             + (f" ({run['skipped']} already done, {run['ran']} run now"
                + (f", {run['retried']} resubmitted after a worker died" if run.get("retried") else "") + ")")]
    by_id = {j["id"]: j for j in report["jobs"]}
    for m, info in report["models"].items():
        b = by_id.get(info["best"])
        if b is None:
            lines.append(f"{m}: {info['best_why']}")
            continue
        s = b["summary"]
        metric = f", {s['metric']} {s['metric_value']:.4g}" if s["metric_value"] is not None else ""
        latency = f", {s['latency_ms']:.3f} ms" if s["latency_ms"] is not None else ""
        lines.append(f"{m}: best #{b['index']} {b['label']}: {s['size_bytes'] / 1e6:.3f} MB{latency}{metric} "
                     f"({info['best_why']})")
    for j in report["jobs"]:
        if j["status"] == "failed":
            lines.append(f"failed #{j['index']} {j['model']} {j['label']}: {j['error']}")
    return lines


def _f(v: Any, spec: str) -> str:
    return f"{v:{spec}}" if isinstance(v, (int, float)) else '<span class="muted">-</span>'


def _metric_words(key: Optional[str]) -> str:
    return dict(PLOTTED).get(key or "", "task metric")


def _model_section(m: str, info: dict, jobs: list[dict]) -> str:
    rows = [j for j in jobs if j["model"] == m and j["status"] == "done" and j["summary"]["metric_value"] is not None]
    best = next((j for j in jobs if j["id"] == info["best"]), None)
    head = (f"<h2>{html.escape(m)}</h2><p class='note'>{info['done']} converted, {info['failed']} failed. Best: "
            + (f"<b>#{best['index']}</b> <code>{html.escape(best['label'])}</code> ({html.escape(info['best_why'])})"
               if best else html.escape(info["best_why"])) + "</p>")
    if not rows:
        return head + "<p class='note'>No plots: the task metric needs validation data (-v or --data MODEL=CAL,VAL).</p>"
    ylabel = _metric_words(info["metric"])
    size = scatter("metric vs size", "size on disk (MB)", ylabel,
                   [(f"#{j['index']}", j["summary"]["size_bytes"] / 1e6, j["summary"]["metric_value"]) for j in rows])
    timed = [j for j in rows if j["summary"]["latency_ms"] is not None]
    lat = scatter("metric vs latency", "median latency (ms)", ylabel,
                  [(f"#{j['index']}", j["summary"]["latency_ms"], j["summary"]["metric_value"]) for j in timed]) if timed else ""
    idx = {j["id"]: j["index"] for j in jobs}
    fronts = (f"<p class='note'>Pareto front by size: {', '.join(f'#{idx[i]}' for i in info['pareto_size'])}; "
              f"by latency: {', '.join(f'#{idx[i]}' for i in info['pareto_latency']) or '-'}.</p>")
    return head + f"<div class='plots'>{size}{lat}</div>" + fronts


def _jobs_table(jobs: list[dict], best: set[str]) -> str:
    head = ("#", "model", "settings", "status", "size MB", "vs FP32", "latency ms", "metric", "gates", "attempts",
            "seconds", "report / error")
    rows = []
    for j in jobs:
        s = j["summary"] or {}
        status = {"done": "<span class='good'>done</span>", "failed": "<span class='bad'>failed</span>"}.get(
            j["status"], html.escape(j["status"]))
        verdict = s.get("verdict")
        gates = ('<span class="muted">-</span>' if verdict is None else
                 f"<span class='{'good' if verdict == 'passed' else 'bad' if verdict == 'failed' else 'muted'}'>"
                 f"{html.escape(verdict)}</span>")
        ratio = s["size_bytes"] / s["fp32_size_bytes"] if s.get("size_bytes") and s.get("fp32_size_bytes") else None
        metric = f"{s['metric']} {s['metric_value']:.4g}" if s.get("metric_value") is not None else None
        last = (f"<a href='{html.escape(j['report'])}'>report</a>" if j["report"]
                else html.escape(j["error"] or ""))
        cells = (f"{j['index']}{' ★' if j['id'] in best else ''}", html.escape(j["model"]),
                 f"<code>{html.escape(j['label'])}</code>", status,
                 _f(s["size_bytes"] / 1e6 if s.get("size_bytes") else None, ".3f"), _f(ratio, ".2f"),
                 _f(s.get("latency_ms"), ".3f"), html.escape(metric) if metric else _f(None, ""), gates,
                 _f(j["attempts"], "d"), _f(j["seconds"], ".1f"), last)
        left = (1, 2, len(cells) - 1)  # model, settings, report / error
        rows.append("<tr>" + "".join(f"<td{' class=msg' if i in left else ''}>{c}</td>"
                                     for i, c in enumerate(cells)) + "</tr>")
    return (f"<table id='jobs'><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def render(report: dict[str, Any]) -> str:
    t, run = report["totals"], report["run"]
    backend = run.get("backend") or {}
    sub = (f"{t['jobs']} jobs: {t['done']} converted, {t['failed']} failed · this run: {run['ran']} run, "
           f"{run['skipped']} already done"
           + (f", on {backend['backend']} with {backend['workers']} worker(s) x {backend['cpus_per_job']} CPU(s)"
              if backend else "") + f" · best by {report['objective']} under the gates")
    grid = "".join(f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(', '.join(map(str, v)))}</code></td></tr>"
                   for k, v in report["grid"].items())
    best = {info["best"] for info in report["models"].values() if info["best"]}
    sections = "".join(_model_section(m, info, report["jobs"]) for m, info in report["models"].items())
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>onnxcompress sweep</title>"
            f"<style>{CSS}</style></head><body><h1>onnxcompress sweep</h1><div class='sub'>{html.escape(sub)}</div>"
            f"<h2>Grid</h2><table id='grid'>{grid}</table>{sections}<h2>Every job (★ best of its model)</h2>"
            f"{_jobs_table(report['jobs'], best)}<p class='note'>Latency: the delivered model, batch 1, as each job's "
            f"report measured it (timings vary between runs; sizes and metrics do not).</p></body></html>")
