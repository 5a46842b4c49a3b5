"""report.json -> a self-contained report.html: per-stage table and accuracy-vs-size / -latency plots
(inline SVG, inline CSS, no scripts and no network)."""
from __future__ import annotations

import html
from typing import Any, Optional

COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1"]


def _acc(m: dict) -> Optional[float]:
    return m.get("top1", m.get("agreement"))


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten on both axes (lower x, higher y), sorted by x."""
    front = [p for p in points if not any(q != p and q[0] <= p[0] and q[1] >= p[1] for q in points)]
    return sorted(front)


def scatter(title: str, xlabel: str, points: list[tuple[str, float, float]], w: int = 460, h: int = 320) -> str:
    """An SVG scatter plot with axes, ticks, labelled points and the Pareto front."""
    pad_l, pad_r, pad_t, pad_b = 56, 20, 34, 46
    xs = [p[1] for p in points]
    ys = [p[2] for p in points]
    x0, x1 = 0.0, max(xs) * 1.15 or 1.0
    ylo, yhi = min(ys), max(ys)
    span = max(yhi - ylo, 0.5)
    y0, y1 = ylo - span * 0.3, yhi + span * 0.3

    def sx(v: float) -> float:
        return pad_l + (v - x0) / (x1 - x0) * (w - pad_l - pad_r)

    def sy(v: float) -> float:
        return h - pad_b - (v - y0) / (y1 - y0) * (h - pad_t - pad_b)

    out = [f'<svg class="plot" role="img" aria-label="{html.escape(title)}" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">',
           f'<text x="{w / 2}" y="20" text-anchor="middle" class="t">{html.escape(title)}</text>',
           f'<line x1="{pad_l}" y1="{h - pad_b}" x2="{w - pad_r}" y2="{h - pad_b}" class="ax"/>',
           f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{h - pad_b}" class="ax"/>']
    for i in range(5):
        xv = x0 + (x1 - x0) * i / 4
        yv = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{sx(xv):.1f}" y="{h - pad_b + 16}" text-anchor="middle" class="k">{xv:.3g}</text>')
        out.append(f'<line x1="{pad_l}" y1="{sy(yv):.1f}" x2="{w - pad_r}" y2="{sy(yv):.1f}" class="grid"/>')
        out.append(f'<text x="{pad_l - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end" class="k">{yv:.4g}</text>')
    out.append(f'<text x="{(w + pad_l) / 2}" y="{h - 8}" text-anchor="middle" class="k">{html.escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{(h - pad_b + pad_t) / 2}" text-anchor="middle" class="k" '
               f'transform="rotate(-90 14 {(h - pad_b + pad_t) / 2})">accuracy %</text>')
    front = _pareto([(p[1], p[2]) for p in points])
    if len(front) > 1:
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in front)
        out.append(f'<polyline points="{d}" class="front"/>')
    for i, (name, xv, yv) in enumerate(points):
        c = COLORS[i % len(COLORS)]
        out.append(f'<circle cx="{sx(xv):.1f}" cy="{sy(yv):.1f}" r="6" fill="{c}"><title>{html.escape(name)}: '
                   f'{xv:.3g}, {yv:.2f}</title></circle>')
        right = sx(xv) > w * 0.65  # labels near the right edge go to the left of their point
        out.append(f'<text x="{sx(xv) + (-9 if right else 9):.1f}" y="{sy(yv) - 8 - 11 * (i % 2):.1f}" class="lbl" '
                   f'fill="{c}" text-anchor="{"end" if right else "start"}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:28px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} .sub{color:#666;margin-bottom:18px;font-size:13px}
table{border-collapse:collapse;margin:10px 0 22px;font-size:14px}
th,td{padding:6px 12px;border-bottom:1px solid #ddd;text-align:right} th{background:#f4f6f8}
td:first-child,th:first-child{text-align:left;font-weight:600}
.good{color:#1a7f37} .bad{color:#b42318}
.plots{display:flex;gap:18px;flex-wrap:wrap}
.plot{background:#fafbfc;border:1px solid #e3e6ea;border-radius:6px}
.plot .t{font-size:14px;font-weight:600} .plot .k{font-size:11px;fill:#555} .plot .lbl{font-size:12px;font-weight:600}
.plot .ax{stroke:#888} .plot .grid{stroke:#eee} .plot .front{fill:none;stroke:#999;stroke-dasharray:4 3}
details{margin:6px 0;font-size:13px} code{background:#f4f6f8;padding:1px 4px;border-radius:3px}
"""


def render(report: dict[str, Any]) -> str:
    stages = report["stages"]
    base = stages[0]["metrics"]
    rows = []
    for st in stages:
        m = st["metrics"]
        acc = _acc(m)
        drop = None if acc is None or _acc(base) is None else _acc(base) - acc
        cls = "" if drop is None else ("good" if drop <= 1.0 else "bad")
        rows.append(
            "<tr>" + "".join(f"<td>{v}</td>" for v in (
                html.escape(st["name"]), f"{m['size_bytes'] / 1e6:.3f} MB", f"{m['size_bytes'] / base['size_bytes']:.2f}x",
                f"{m.get('params', 0):,}", f"{m.get('macs', 0):,}",
                f'<span class="{cls}">{acc:.2f}</span>' if acc is not None else "-",
                f"{m['agreement']:.2f}" if "agreement" in m else "-",
                f"{m['latency_ms']:.3f}", f"{m['speedup']:.2f}x")) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("stage", "size", "size vs FP32", "parameters", "MACs / sample",
                                             "top-1 %", "agreement %", "latency ms", "speedup"))
    plots = ""
    pts = [(st["name"], st["metrics"], _acc(st["metrics"])) for st in stages]
    if all(p[2] is not None for p in pts):
        plots = ('<div class="plots">'
                 + scatter("accuracy vs size", "size on disk (MB)", [(n, m["size_bytes"] / 1e6, a) for n, m, a in pts])
                 + scatter("accuracy vs latency", "median latency (ms)", [(n, m["latency_ms"], a) for n, m, a in pts])
                 + "</div>")
    details = []
    for st in stages:
        rec = st.get("record")
        if not rec:
            continue
        skipped = "".join(f"<li><code>{html.escape(s['target'])}</code>: {html.escape(s['reason'])}</li>"
                          for s in rec["skipped"]) or "<li>nothing skipped</li>"
        stats = html.escape(", ".join(f"{k}={v}" for k, v in rec["stats"].items() if not isinstance(v, (dict, list))))
        details.append(f"<details><summary><b>{html.escape(st['name'])}</b> ({st['seconds']:.1f} s): "
                       f"{len(rec['changed'])} changes, {len(rec['skipped'])} skipped</summary>"
                       f"<p>{stats}</p><ul>{skipped}</ul></details>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>onnxcompress report</title>"
            f"<style>{CSS}</style></head><body><h1>onnxcompress report</h1>"
            f"<div class='sub'>model <code>{html.escape(report['model'])}</code> · validation "
            f"<code>{html.escape(str(report.get('validation')))}</code> · report version {report['version']}</div>"
            f"<table id='stages'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"{plots}<h2 style='font-size:16px'>Stage records</h2>{''.join(details)}</body></html>")
