"""report.json -> a self-contained report.html: per-stage table and accuracy-vs-size / -latency plots
(inline SVG drawn here, inline CSS, no scripts, no fonts or images from the network)."""
from __future__ import annotations

import html
import math
from typing import Any, Optional

COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f"]


# the accuracy plotted: top-1 with labels, else the task's own measure against FP32 (evaluate.tasks)
PLOTTED = (("top1", "top-1 accuracy %"), ("agreement", "agreement with FP32 %"), ("f1", "detection F1 against FP32 %"),
           ("miou", "mIoU against FP32 %"), ("iou", "map IoU against FP32 %"),
           ("char_agreement", "character agreement with FP32 %"), ("nn_agreement", "neighbour agreement with FP32 %"))


def _acc(m: dict) -> Optional[float]:
    for key, _ in PLOTTED:
        v = m.get(key, (m.get("task_metrics") or {}).get(key))
        if isinstance(v, (int, float)):
            return v
    return None


def _acc_label(stages: list[dict]) -> str:
    for key, label in PLOTTED:
        if all(key in s["metrics"] or key in (s["metrics"].get("task_metrics") or {}) for s in stages):
            return label
    return "agreement with FP32 %"


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten on both axes (lower x, higher y), sorted by x."""
    front = [p for p in points if not any(q != p and q[0] <= p[0] and q[1] >= p[1] for q in points)]
    return sorted(set(front))


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    ticks, v = [], start
    while v < hi + step * 0.999:
        ticks.append(round(v, 10))
        v += step
    return ticks


def scatter(title: str, xlabel: str, ylabel: str, points: list[tuple[str, float, float]],
            w: int = 500, h: int = 340) -> str:
    """An SVG scatter plot with axes, round ticks, labelled points and the Pareto front (dashed)."""
    pad_l, pad_r, pad_t, pad_b = 58, 22, 36, 48
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    xt = nice_ticks(0.0, max(xs) * 1.1 or 1.0)
    span = max(max(ys) - min(ys), 0.5)
    yt = nice_ticks(min(ys) - span * 0.25, min(max(ys) + span * 0.35, 100.0 if max(ys) <= 100 else math.inf))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def sx(v: float) -> float:
        return pad_l + (v - x0) / (x1 - x0) * (w - pad_l - pad_r)

    def sy(v: float) -> float:
        return h - pad_b - (v - y0) / (y1 - y0) * (h - pad_t - pad_b)

    out = [f'<svg class="plot" role="img" aria-label="{html.escape(title)}" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">',
           f'<text x="{w / 2}" y="22" text-anchor="middle" class="t">{html.escape(title)}</text>']
    for v in yt:
        out.append(f'<line x1="{pad_l}" y1="{sy(v):.1f}" x2="{w - pad_r}" y2="{sy(v):.1f}" class="grid"/>'
                   f'<text x="{pad_l - 6}" y="{sy(v) + 4:.1f}" text-anchor="end" class="k">{v:g}</text>')
    for v in xt:
        out.append(f'<line x1="{sx(v):.1f}" y1="{h - pad_b}" x2="{sx(v):.1f}" y2="{h - pad_b + 4}" class="ax"/>'
                   f'<text x="{sx(v):.1f}" y="{h - pad_b + 17}" text-anchor="middle" class="k">{v:g}</text>')
    out.append(f'<line x1="{pad_l}" y1="{h - pad_b}" x2="{w - pad_r}" y2="{h - pad_b}" class="ax"/>'
               f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{h - pad_b}" class="ax"/>')
    out.append(f'<text x="{(w + pad_l) / 2}" y="{h - 10}" text-anchor="middle" class="k">{html.escape(xlabel)}</text>')
    out.append(f'<text x="15" y="{(h - pad_b + pad_t) / 2}" text-anchor="middle" class="k" '
               f'transform="rotate(-90 15 {(h - pad_b + pad_t) / 2})">{html.escape(ylabel)}</text>')
    front = _pareto([(p[1], p[2]) for p in points])
    if len(front) > 1:
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in front)
        out.append(f'<polyline points="{d}" class="front"/>')
    # Points that land on the same spot (e.g. fp32 and simplified) share one label; the earlier ones are
    # drawn as larger rings so every point stays visible.
    groups: list[list[int]] = []
    for i, (_, xv, yv) in enumerate(points):
        g = next((g for g in groups if abs(sx(points[g[0]][1]) - sx(xv)) < 12 and abs(sy(points[g[0]][2]) - sy(yv)) < 12), None)
        (g.append(i) if g is not None else groups.append([i]))
    for g in groups:
        for rank, i in enumerate(g):
            name, xv, yv = points[i]
            r = 6 + 3 * (len(g) - 1 - rank)
            c = COLORS[i % len(COLORS)]
            style = f'fill="{c}"' if rank == len(g) - 1 else f'fill="none" stroke="{c}" stroke-width="2.5"'
            out.append(f'<circle cx="{sx(xv):.1f}" cy="{sy(yv):.1f}" r="{r}" {style}><title>{html.escape(name)}: '
                       f'{xv:.4g}, {yv:.2f}</title></circle>')
        name, xv, yv = points[g[0]]
        label = " = ".join(points[i][0] for i in g)
        right = sx(xv) > w * 0.6
        dy = -12 if sy(yv) > pad_t + 24 else 20
        out.append(f'<text x="{sx(xv) + (-10 if right else 10):.1f}" y="{sy(yv) + dy:.1f}" class="lbl" '
                   f'fill="{COLORS[g[-1] % len(COLORS)]}" text-anchor="{"end" if right else "start"}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:28px;color:#222;max-width:1140px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 6px} .sub{color:#666;margin-bottom:16px;font-size:13px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap} th{background:#f4f6f8}
td:first-child,th:first-child{text-align:left;font-weight:600}
.good{color:#1a7f37} td.msg{text-align:left;white-space:normal} .bad{color:#b42318;font-weight:600} .muted{color:#888}
.plots{display:flex;gap:18px;flex-wrap:wrap}
.plot{background:#fafbfc;border:1px solid #e3e6ea;border-radius:6px}
.plot .t{font-size:14px;font-weight:600} .plot .k{font-size:11px;fill:#555} .plot .lbl{font-size:12px;font-weight:600}
.plot .ax{stroke:#888} .plot .grid{stroke:#e8e8e8} .plot .front{fill:none;stroke:#999;stroke-dasharray:4 3}
details{margin:6px 0;font-size:13px} code{background:#f4f6f8;padding:1px 4px;border-radius:3px}
.note{font-size:12.5px;color:#555;max-width:900px}
"""


