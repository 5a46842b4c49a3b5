"""onnxcompress's quantizer side by side with plain onnxruntime.quantization.quantize_static.

    .venv/bin/python benchmarks/bench_quant.py

Same models, same calibration data, one run, ratios printed:
  1. calibration peak memory (fresh subprocess each, ru_maxrss) with 1000 vs 32 samples;
  2. Percentile / Entropy calibration time, ours vs ORT's;
  3. top-1 on the bundled model: our defaults vs ORT per-channel vs ORT defaults;
  4. fusion coverage (share of MACs on int8 kernels) of our output on the bundled CNN;
  5. the bundled depthwise-heavy MobileNetV2 and ViT (torch.nn.TransformerEncoder), trained on
     Fashion-MNIST by models/train_extra.py: agreement / cosine with FP32, our defaults vs ORT's;
  6. peak RSS of a whole quantization on an ImageNet-size CNN (MobileNetV2, 224^2, random weights, built by
     bench_data.mobilenet_v2) at 32 and 1,000 samples (random images, streamed): our `quantize` (no -v, and
     with -v) against ORT's MinMax quantize_static (quant_pre_process + a reader of one sample a run), each
     run in a fresh process (VmHWM). Targets: ours <= 1.5x ORT's; flat from 32 to 1,000 samples.

    .venv/bin/python benchmarks/bench_quant.py rss     # section 6 only
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
    from onnxcompress.runtime.session import make_session

    r = make_session(ref).run(None, {make_session(ref).get_inputs()[0].name: x})[0]
    s = make_session(cand)
    c = s.run(None, {s.get_inputs()[0].name: x})[0]
    m = output_metrics(r, c)
    return m["agreement"], m["cosine"]


def section_memory_and_speed() -> None:
    print("1-2. calibration only (same pre-processed bundled model, batches of 8): peak RSS of a fresh process, "
          "time (best of 3)")
    print(f"{'tool':6s} {'method':10s} {'32: MB':>8s} {'1000: MB':>9s} {'ratio':>6s} {'1000: s':>8s}")
    times = {}
    for method in ("minmax", "percentile", "entropy"):
        for tool in ("ort", "ours"):
            small, big = run_worker(tool, method, 32), run_worker(tool, method, 1000)
            # time: best of 3 fresh processes (a busy machine only ever adds time)
            big["seconds"] = min([big["seconds"]] + [run_worker(tool, method, 1000)["seconds"] for _ in range(2)])
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
    from onnxcompress.runtime.session import make_session, run_dataset
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
            a = audit(onnx.load(str(p)))
            t = lat[name]["cpu/t1/b1"]
            print(f"   {name:16s} top-1 {top1:6.2f}  drop {base - top1:5.2f}  int8 share of MACs {100 * a['int8_mac_share']:5.1f}%"
                  f" ({len(a['float_islands'])} float islands)  "
                  f"{t['median_ms']:.3f} ms  speedup vs FP32 {t['speedup']:.2f}x")


def _wide_encoder(d: Path):
    """A wider torch.nn.TransformerEncoder (d=256, 2 layers, 64 tokens; seeded random weights, random
    inputs): where int8 GEMMs dominate the run time. Accuracy claims come from the trained ViT."""
    import torch

    torch.manual_seed(0)
    nn = torch.nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(32, 256)
            layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True, activation="gelu")
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(256, 10)

        def forward(self, x):
            return self.head(self.enc(self.inp(x)).mean(1))

    p = d / "encoder256.onnx"
    torch.onnx.export(Encoder().eval(), (torch.randn(1, 64, 32),), str(p), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}})
    rng = np.random.default_rng(0)
    cal, val = d / "enc_cal.npz", d / "enc_val.npz"
    np.savez(cal, input=rng.standard_normal((256, 64, 32)).astype(np.float32))
    np.savez(val, input=rng.standard_normal((500, 64, 32)).astype(np.float32))
    return p, cal, val


def section_other_models() -> None:
    from onnxcompress.config import BenchConfig, QuantConfig
    from onnxcompress.data import input_specs, load_data
    from onnxcompress.evaluate.compare import output_metrics, topk
    from onnxcompress.runtime.session import make_session, run_dataset
    from onnxcompress.pipeline import benchmark
    from onnxcompress.quant.audit import audit
    from onnxcompress.quant.search import quantize_model

    print("\n5. our defaults vs ORT's defaults (quantize_static, QDQ, per-tensor, int8 activations) on the bundled\n"
          "   depthwise-heavy MobileNetV2 and ViT (torch.nn.TransformerEncoder), both trained on Fashion-MNIST\n"
          "   (models/train_extra.py), and a wider TransformerEncoder; vs FP32 on the validation data;\n"
          "   latency batch 1, 1 thread, interleaved")
    cal_fm, val_fm = ROOT / "calibration" / "fashion_calib.npz", VAL
    with tempfile.TemporaryDirectory() as top:
        enc = _wide_encoder(Path(top))
        cases = [("fashion_mbv2", ROOT / "models" / "fashion_mbv2.onnx", cal_fm, val_fm),
                 ("fashion_vit", ROOT / "models" / "fashion_vit.onnx", cal_fm, val_fm),
                 ("encoder-256 (random weights)", *enc)]
        for name, src, cal_p, val_p in cases:
            specs = input_specs(onnx.load(str(src)))
            val, calib = load_data(val_p, specs), load_data(cal_p, specs)
            cb = [{"input": b["input"]} for b in calib.batches(32)]
            d = Path(tempfile.mkdtemp(dir=top))
            paths = {"fp32": src, "ours (defaults)": d / "ours.onnx", "ort defaults": d / "ortdef.onnx",
                     "ort per-channel": d / "ortpc.onnx"}
            ours_quantize(src, paths["ours (defaults)"], calib)
            ort_quantize(src, paths["ort defaults"], cb)
            ort_quantize(src, paths["ort per-channel"], cb, per_channel=True, activation="uint8")
            lat = benchmark(paths, val, BenchConfig(warmup=20, runs=300, batch_sizes=(1,), threads=(1,)))
            ref = run_dataset(make_session(src), val, 256)["logits"]
            print(f"   {name}")
            rows = {}
            for label, p in paths.items():
                out = run_dataset(make_session(p), val, 256)["logits"]
                m = output_metrics(ref, out)
                rows[label] = m
                t = lat[label]["cpu/t1/b1"]
                top1 = f"top-1 {topk(out, val.labels):6.2f}  " if val.labels is not None else ""
                a = audit(onnx.load(str(p)))
                print(f"     {label:16s} {top1}agreement {m['agreement']:6.2f}%  cosine {m['cosine']:.6f}  "
                      f"SQNR {m['sqnr_db']:5.1f} dB  {t['speedup']:.2f}x FP32 speed  int8 MACs "
                      f"{100 * a['int8_mac_share']:5.1f}% ({len(a['float_islands'])} float islands)")
            o, r = rows["ours (defaults)"], rows["ort defaults"]
            verdict = "beat" if o["agreement"] >= r["agreement"] and o["cosine"] > r["cosine"] else "do NOT beat"
            print(f"     our defaults {verdict} ORT's: agreement {o['agreement']:.2f} vs {r['agreement']:.2f}, "
                  f"cosine {o['cosine']:.6f} vs {r['cosine']:.6f}")
            if name != "fashion_mbv2":
                q, rec = quantize_model(onnx.load(str(src)), calib, val, QuantConfig(mode="auto", metric="cosine"))
                print(f"     --mode auto (budget 1 cosine point): {rec.stats['auto']['why']}")


class RandomImages:
    """A streamed source (sources.base.Source) of n random 3x224x224 images, sample i seeded by i: the same
    samples for every tool and run, never all in memory."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed = n, seed
        self.description = f"{n} random 224^2 images"
        self.names = ["x"]
        self.labels = None

    def __len__(self) -> int:
        return self.n

    def one(self, i: int) -> np.ndarray:
        return np.random.default_rng((self.seed, int(i))).standard_normal((3, 224, 224)).astype(np.float32)

    def read(self, indices) -> dict:
        return {"x": np.stack([self.one(i) for i in indices])}


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))


