"""Torch-side 50% structured pruning + label-free distillation on the bundled model, then ONNX channel
removal and int8 quantization; and what unstructured sparsity does (and does not) buy.

    .venv/bin/python benchmarks/bench_distill.py [--epochs 4] [--images 60000] [--lr 2e-3]

Distillation data: unlabeled Fashion-MNIST training images (Debian package dataset-fashion-mnist) when
installed, else the bundled 512-image calibration set. Labels are never used for training; the bundled
2000-image validation set (test split) is used for the numbers and for early stopping.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "models"))


def training_images(n: int) -> tuple[np.ndarray, str]:
    try:
        from train_fashion import find_data_dir, load_split

        x, _ = load_split(find_data_dir(), "train")
        idx = np.random.default_rng(0).permutation(len(x))[:n]
        return np.ascontiguousarray(x[idx]), f"{n} unlabeled Fashion-MNIST training images"
    except SystemExit:
        x = np.load(ROOT / "calibration" / "fashion_calib.npz")["input"]
        return x, f"the {len(x)} bundled calibration images (install dataset-fashion-mnist for more)"


def main() -> None:
    import torch

    from fashion_net import build
    from onnxcompress.config import BenchConfig, QuantConfig, TrainConfig
    from onnxcompress.data import Dataset
    from onnxcompress.evaluate.compare import topk
    from onnxcompress.evaluate.runner import make_session, run_dataset
    from onnxcompress.export import TensorSpec, export
    from onnxcompress.io import load_model, save_model
    from onnxcompress.passes.prune import remove_zeroed_channels
    from onnxcompress.pipeline import benchmark
    from onnxcompress.quant.qdq import quantize
    from onnxcompress.stats import count_params
    from onnxcompress.torchload import load_weights
    from onnxcompress.train.distill import distill, evaluate
    from onnxcompress.train.prune import structured_masks, unstructured_masks

    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--images", type=int, default=60000)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    val = np.load(ROOT / "calibration" / "fashion_val.npz")
    vx, vy = val["input"], val["labels"]
    calib = np.load(ROOT / "calibration" / "fashion_calib.npz")["input"]
    teacher = build()
    teacher.load_state_dict(load_weights(ROOT / "models" / "fashion_net.safetensors"))
    teacher.eval()
    x, source = training_images(args.images)
    fp32_top1 = evaluate(teacher, vx, vy)

    student = copy.deepcopy(teacher)
    masks, summary = structured_masks(student, (torch.from_numpy(vx[:1]),), 0.5)
    masks.apply(student)
    pruned_top1 = evaluate(student, vx, vy)
    cfg = TrainConfig(enabled=True, epochs=args.epochs, lr=args.lr, batch_size=128, temperature=4.0, patience=2)
    history = distill(student, teacher, x, None, cfg, masks, val_x=vx, val_labels=vy)
    distilled_top1 = evaluate(student, vx, vy)
    print(f"\nstructured 50% pruning of the bundled model; distillation on {source}, label-free, "
          f"{len(history)} epoch(s)")
    print(f"   FP32 top-1                            {fp32_top1:6.2f}")
    print(f"   pruned, no fine-tuning                {pruned_top1:6.2f}  (drop {fp32_top1 - pruned_top1:5.2f})")
    print(f"   pruned + distilled                    {distilled_top1:6.2f}  (drop {fp32_top1 - distilled_top1:5.2f})")

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        spec = [TensorSpec("input", (1, 1, 28, 28))]
        from onnxcompress.config import ExportConfig

        export(teacher, spec, d / "fp32.onnx", ExportConfig(exporter="torchscript"), output_names=["logits"])
        export(student, spec, d / "masked.onnx", ExportConfig(exporter="torchscript"), output_names=["logits"])
        removed, rec = remove_zeroed_channels(load_model(d / "masked.onnx"))
        save_model(removed, d / "pruned.onnx")
        q, _ = quantize(removed, Dataset([{"input": calib}], None, "calib"), QuantConfig())
        save_model(q, d / "pruned.int8.onnx")
        fq, _ = quantize(load_model(d / "fp32.onnx"), Dataset([{"input": calib}], None, "calib"), QuantConfig())
        save_model(fq, d / "fp32.int8.onnx")
        paths = {"fp32": d / "fp32.onnx", "fp32 int8": d / "fp32.int8.onnx", "pruned": d / "pruned.onnx",
                 "pruned int8": d / "pruned.int8.onnx"}
        ds = Dataset([{"input": vx}], vy, "val")
        lat = benchmark(paths, ds, BenchConfig(warmup=20, runs=300, batch_sizes=(1,), threads=(1,)))
        print("\nafter ONNX channel removal and int8 quantization (latency: batch 1, 1 thread, interleaved)")
        base = paths["fp32"].stat().st_size
        for name, p in paths.items():
            top1 = topk(run_dataset(make_session(p), ds, 256)["logits"], vy)
            t = lat[name]["cpu/t1/b1"]
            print(f"   {name:12s} size {p.stat().st_size / 1e3:7.1f} KB ({p.stat().st_size / base:.2f}x)  params "
                  f"{count_params(load_model(p)):8,d}  {t['median_ms']:.3f} ms ({t['speedup']:.2f}x)  top-1 {top1:6.2f}")
        print(f"   channel groups removed by the ONNX pass: {rec.stats['groups_removed']}")

        # unstructured sparsity: what it buys (compressed size) and what it does not (ORT speed)
        sparse = copy.deepcopy(teacher)
        um = unstructured_masks(sparse, 0.5)
        um.apply(sparse)
        export(sparse, spec, d / "sparse.onnx", ExportConfig(exporter="torchscript"), output_names=["logits"])
        lat2 = benchmark({"fp32": paths["fp32"], "50% sparse": d / "sparse.onnx"}, ds,
                         BenchConfig(warmup=20, runs=300, batch_sizes=(1,), threads=(1,)))

        def gz(p: Path) -> int:
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as f:
                f.write(p.read_bytes())
            return buf.tell()

        s_top1 = topk(run_dataset(make_session(d / "sparse.onnx"), ds, 256)["logits"], vy)
        print(f"\nunstructured 50% L1 sparsity (global), no fine-tuning: sparsity {100 * um.sparsity():.1f}% "
              f"of conv/linear weights, top-1 {s_top1:.2f}")
        print(f"   ORT latency ratio sparse/dense: {lat2['50% sparse']['cpu/t1/b1']['median_ms'] / lat2['fp32']['cpu/t1/b1']['median_ms']:.2f}"
              "  (ORT's CPU kernels are dense: zeros are multiplied like any other number)")
        print(f"   file size sparse/dense: {(d / 'sparse.onnx').stat().st_size / base:.2f} raw, "
              f"{gz(d / 'sparse.onnx') / gz(paths['fp32']):.2f} gzip-compressed (what sparsity buys: smaller downloads)")


if __name__ == "__main__":
    main()
