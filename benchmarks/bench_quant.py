"""onnxcompress's quantizer side by side with plain onnxruntime.quantization.quantize_static.

    .venv/bin/python benchmarks/bench_quant.py

Same models, same calibration data, one run, ratios printed:
  1. calibration peak memory (fresh subprocess each, ru_maxrss) with 1000 vs 32 samples;
  2. Percentile / Entropy calibration time, ours vs ORT's;
  3. top-1 on the bundled model: our defaults vs ORT per-channel vs ORT defaults;
  4. fusion coverage (share of MACs on int8 kernels) of our output on the bundled CNN;
  5. a depthwise-heavy MobileNetV2-style CNN and a torch.nn.TransformerEncoder, both trained here in
     seconds on scikit-learn's bundled digits: agreement / cosine with FP32, our defaults vs ORT's.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = ROOT / "models" / "fashion_net.onnx"
VAL = ROOT / "calibration" / "fashion_val.npz"


def ort_quantize(src: Path, dst: Path, batches, method: str = "minmax", per_channel: bool = False,
                 activation: str = "int8") -> float:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    t0 = time.perf_counter()
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=methods[method])
    return time.perf_counter() - t0


def ours_quantize(src: Path, dst: Path, batches_ds, method: str = "minmax", samples: int = 512) -> float:
    from onnxcompress.config import QuantConfig
    from onnxcompress.io import load_model, save_model
    from onnxcompress.quant.qdq import quantize

    m = load_model(src)
    t0 = time.perf_counter()
    q, _ = quantize(m, batches_ds, QuantConfig(calibration=method, calibration_samples=samples))
    dt = time.perf_counter() - t0
    save_model(q, dst)
    return dt


def worker(tool: str, method: str, n: int) -> None:
    """Runs in a fresh process: calibration only (the part that differs), print seconds and peak RSS."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    x = np.load(VAL)["input"]
    x = np.concatenate([x] * (n // len(x) + 1))[:n]
    # batches of 8 divide both 32 and 1000: ORT's Percentile/Entropy crash on a short last batch
    batches = [{"input": x[i:i + 8]} for i in range(0, n, 8)]
    with tempfile.TemporaryDirectory() as d:
        pre = Path(d) / "pre.onnx"
        quant_pre_process(str(MODEL), str(pre), skip_symbolic_shape=True)
        if tool == "ort":
            from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
            from onnxruntime.quantization.calibrate import create_calibrator

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter(batches)

                def get_next(self):
                    return next(self.it, None)

            methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                       "entropy": CalibrationMethod.Entropy}
            t0 = time.perf_counter()
            cal = create_calibrator(pre, None, augmented_model_path=str(Path(d) / "aug.onnx"),
                                    calibrate_method=methods[method])
            cal.collect_data(Reader())
            ranges = cal.compute_data()
        else:
            from onnxcompress.quant.calibrate import calibrate

            t0 = time.perf_counter()
            ranges = calibrate(onnx.load(str(pre)), iter(batches), method).ranges
        dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "tensors": len(list(ranges.keys()))}))


