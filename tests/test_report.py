"""report.json / report.html: structure, self-containment, and a real render in headless Chromium."""
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from onnxcompress.report_html import _pareto, render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def fake_report():
    def stage(name, size, top1, lat, params):
        return {"name": name, "path": f"{name}.onnx", "seconds": 1.0, "record": None,
                "metrics": {"size_bytes": size, "top1": top1, "agreement": 99.0, "latency_ms": lat, "speedup": 1.0,
                            "params": params, "macs": 1000}}
    return {"version": 1, "model": "m.onnx", "validation": "v.npz",
            "stages": [stage("fp32", 900_000, 92.4, 0.45, 222_000), stage("pruned", 400_000, 91.9, 0.25, 100_000),
                       stage("int8", 260_000, 92.1, 0.24, 222_000)]}


def test_pareto_front():
    assert _pareto([(1, 90), (2, 95), (3, 94), (0.5, 80)]) == [(0.5, 80), (1, 90), (2, 95)]


def test_html_is_self_contained_with_table_and_two_plots():
    page = render(fake_report())
    assert page.count("<svg") == 2 and page.count("<circle") == 6
    assert "<table id='stages'>" in page and page.count("<tr>") == 4
    assert not re.search(r"(src|href)=\"?https?:", page) and "<script" not in page


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return w, h, zlib.decompress(idat)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)")
def test_report_renders_in_chromium(tmp_path, tiny_model_path, tiny_data_path):
    from onnxcompress.config import BenchConfig, PipelineConfig
    from onnxcompress.pipeline import convert

    out = tmp_path / "out"
    convert(tiny_model_path, out, PipelineConfig(bench=BenchConfig(runs=5)), tiny_data_path, tiny_data_path)
    page = out / "report.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert '<table id="stages">' in dom.stdout and dom.stdout.count('class="plot"') == 2
    assert dom.stdout.count("<tr>") == 4  # header + fp32, simplified, int8
    shot = tmp_path / "shot.png"
    run = subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-500:]
    w, h, raw = _png_pixels(shot)
    assert (w, h) == (1200, 900)
    # not blank: many distinct byte values (text, table lines, coloured points)
    assert len(set(raw[: len(raw) // 2])) > 50
