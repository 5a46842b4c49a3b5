"""Sweep throughput on the local pool: the same N jobs on 1 worker and on 2 workers, 1 ORT thread per worker.

    .venv/bin/python benchmarks/bench_sweep.py [--repeats 2]

The bundled Fashion-MNIST CNN x a 6-config grid (calibration method x per-channel weights), the bundled
calibration (128 samples) and validation (200) data. Each measurement is a fresh sweep folder (nothing skipped); the runs alternate
1, 2, 2, 1, ... workers so that a machine whose load drifts shifts both sides alike, and the pool's forkserver
is warmed by one job first. Printed: jobs/s for each, and the throughput ratio 2 workers / 1 worker (ideal 2.0 on
a 2-core machine). Simplify is off: onnxsim imports torch in each fresh worker, seconds of imports that say
nothing about the pool.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxcompress.config import PipelineConfig, from_dict  # noqa: E402
from onnxcompress.sweep import check_grid, run_sweep  # noqa: E402

MODEL = ROOT / "models" / "fashion_net.onnx"
CALIB = ROOT / "calibration" / "fashion_calib.npz"
VAL = ROOT / "calibration" / "fashion_val.npz"
BASE = {"simplify": {"enabled": False},
        "quant": {"mode": "static", "speed_check_seconds": 0, "calibration_samples": 128},
        "validate": {"max_samples": 200}, "bench": {"runs": 50, "warmup": 5, "threads": [1]}}
GRID = {"quant.calibration": ["minmax", "percentile", "entropy"], "quant.per_channel": [True, False]}


def sweep(out: Path, workers: int, grid: dict, base: PipelineConfig) -> float:
    t0 = time.perf_counter()
    report = run_sweep([str(MODEL)], grid, out, base, calibration=str(CALIB), validation=str(VAL),
                       workers=workers, cpus_per_worker=1)
    seconds = time.perf_counter() - t0
    assert report["totals"]["done"] == report["totals"]["jobs"], report["jobs"]
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="pairs of (1-worker, 2-worker) sweeps")
    args = ap.parse_args()
    base = from_dict(PipelineConfig, BASE)
    grid = check_grid(GRID)
    jobs = 1
    for v in grid.values():
        jobs *= len(v)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        sweep(Path(tmp) / "warm", 1, check_grid({"quant.per_channel": [True]}), base)  # forkserver, caches
        times: dict[int, list[float]] = {1: [], 2: []}
        order = [w for r in range(args.repeats) for w in ((1, 2) if r % 2 == 0 else (2, 1))]
        for i, w in enumerate(order):
            s = sweep(Path(tmp) / f"run{i}-w{w}", w, grid, base)
            times[w].append(s)
            print(f"  {jobs} jobs on {w} worker(s): {s:.1f} s ({jobs / s:.3f} jobs/s)", flush=True)
    t1, t2 = sum(times[1]), sum(times[2])
    print(f"sweep throughput, {jobs} jobs x {args.repeats} runs each, 1 ORT thread per worker, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} before / {os.getloadavg()[0]:.1f} after:")
    print(f"  1 worker : {jobs * args.repeats / t1:.3f} jobs/s")
    print(f"  2 workers: {jobs * args.repeats / t2:.3f} jobs/s")
    print(f"  ratio 2 workers / 1 worker: {t1 / t2:.2f}x")


if __name__ == "__main__":
    main()
