"""Pruning a real pretrained ImageNet CNN to 0.7x MACs, without and with label-free distillation, and int8 on top.

    .venv/bin/python benchmarks/bench_prune.py --real                      # (b) runs prune-distill for --budget
    .venv/bin/python benchmarks/bench_prune.py --real --distilled P.onnx   # (b) from an earlier prune-distill run

Model and photos: benchmarks/real_cnn.py (EfficientNet-Lite0 from a PyPI wheel; Tux Paint's photo stamps from
Debian). Every model is made by the CLI, as a user would (the commands are printed): `simplify`; (a) `prune
--target-macs 0.7 -c TRAIN` (or `--ratio`, whichever this version offers) on <= 1000 unlabeled images; (b)
`prune-distill --student (a) --data DISTILL --val VAL --time-budget B` ((a) trained on wallpaper crops and stamp
composites, its best state chosen on VAL: other source images than DISTILL's, never the held-out photos; see
real_cnn.build_distill); `quantize -c TRAIN` of FP32, (a) and (b). Quality: top-1
agreement with the FP32 model (and mean KL) on the held-out photos (no labels exist). Speed: batch 1, one
thread, all models timed interleaved in one run (the machine may be shared: the load average is printed).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_cnn  # noqa: E402

from onnxcompress.config import BenchConfig, DataConfig, ImageConfig  # noqa: E402
from onnxcompress.data import load_data, model_layout  # noqa: E402
from onnxcompress.runtime.session import make_session, run_dataset  # noqa: E402
from onnxcompress.io import load_model  # noqa: E402
from onnxcompress.pipeline import benchmark  # noqa: E402
from onnxcompress.stats import count_params, macs_or_none  # noqa: E402
from onnxcompress.train.onnx_distill import agreement_kl  # noqa: E402

CLI = str(ROOT / ".venv" / "bin" / "onnxcompress")
PRESET = ["--preset", "minus1_1"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cli(*args: str, timeout: float = 7200) -> subprocess.CompletedProcess:
    cmd = [CLI, *args]
    log("$ onnxcompress " + " ".join(args))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    tail = "\n".join((r.stdout.strip().splitlines() + r.stderr.strip().splitlines()[-3:])[-8:])
    log(f"  exit {r.returncode} in {time.perf_counter() - t0:.0f} s\n  " + tail.replace("\n", "\n  "))
    return r


def prune_flags(target: float) -> list[str]:
    """--target-macs when this version's prune has it; else nothing (the caller reports it)."""
    help_text = subprocess.run([CLI, "prune", "--help"], capture_output=True, text=True).stdout
    return ["--target-macs", str(target)] if "--target-macs" in help_text else []


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench_prune.py --real")
    ap.add_argument("--cache", default=str(ROOT.parent / "cache_real"), help="wheels, Debian package, photos, models")
    ap.add_argument("--target", type=float, default=0.7, help="fraction of MACs kept")
    ap.add_argument("--calibration", type=int, default=256,
                    help="unlabeled images the ONNX pruner reads (<= 1000; its layer-by-layer refit reads them once per level)")
    ap.add_argument("--pruned", help="a `prune` output to report as (a) instead of pruning now")
    ap.add_argument("--distilled", help="a prune-distill output to report as (b) instead of training now")
    ap.add_argument("--budget", default="30m", help="prune-distill --time-budget when (b) is trained now")
    ap.add_argument("--lr", default="2e-4")
    ap.add_argument("--prune-args", default="", help="extra `prune` flags for (a), e.g. '--step 0' (one shot)")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per model (batch 1)")
    ap.add_argument("--skip-int8", action="store_true")
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    work = cache / "run"
    work.mkdir(parents=True, exist_ok=True)
    raw = real_cnn.fetch_model(cache, log)
    folders = real_cnn.build_photos(cache, log=log)
    train, held = str(folders["train"]), str(folders["heldout"])
    dist = real_cnn.build_distill(cache, log=log)
    load_before = os.getloadavg()
    paths: dict[str, Path] = {}
    notes: list[str] = []

    fp32 = work / "fp32.onnx"
    if not fp32.exists():
        cli("simplify", str(raw), "-o", str(fp32))
    paths["fp32"] = fp32

    flags = prune_flags(args.target)
    a = Path(args.pruned) if args.pruned else work / "pruned_a.onnx"
    if args.pruned:
        paths["(a) pruned"] = a
    elif flags:
        r = cli("prune", str(fp32), *flags, *args.prune_args.split(), "-c", train, "--calibration-samples",
                str(args.calibration), *PRESET, "-o", str(a))
        if a.exists() and r.returncode in (0, 1):
            paths["(a) pruned"] = a
        else:
            notes.append(f"(a) prune failed: exit {r.returncode}")
    else:
        notes.append("(a) this version's `prune` has no --target-macs")

    b = Path(args.distilled) if args.distilled else work / "pruned_b.onnx"
    if not args.distilled:
        start = ["--student", str(a)] if "(a) pruned" in paths else \
            ["--target-macs", str(args.target), "--calibration-samples", str(args.calibration)]
        cli("prune-distill", str(fp32), "--data", str(dist["distill"]), "--val", str(dist["val"]), *PRESET, *start,
            "--time-budget", args.budget,
            "--batch-size", "32", "--lr", args.lr, "--temperature", "1", "--checkpoint-dir", str(work / "checkpoints"),
            "-o", str(b))
    if b.exists():
        paths["(b) distilled"] = b

    if not args.skip_int8:
        for name in list(paths):
            q = work / f"{paths[name].stem}_int8.onnx"
            if not q.exists():
                cli("quantize", str(paths[name]), "-c", train, "--samples", "256", *PRESET, "-o", str(q))
            if q.exists():
                paths[f"{name} int8"] = q

    # quality on the held-out photos: top-1 agreement with FP32
    base = load_model(fp32)
    dcfg = DataConfig(image=ImageConfig(preset="minus1_1"), seed=None)
    val = load_data(held, model_layout(base), dcfg, base)
    ref = run_dataset(make_session(fp32), val, 32)["logits"]
    quality = {n: agreement_kl(run_dataset(make_session(p), val, 32)["logits"], ref) for n, p in paths.items()}
    feed = {"input": np.zeros((1, 3, 224, 224), np.float32)}
    size = {n: (count_params(load_model(p)), macs_or_none(load_model(p), feed)[0]) for n, p in paths.items()}

    lat = benchmark(paths, val, BenchConfig(warmup=20, runs=args.runs, batch_sizes=(1,), threads=(1,)))
    load_after = os.getloadavg()
    p0, m0 = size["fp32"]
    print(f"EfficientNet-Lite0 (ImageNet, {p0:,} params, {m0 / 1e6:.0f} M MACs) at {args.target}x MACs; "
          f"{len(val)} held-out photos ({len(val) // 2} objects x 2 views), agreement = top-1 equal to FP32's")
    print(f"{'model':22s} {'params':>10s} {'MACs':>8s} {'x':>5s} {'agree %':>8s} {'drop':>6s} {'KL':>7s} "
          f"{'b1 ms':>7s} {'speedup':>7s}")
    for n in paths:
        p, m = size[n]
        ag, kl = quality[n]
        t = lat[n]["cpu/t1/b1"]
        print(f"{n:22s} {p:10,d} {m / 1e6:7.1f}M {m / m0:5.2f} {ag:8.2f} {100 - ag:6.2f} {kl:7.4f} "
              f"{t['median_ms']:7.2f} {t['speedup']:6.2f}x")
    print(f"load average (1/5/15 min) before {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
          f"after {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} on {os.cpu_count()} cores; "
          "latencies are medians of interleaved runs, so ratios are comparable, absolute times are not")
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    main(sys.argv[1:])