def rss_worker(tool: str, n: int, model: str) -> None:
    """One whole quantization in this fresh process; prints its peak RSS (VmHWM) and the RSS before it started."""
    import onnxruntime  # noqa: F401 - import cost is shared by both tools

    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        if tool == "ort":
            from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
            from onnxruntime.quantization.shape_inference import quant_pre_process

            src = RandomImages(n)

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.i = 0

                def get_next(self):
                    if self.i >= n:
                        return None
                    self.i += 1
                    return {"x": src.one(self.i - 1)[None]}

            pre = Path(d) / "pre.onnx"
            quant_pre_process(model, str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(Path(d) / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ)
        else:
            from onnxcompress.config import QuantConfig
            from onnxcompress.data import model_layout
            from onnxcompress.io import load_model, save_model
            from onnxcompress.quant.search import quantize_model
            from onnxcompress.sources.base import StreamDataset

            m = load_model(model)
            layout = model_layout(m)
            cal = StreamDataset(RandomImages(n), np.arange(n), layout=layout)
            val = StreamDataset(RandomImages(n, seed=1), np.arange(n), layout=layout) if tool == "ours -v" else None
            # the CLI's defaults (speed check, quality check on calibration data; -v: auto mode with the search),
            # the search capped at 30 s (its memory does not grow with the layers it tries)
            q, _ = quantize_model(m, cal, val, QuantConfig(calibration_samples=n, fallback_seconds=30.0))
            save_model(q, Path(d) / "q.onnx")
    print(json.dumps({"peak_mb": _status_mb("VmHWM"), "before_mb": before, "seconds": time.perf_counter() - t0}))


def section_peak_rss() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_data import mobilenet_v2

    print("\n6. peak RSS of a whole quantization, MobileNetV2 224^2 (random weights, BN folded, 14 MB), random images\n"
          "   streamed; a fresh process per run (VmHWM; 'before' = RSS after imports). ORT: quant_pre_process +\n"
          "   quantize_static MinMax QDQ, a reader of one sample a run. Ours: quantize_model with the CLI defaults\n"
          "   (speed check, quality check on 64 calibration samples); -v: the same N validation samples, auto mode")
    rows: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as d:
        model = Path(d) / "mobilenet_v2.onnx"
        mobilenet_v2(model)
        for n in (32, 1000):
            for tool in ("ort", "ours", "ours -v"):
                out = subprocess.run([sys.executable, __file__, "--rss-worker", tool, str(n), str(model)],
                                     capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                if out.returncode != 0:
                    raise RuntimeError(out.stderr[-2000:])
                rows[(tool, n)] = r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"   {tool:8s} {n:5d} samples: peak {r['peak_mb']:6.0f} MB (before {r['before_mb']:4.0f} MB), "
                      f"{r['seconds']:6.1f} s", flush=True)
    for n in (32, 1000):
        ort_mb = rows[("ort", n)]["peak_mb"]
        print(f"   {n:5d} samples: ours / ORT {rows[('ours', n)]['peak_mb'] / ort_mb:.2f}x, "
              f"ours -v / ORT {rows[('ours -v', n)]['peak_mb'] / ort_mb:.2f}x (target <= 1.5x)")
    for tool in ("ort", "ours", "ours -v"):
        print(f"   {tool:8s} 1000 vs 32 samples: {rows[(tool, 1000)]['peak_mb'] / rows[(tool, 32)]['peak_mb']:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--rss-worker":
        rss_worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "rss":
        section_peak_rss()
    else:
        section_memory_and_speed()
        section_accuracy()
        section_other_models()
        section_peak_rss()
