"""report.json / report.html: structure, self-containment, and a real render in headless Chromium."""
import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from onnxcompress.report import stage_table
from onnxcompress.report_html import COLORS, _pareto, nice_ticks, render

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and Path(p).exists()), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def fake_report(with_acc=True):
    def stage(name, size, top1, lat, params):
        m = {"size_bytes": size, "agreement": 99.0, "latency_ms": lat, "speedup": 0.45 / lat, "params": params, "macs": 1000}
        if with_acc:
            m["top1"] = top1
        else:
            del m["agreement"]
        return {"name": name, "path": f"{name}.onnx", "seconds": 1.0, "record": None, "metrics": m}
    report = {"version": 1, "model": "m.onnx", "validation": "v.npz",
              "stages": [stage("fp32", 900_000, 92.4, 0.45, 222_000), stage("simplified", 900_100, 92.4, 0.45, 222_000),
                         stage("int8", 260_000, 92.1, 0.24, 222_000), stage("pruned", 400_000, 89.9, 0.25, 100_000)]}
    if with_acc:  # the verdicts come from the gate evaluator, as in the pipeline
        from onnxcompress.evaluate.gates import Gate, evaluate

        for st in report["stages"][1:]:
            drop = 92.4 - st["metrics"]["top1"]
            st["gates"] = evaluate({"top1_drop": drop}, [Gate("max_drop", "top1_drop", "<=", 1.0)]).to_dict()
        report["accuracy"] = {**report["stages"][-1]["gates"], "stage": "pruned"}
    return report


def test_pareto_front_and_ticks():
    assert _pareto([(1, 90), (2, 95), (3, 94), (0.5, 80)]) == [(0.5, 80), (1, 90), (2, 95)]
    assert nice_ticks(0, 0.99) == [0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(91.6, 92.8) == [91.5, 92.0, 92.5, 93.0]
    assert nice_ticks(0, 7.3, n=9) == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_html_is_self_contained_with_table_and_two_plots():
    page = render(fake_report())
    assert page.count("<svg") == 2 and page.count("<circle") == 8
    stages_table = page.split("<table id='stages'>")[1].split("</table>")[0]
    assert stages_table.count("<tr>") == 5
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:|//)", page) and "<script" not in page and "@import" not in page
    assert ">fp32 = simplified<" in page  # coinciding points share a label instead of hiding each other
    # the drop is coloured by the stage's max_drop gate, and the verdicts are the evaluator's
    assert '<span class="bad">2.50</span>' in page and '<span class="good">0.30</span>' in page
    assert stages_table.count('<span class="good">passed</span>') == 2 and stages_table.count("FAILED") == 1
    gates = page.split("<table id='gates'>")[1].split("</table>")[0]
    assert "Gates on pruned: <span class='bad'>failed</span>" in page and "top-1 drop 2.5 points &gt; limit 1 points" in gates


def test_html_never_works_out_a_verdict_itself():
    """Without gate results there is no colour and no verdict, whatever the drop: the evaluator decides."""
    report = fake_report()
    for st in report["stages"]:
        st.pop("gates", None)
    report.pop("accuracy")
    page = render(report)
    assert 'class="bad"' not in page and 'class="good"' not in page and "No gates were set: nothing was checked" in page


def test_html_without_accuracy_says_why_there_are_no_plots():
    page = render(fake_report(with_acc=False))
    assert "<svg" not in page and "accuracy needs validation data" in page


def test_text_table():
    lines = stage_table(fake_report()).splitlines()
    assert lines[0].split()[:3] == ["stage", "size", "size"] and len(lines) == 6
    assert lines[4].split()[:3] == ["int8", "0.26", "MB"] and "1.88x" in lines[4]


def _png_rgb(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) into rows of RGB bytes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 3 if ctype == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3))
        prev = line
    return w, h, rows


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)")
def test_report_renders_in_chromium(tmp_path, tiny_model_path, tiny_data_path):
    from onnxcompress.config import BenchConfig, PipelineConfig
    from onnxcompress.pipeline import convert

    out = tmp_path / "out"
    convert(tiny_model_path, out, PipelineConfig(bench=BenchConfig(runs=5)), tiny_data_path, tiny_data_path)
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["fp32", "simplified", "int8"]
    assert report["stages"][0]["metrics"]["top1"] == 100.0  # labels are the FP32 model's own predictions
    assert all(s["metrics"]["latency_ms"] > 0 and s["metrics"]["params"] > 0 for s in report["stages"])
    page = out / "report.html"
    flags = [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert '<table id="stages">' in dom.stdout and dom.stdout.count("<svg") == 2
    stages = dom.stdout.split('<table id="stages">')[1].split("</table>")[0]
    assert stages.count("<tr>") == 4  # header + fp32, simplified, int8 (gate and int8-recipe tables follow)
    shot = tmp_path / "shot.png"
    run = subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-500:]
    w, h, rows = _png_rgb(shot)
    assert (w, h) == (1200, 1600)
    top = rows[:700]  # table and plots are in the upper part of the page
    dark = sum(1 for r in top for i in range(0, len(r), 3) if r[i] < 100 and r[i + 1] < 100 and r[i + 2] < 100)
    assert dark > 2000  # text was drawn (a blank or error page has almost none)
    palette = {tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c in COLORS[:3]}
    seen = {tuple(r[i:i + 3]) for r in rows for i in range(0, len(r), 3)}  # plots follow the gate tables
    assert len(palette & seen) >= 2, "the plot points (coloured circles) were not rendered"