def _fmt(v: Any, spec: str, suffix: str = "") -> str:
    if v is None:
        return '<span class="muted">-</span>'
    if isinstance(v, str):  # "inf" written by report._clean
        return html.escape(v)
    return f"{v:{spec}}{suffix}"


def _gate_class(st: dict, name: str) -> str:
    """good/bad from the stage's gate of that name (evaluate.gates decided it), '' when there is none."""
    g = next((g for g in (st.get("gates") or {}).get("gates", []) if g["name"] == name), None)
    return "" if g is None else ("good" if g["passed"] else "bad")


def _verdict_cell(st: dict) -> str:
    v = (st.get("gates") or {}).get("verdict")
    if v is None:
        return _fmt(None, "")
    return {"passed": '<span class="good">passed</span>', "failed": '<span class="bad">FAILED</span>'}.get(
        v, '<span class="muted">no gates</span>')


def _table(stages: list[dict]) -> str:
    base = stages[0]["metrics"]
    head = ("stage", "size", "vs FP32", "params", "MACs/sample", "top-1 %", "top-5 %", "drop",
            "agree %", "SQNR dB", "latency ms", "p90 ms", "speedup", "gates")
    rows = []
    for st in stages:
        m = st["metrics"]
        drop = None if _acc(m) is None or _acc(base) is None else _acc(base) - _acc(m)
        cls = _gate_class(st, "max_drop") or _gate_class(st, "min_agreement")
        first = next((s for s in (m.get("latency") or {}).values() if "p90_ms" in s), {})
        cells = (html.escape(st["name"]), _fmt(m.get("size_bytes", 0) / 1e6, ".3f", " MB"),
                 _fmt(m.get("size_bytes", 0) / base["size_bytes"], ".2f", "x"),
                 _fmt(m.get("params"), ","), _fmt(m.get("macs"), ","), _fmt(m.get("top1"), ".2f"), _fmt(m.get("top5"), ".2f"),
                 f'<span class="{cls}">{drop:.2f}</span>' if drop is not None else _fmt(None, ""),
                 _fmt(m.get("agreement"), ".2f"), _fmt(m.get("sqnr_db"), ".1f"),
                 _fmt(m.get("latency_ms"), ".3f"), _fmt(first.get("p90_ms"), ".3f"), _fmt(m.get("speedup"), ".2f", "x"),
                 _verdict_cell(st) if st is not stages[0] else _fmt(None, ""))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f"<table id='stages'><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _task_table(report: dict) -> str:
    """Task metrics of every stage against FP32 (evaluate.tasks)."""
    task = report.get("task")
    stages = [st for st in report["stages"] if st["metrics"].get("task_metrics")]
    if not task or not stages:
        return ""
    keys = list(dict.fromkeys(k for st in stages for k in st["metrics"]["task_metrics"]))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["stage", *keys])
    rows = "".join("<tr>" + f"<td>{html.escape(st['name'])}</td>" + "".join(
        f"<td>{_fmt(st['metrics']['task_metrics'].get(k), '.4g')}</td>" for k in keys) + "</tr>" for st in stages)
    unavailable = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>"
                          for k, v in (task.get("unavailable") or {}).items())
    return (f"<h2>Task: {html.escape(task['name'])}</h2><p class='note'>{html.escape(task['why'])}; output "
            f"<code>{html.escape(str(task.get('output')))}</code>. Rates in %, cosine and rank correlation in [-1, 1].</p>"
            f"<table id='task'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            + (f"<details><summary>not measured</summary><ul>{unavailable}</ul></details>" if unavailable else ""))


def _gates_table(report: dict) -> str:
    """Each gate of the delivered stage with its value and verdict, as evaluate.gates decided."""
    acc = report.get("accuracy") or {}
    gates = acc.get("gates") or []
    if not gates:
        return ("<h2>Gates</h2><p class='note'>No gates were set: nothing was checked. Set gates in the config "
                "(validate: max_drop, min_cosine, gates such as \"recall&gt;=95\") or give validation data for the "
                "task's default gates.</p>")
    rows = "".join(
        f"<tr><td>{html.escape(g['name'])}</td><td><code>{html.escape(g['metric'])} {html.escape(g['comparison'])} "
        f"{g['limit']:g}</code></td><td>{_fmt(g['value'], '.6g')}</td>"
        f"<td>{'<span class=good>pass</span>' if g['passed'] else '<span class=bad>FAIL</span>'}</td>"
        f"<td>{html.escape(g.get('origin', ''))}</td><td class='msg'>{html.escape(g['message'])}</td></tr>" for g in gates)
    verdict = acc.get("verdict", "?")
    return (f"<h2>Gates on {html.escape(str(acc.get('stage', 'the output')))}: "
            f"<span class='{'good' if verdict == 'passed' else 'bad'}'>{html.escape(verdict)}</span></h2>"
            f"<table id='gates'><thead><tr><th>gate</th><th>rule</th><th>value</th><th>verdict</th><th>origin</th>"
            f"<th>message</th></tr></thead><tbody>{rows}</tbody></table>")


def _recipes(report: dict) -> str:
    """How each int8 model was made (report.int8_recipe)."""
    out = []
    for st in report["stages"]:
        q = st.get("quantization")
        if not q:
            continue
        fp32 = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in q.get("fp32_layers", {}).items())
        facts = [("mode", q.get("mode")), ("weights", q.get("weights")), ("weight type", q.get("weight_type")),
                 ("activation type", q.get("activation_type")), ("calibration", q.get("calibration")),
                 ("bias correction", q.get("bias_correction")), ("chosen because", q.get("why"))]
        cells = "".join(f"<tr><td>{k}</td><td>{html.escape(str(v))}</td></tr>" for k, v in facts if v is not None)
        out.append(f"<h2>How <code>{html.escape(st['name'])}</code> was made</h2><table class='recipe'>{cells}"
                   f"<tr><td>FP32 layers</td><td>{len(q.get('fp32_layers', {}))}</td></tr></table>"
                   + (f"<details><summary>FP32 layers and why</summary><ul>{fp32}</ul></details>" if fp32 else ""))
    return "".join(out)


