"""Validation and benchmarking measured on themselves.

    .venv/bin/python benchmarks/bench_eval.py [--repeats 8]

1. Interleaved vs back-to-back timing under noise: the bundled model is timed against an identical copy
   (true ratio 1.00) while a background process burns CPU in bursts. Back-to-back timing (all runs of A,
   then all of B) lets a burst land on one model only; interleaving spreads it over both. Printed: the
   spread of the measured A/B ratio over several repeats for each method.
2. Cost of `validate` on the bundled FP32 vs INT8 model (2000 images): plain, and with --layers.
3. Peak memory per model (fresh process each, VmHWM after clear_refs) and the size on disk.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = ROOT / "models" / "fashion_net.onnx"
CALIB = ROOT / "calibration" / "fashion_calib.npz"
VAL = ROOT / "calibration" / "fashion_val.npz"

BURNER = "import time\nwhile True:\n    t = time.time()\n    while time.time() - t < 0.05: pass\n    time.sleep(0.05)\n"


def ratio_spread(a: Path, b: Path, repeats: int, runs: int = 200) -> dict[str, list[float]]:
    from onnxcompress.evaluate.bench import bench_feed, time_sessions
    from onnxcompress.runtime.session import make_session

    feed = bench_feed(a, None, 1)
    out: dict[str, list[float]] = {"interleaved": [], "back-to-back": []}
    burner = subprocess.Popen([sys.executable, "-c", BURNER])
    try:
        for _ in range(repeats):
            sa, sb = make_session(a, threads=1, spinning=False), make_session(b, threads=1, spinning=False)
            t = time_sessions({"a": sa, "b": sb}, {"a": feed, "b": feed}, warmup=10, runs=runs)
            out["interleaved"].append(float(np.median(t["a"].times_ms) / np.median(t["b"].times_ms)))
            ta = time_sessions({"a": sa}, {"a": feed}, warmup=10, runs=runs)["a"]
            tb = time_sessions({"b": sb}, {"b": feed}, warmup=10, runs=runs)["b"]
            out["back-to-back"].append(float(np.median(ta.times_ms) / np.median(tb.times_ms)))
    finally:
        burner.kill()
        burner.wait()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args()
    from onnxcompress.config import QuantConfig, ValidateConfig
    from onnxcompress.data import input_specs, load_data
    from onnxcompress.evaluate.bench import bench_feed
    from onnxcompress.evaluate.memory import peak_memory_mb
    from onnxcompress.evaluate.validate import validate
    from onnxcompress.io import load_model, save_model
    from onnxcompress.quant.qdq import quantize

    with tempfile.TemporaryDirectory() as d:
        copy, int8 = Path(d) / "copy.onnx", Path(d) / "fashion_net.int8.onnx"
        shutil.copy(MODEL, copy)
        model = load_model(MODEL)
        save_model(quantize(model, load_data(CALIB, input_specs(model)), QuantConfig())[0], int8)

        print("1. A/B ratio of a model against its identical copy, noisy machine (true value 1.00)")
        spread = ratio_spread(MODEL, copy, args.repeats)
        for name, rs in spread.items():
            dev = max(abs(r - 1.0) for r in rs)
            print(f"   {name:13s} ratios {' '.join(f'{r:.3f}' for r in rs)}  worst |ratio-1| {dev:.3f}  std {np.std(rs):.3f}")

        print("2. validate cost, bundled FP32 vs INT8, 2000 images")
        for layers in (False, True):
            t0 = time.perf_counter()
            res = validate(MODEL, int8, VAL, ValidateConfig(), layers=layers)
            dt = time.perf_counter() - t0
            print(f"   layers={str(layers):5s} {dt:6.2f} s  top-1 {res['reference_top1']:.2f} -> {res['candidate_top1']:.2f}  "
                  f"agreement {res['task']['metrics']['agreement']:.2f}%  SQNR {res['outputs']['logits']['sqnr_db']:.2f} dB"
                  + (f"  worst layer {res['layers'][0]['tensor']} {res['layers'][0]['sqnr_db']:.1f} dB" if layers else ""))

        print("3. peak memory, batch 1, 1 thread (fresh process per model)")
        for p in (MODEL, int8):
            m = peak_memory_mb(p, bench_feed(p, None, 1))
            print(f"   {p.name:24s} size {p.stat().st_size / 1e6:.3f} MB  model {m['model_mb']:.1f} MB  "
                  f"process peak {m['peak_rss_mb']:.1f} MB ({m['method']})")


if __name__ == "__main__":
    main()