def run_worker(tool: str, method: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", tool, method, str(n)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def agreement_cosine(ref: Path, cand: Path, x: np.ndarray) -> tuple[float, float]:
    from onnxcompress.evaluate.compare import output_metrics
    from onnxcompress.evaluate.runner import make_session

    r = make_session(ref).run(None, {make_session(ref).get_inputs()[0].name: x})[0]
    s = make_session(cand)
    c = s.run(None, {s.get_inputs()[0].name: x})[0]
    m = output_metrics(r, c)
    return m["agreement"], m["cosine"]


def section_memory_and_speed() -> None:
    print("1-2. calibration only (same pre-processed bundled model, batches of 8): peak RSS of a fresh process, time")
    print(f"{'tool':6s} {'method':10s} {'32: MB':>8s} {'1000: MB':>9s} {'ratio':>6s} {'1000: s':>8s}")
    times = {}
    for method in ("minmax", "percentile", "entropy"):
        for tool in ("ort", "ours"):
            small, big = run_worker(tool, method, 32), run_worker(tool, method, 1000)
            times[(tool, method)] = big["seconds"]
            print(f"{tool:6s} {method:10s} {small['maxrss_mb']:8.0f} {big['maxrss_mb']:9.0f} "
                  f"{big['maxrss_mb'] / small['maxrss_mb']:6.2f} {big['seconds']:8.2f}")
    try:
        with tempfile.TemporaryDirectory() as d:
            x = np.load(VAL)["input"][:40]
            ort_quantize(MODEL, Path(d) / "q.onnx", [{"input": x[:32]}, {"input": x[32:]}], "percentile")
        print("   ORT Percentile with batches of 32 and 8: ran")
    except ValueError as exc:
        print(f"   ORT Percentile with batches of 32 and 8 (samples of unequal count): crashes after calibrating "
              f"({type(exc).__name__}: {str(exc)[:60]}...); ours takes any batch shapes")
    for method in ("percentile", "entropy"):
        print(f"   {method}: ours is {times[('ort', method)] / times[('ours', method)]:.1f}x faster than ORT's")


def section_accuracy() -> None:
    from onnxcompress.data import input_specs, load_data
    from onnxcompress.evaluate.compare import topk
    from onnxcompress.evaluate.runner import make_session, run_dataset
    from onnxcompress.quant.audit import audit

    val = load_data(VAL, input_specs(onnx.load(str(MODEL))))
    calib = load_data(ROOT / "calibration" / "fashion_calib.npz", input_specs(onnx.load(str(MODEL))))
    cb = [{"input": b["input"]} for b in calib.batches(32)]
    with tempfile.TemporaryDirectory() as d:
        paths = {"fp32": MODEL, "ours (defaults)": Path(d) / "ours.onnx", "ort per-channel": Path(d) / "ortpc.onnx",
                 "ort defaults": Path(d) / "ortdef.onnx"}
        ours_quantize(MODEL, paths["ours (defaults)"], calib)
        ort_quantize(MODEL, paths["ort per-channel"], cb, per_channel=True)
        ort_quantize(MODEL, paths["ort defaults"], cb)
        from onnxcompress.config import BenchConfig
        from onnxcompress.pipeline import benchmark

        lat = benchmark(paths, val, BenchConfig(warmup=20, runs=300, batch_sizes=(1,), threads=(1,)))
        print("\n3-4. bundled Fashion-MNIST CNN, 2000 validation images; latency batch 1, 1 thread, interleaved")
        base = None
        for name, p in paths.items():
            top1 = topk(run_dataset(make_session(p), val, 256)["logits"], val.labels)
            base = base if base is not None else top1
            share = audit(onnx.load(str(p)))["int8_mac_share"]
            t = lat[name]["cpu/t1/b1"]
            print(f"   {name:16s} top-1 {top1:6.2f}  drop {base - top1:5.2f}  int8 share of MACs {100 * share:5.1f}%  "
                  f"{t['median_ms']:.3f} ms  speedup vs FP32 {t['speedup']:.2f}x")


def _train_digits_models(d: Path) -> dict[str, tuple[Path, np.ndarray]]:
    import torch
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    torch.set_num_threads(2)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    n_tr = 1400
    nn = torch.nn

    def mb_block(c, e):
        return nn.Sequential(nn.Conv2d(c, c * e, 1, bias=False), nn.BatchNorm2d(c * e), nn.ReLU6(),
                             nn.Conv2d(c * e, c * e, 3, 1, 1, groups=c * e, bias=False), nn.BatchNorm2d(c * e), nn.ReLU6(),
                             nn.Conv2d(c * e, c, 1, bias=False), nn.BatchNorm2d(c))

    class MobileNetish(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
            self.blocks = nn.ModuleList([mb_block(16, 6) for _ in range(3)])
            self.fc = nn.Linear(16, 10)

        def forward(self, v):
            v = self.stem(v)
            for b in self.blocks:
                v = v + b(v)
            return self.fc(v.mean((2, 3)))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, 64)
            self.pos = nn.Parameter(torch.randn(1, 8, 64) * 0.1)
            layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True, activation="gelu")
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.fc = nn.Linear(64, 10)

        def forward(self, v):
            return self.fc(self.enc(self.embed(v) + self.pos).mean(1))

    out = {}
    for name, net, xs in (("mobilenetv2-style", MobileNetish(), x[:, None]), ("transformer", Encoder(), x)):
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        xt, yt = torch.from_numpy(xs[:n_tr]), torch.from_numpy(y[:n_tr])
        for epoch in range(15):
            perm = torch.randperm(n_tr)
            for i in range(0, n_tr, 64):
                idx = perm[i:i + 64]
                loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            acc = (net(torch.from_numpy(xs[n_tr:])).argmax(1).numpy() == y[n_tr:]).mean() * 100
        p = d / f"{name}.onnx"
        torch.onnx.export(net, torch.from_numpy(xs[:1]), str(p), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}})
        print(f"   trained {name}: {acc:.1f}% on {len(y) - n_tr} held-out digits")
        out[name] = (p, xs)
    return out


def section_other_models() -> None:
    from onnxcompress.data import Dataset

    print("\n5. models trained here on sklearn digits: agreement % / cosine with FP32 on 397 held-out images"
          " (one image = 0.25 points)")
    with tempfile.TemporaryDirectory() as d:
        for name, (p, xs) in _train_digits_models(Path(d)).items():
            calib, held = xs[:512], xs[1400:]
            ours, ortd = Path(d) / f"{name}.ours.onnx", Path(d) / f"{name}.ort.onnx"
            ours_quantize(p, ours, Dataset([{"input": calib}], None, "digits"))
            ort_quantize(p, ortd, [{"input": calib[i:i + 32]} for i in range(0, 512, 32)])
            a1, c1 = agreement_cosine(p, ours, held)
            a2, c2 = agreement_cosine(p, ortd, held)
            print(f"   {name:18s} ours {a1:6.2f}% / {c1:.5f}   ORT defaults {a2:6.2f}% / {c2:.5f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        section_memory_and_speed()
        section_accuracy()
        section_other_models()