def render(report: dict[str, Any]) -> str:
    stages = report["stages"]
    cfg = report.get("config") or {}
    bench = cfg.get("bench") or {}
    pts = [(st["name"], st["metrics"], _acc(st["metrics"])) for st in stages]
    ylabel = _acc_label(stages)
    if all(a is not None for _, _, a in pts) and all(isinstance(m.get("latency_ms"), (int, float)) for _, m, _ in pts):
        plots = ('<h2>Accuracy against size and latency (dashed: the Pareto front)</h2><div class="plots">'
                 + scatter("accuracy vs size", "size on disk (MB)", ylabel, [(n, m["size_bytes"] / 1e6, a) for n, m, a in pts])
                 + scatter("accuracy vs latency", "median latency (ms)", ylabel, [(n, m["latency_ms"], a) for n, m, a in pts])
                 + "</div>")
    else:
        plots = "<p class='note'>No plots: accuracy needs validation data (convert --validation DATA.npz).</p>"
    setting = (f"latency: median of {bench.get('runs', '?')} interleaved runs after {bench.get('warmup', '?')} warmup, "
               f"{'/'.join(bench.get('providers', ['cpu']))}, {bench.get('threads', [1])[0]} thread(s), "
               f"batch {bench.get('batch_sizes', [1])[0]}; speedup against FP32. ")
    acc_note = ("drop: points of " + ylabel.split(" %")[0] + " below FP32, green/red when a gate on it passed/failed; "
                "gates: the verdict of each stage's gates (evaluate.gates).")
    details = []
    for st in stages:
        rec = st.get("record")
        if not rec:
            continue
        skipped = "".join(f"<li><code>{html.escape(s['target'])}</code>: {html.escape(s['reason'])}</li>"
                          for s in rec["skipped"]) or "<li>nothing skipped</li>"
        stats = html.escape(", ".join(f"{k}={v}" for k, v in rec["stats"].items() if not isinstance(v, (dict, list))))
        details.append(f"<details><summary><b>{html.escape(st['name'])}</b> ({st['seconds']:.1f} s): "
                       f"{len(rec['changed']) + len(rec.get('counts', {}))} changes, {len(rec['skipped'])} skipped</summary>"
                       f"<p>{stats}</p><ul>{skipped}</ul></details>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>onnxcompress report</title>"
            f"<style>{CSS}</style></head><body><h1>onnxcompress report</h1>"
            f"<div class='sub'>model <code>{html.escape(str(report['model']))}</code> · validation "
            f"<code>{html.escape(str(report.get('validation')))}</code> · report version {report['version']}</div>"
            f"{_table(stages)}<p class='note'>{html.escape(setting + acc_note)}</p>"
            f"{_gates_table(report)}{_task_table(report)}{_recipes(report)}{plots}<h2>Stage records</h2>{''.join(details) or '<p class=note>none</p>'}</body></html>")
