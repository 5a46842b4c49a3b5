"""Torch-side 50% structured pruning + label-free distillation on the bundled model, then ONNX channel
removal and int8 quantization; and what unstructured sparsity does (and does not) buy.

    /work/venv/bin/python benchmarks/bench_distill.py [--images 60000] [--epochs 2] [--lr 3e-3]

Distillation data: unlabeled Fashion-MNIST training images (Debian package dataset-fashion-mnist) when
installed, else the bundled 512-image calibration set. Labels are never used for training or model
selection: early stopping watches the agreement with the teacher on 2000 held-out unlabeled training
images. The bundled 2000-image validation set (test split) is used only for the reported top-1 numbers.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "models"))


def training_images(n: int, held_out: int = 2000) -> tuple[np.ndarray, np.ndarray, str]:
    """(training images, disjoint held-out images for early stopping, description); no labels."""
    try:
        from train_fashion import find_data_dir, load_split

        x, _ = load_split(find_data_dir(), "train")
        idx = np.random.default_rng(0).permutation(len(x))
        n = min(n, len(x) - held_out)
        return (np.ascontiguousarray(x[idx[:n]]), np.ascontiguousarray(x[idx[-held_out:]]),
                f"{n} unlabeled Fashion-MNIST training images; early stopping on agreement with the teacher on "
                f"{held_out} other unlabeled training images")
    except SystemExit:
        x = np.load(ROOT / "calibration" / "fashion_calib.npz")["input"]
        return x, x, (f"the {len(x)} bundled calibration images (install dataset-fashion-mnist for more); early "
                      "stopping on agreement with the teacher on the same images")


def gz_size(p: Path) -> int:
    return len(gzip.compress(p.read_bytes(), compresslevel=9))


def main() -> None:
    import torch

    from fashion_net import build
    from onnxcompress.config import BenchConfig, ExportConfig, QuantConfig, TrainConfig
    from onnxcompress.data import Dataset
    from onnxcompress.evaluate.compare import topk
    from onnxcompress.runtime.session import make_session, run_dataset
    from onnxcompress.export import TensorSpec, export
    from onnxcompress.io import load_model, save_model
    from onnxcompress.passes.prune import remove_zeroed_channels
    from onnxcompress.pipeline import benchmark
    from onnxcompress.quant.qdq import quantize
    from onnxcompress.stats import count_macs, count_params
    from onnxcompress.torchload import load_weights
    from onnxcompress.train.distill import evaluate, progress
    from onnxcompress.train.prune import structured_masks, unstructured_masks, weight_sparsity
    from onnxcompress.train.run import finetune

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60000, help="unlabeled training images to distill on (capped at 58000)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--runs", type=int, default=300, help="latency runs per model")
    args = ap.parse_args()
    t_start = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    val = np.load(ROOT / "calibration" / "fashion_val.npz")
    vx, vy = val["input"], val["labels"]
    calib = np.load(ROOT / "calibration" / "fashion_calib.npz")["input"]
    teacher = build()
    teacher.load_state_dict(load_weights(ROOT / "models" / "fashion_net.safetensors"))
    teacher.eval()
    x, held_out, source = training_images(args.images)
    fp32_top1 = evaluate(teacher, vx, vy)

    student = copy.deepcopy(teacher)
    masks, _ = structured_masks(student, (torch.from_numpy(vx[:1]),), args.ratio)
    masks.apply(student)
    pruned_top1 = evaluate(student, vx, vy)
    cfg = TrainConfig(enabled=True, ratio=args.ratio, epochs=args.epochs, lr=args.lr, batch_size=128,
                      temperature=args.temperature, patience=2)
    t0 = time.perf_counter()
    history, how = finetune(student, teacher, [x], None, cfg, masks, [held_out], None, show=progress)
    train_s = time.perf_counter() - t0
    distilled_top1 = evaluate(student, vx, vy)
    drop = fp32_top1 - distilled_top1
    print(f"\nstructured {100 * args.ratio:.0f}% channel pruning (L2 filter norm, global, residual/depthwise groups "
          f"coupled) of the bundled FashionNet")
    print(f"label-free distillation (T={cfg.temperature:g}) on {source}")
    print(f"{len(history)} epoch(s), {train_s:.0f} s, training: {how}; top-1 on the 2000-image validation set:")
    print(f"   FP32 top-1                   {fp32_top1:6.2f}")
    print(f"   pruned, no fine-tuning       {pruned_top1:6.2f}  (drop {fp32_top1 - pruned_top1:5.2f} points)")
    print(f"   pruned + distilled           {distilled_top1:6.2f}  (drop {drop:5.2f} points: "
          f"{'within' if drop <= 1.0 else 'NOT within'} 1.0 point of FP32)")

    calib_ds = Dataset([{"input": calib}], None, "calib")
    val_ds = Dataset([{"input": vx}], vy, "val")
    ecfg = ExportConfig(exporter="torchscript")
    spec = [TensorSpec("input", (1, 1, 28, 28))]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        export(teacher, spec, d / "fp32.onnx", ecfg, output_names=["logits"])
        export(student, spec, d / "masked.onnx", ecfg, output_names=["logits"])
        removed, rec = remove_zeroed_channels(load_model(d / "masked.onnx"))
        save_model(removed, d / "pruned.onnx")
        save_model(quantize(removed, calib_ds, QuantConfig())[0], d / "pruned.int8.onnx")
        save_model(quantize(load_model(d / "fp32.onnx"), calib_ds, QuantConfig())[0], d / "fp32.int8.onnx")
        paths = {"fp32": d / "fp32.onnx", "fp32 int8": d / "fp32.int8.onnx", "pruned": d / "pruned.onnx",
                 "pruned int8": d / "pruned.int8.onnx"}
        lat = benchmark(paths, val_ds, BenchConfig(warmup=20, runs=args.runs, batch_sizes=(1,), threads=(1,)))
        key = next(iter(lat["fp32"]))
        base_size = paths["fp32"].stat().st_size
        base_macs = count_macs(load_model(paths["fp32"]))[0]
        print(f"\nafter ONNX channel removal ({rec.stats['groups_removed']} channel groups removed exactly) and int8 "
              f"quantization; latency: ORT CPU, batch 1, 1 thread, {args.runs} interleaved runs")
        print(f"   {'model':12s} {'size KB':>8s} {'size':>6s} {'params':>8s} {'MACs':>6s} {'ms':>7s} {'latency':>8s} {'top-1':>6s}")
        for name, p in paths.items():
            m = load_model(p)
            top1 = topk(run_dataset(make_session(p), val_ds, 256)["logits"], vy)
            t = lat[name][key]
            size = p.stat().st_size
            print(f"   {name:12s} {size / 1e3:8.1f} {size / base_size:5.2f}x {count_params(m):8,d} "
                  f"{count_macs(m)[0] / base_macs:5.2f}x {t['median_ms']:7.3f} {1 / t['speedup']:7.2f}x {top1:6.2f}")
        print("   (ratios against fp32: size, MACs and latency; lower is better)")

        # unstructured sparsity: what it buys (compressed size) and what it does not (ORT speed)
        sparse = copy.deepcopy(teacher)
        um = unstructured_masks(sparse, args.ratio)
        um.apply(sparse)
        export(sparse, spec, d / "sparse.onnx", ecfg, output_names=["logits"])
        lat2 = benchmark({"fp32": paths["fp32"], "sparse": d / "sparse.onnx"}, val_ds,
                         BenchConfig(warmup=20, runs=args.runs, batch_sizes=(1,), threads=(1,)))
        s_top1 = topk(run_dataset(make_session(d / "sparse.onnx"), val_ds, 256)["logits"], vy)
        ratio_lat = lat2["sparse"][key]["median_ms"] / lat2["fp32"][key]["median_ms"]
        print(f"\nunstructured {100 * args.ratio:.0f}% L1 sparsity (global threshold, no fine-tuning): "
              f"{100 * weight_sparsity(sparse):.1f}% of conv/linear weights are exact zeros, top-1 {s_top1:.2f}")
        print(f"   ORT latency sparse/dense: {ratio_lat:.2f}x  (ORT's CPU kernels are dense: zeros cost the same)")
        print(f"   file size sparse/dense: {(d / 'sparse.onnx').stat().st_size / base_size:.2f}x raw, "
              f"{gz_size(d / 'sparse.onnx') / gz_size(paths['fp32']):.2f}x gzip-compressed "
              "(what unstructured sparsity buys: smaller downloads)")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
