"""Real data from disk: image folders streamed into calibration, against the .npz path.

    .venv/bin/python benchmarks/bench_data.py

One run, figures printed:
  1. peak RSS of calibration (`quantize_model`, static, every sample, with its speed and quality checks) from
     folders of 32, 256 and 2,000 JPEGs (256x256 RGB, imagenet preset: 224^2 crops), fresh subprocess each,
     ru_maxrss: 2,000 vs 32 should be <= 1.1x. The model is a small 224^2 CNN built here (data-dominated: the worst case for the ratio), or
     MobileNetV2 with --model mobilenet_v2. For scale: the 2,000 samples as one float32 array (the .npz
     path) are 1.2 GB;
  2. images/s decoded and preprocessed (Pillow JPEG decode + resize + crop + normalize), 1 and 2 threads;
  3. on the bundled model: the Fashion-MNIST arrays written as a PNG ImageFolder and read back: the same
     FP32 top-1 (2,000 validation images), the same calibration ranges (512 calibration images) and the
     same int8 top-1 as the .npz path.
All data is made here from the bundled arrays (nothing is downloaded) in a temporary folder.
"""
from __future__ import annotations

import json
import resource
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


def small_cnn(path: Path) -> None:
    """A small CNN on 3x224x224 (random weights): the data, not the model, dominates memory (the worst case
    for the ratio: every MB of data shows)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.1).astype(np.float32), n) for n, s in
             (("w1", (16, 3, 3, 3)), ("w2", (32, 16, 3, 3)), ("w3", (64, 32, 3, 3)), ("fc", (10, 64)))]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["c1"], strides=[4, 4], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["r1"]),
             n("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]), n("Relu", ["c2"], ["r2"]),
             n("Conv", ["r2", "w3"], ["c3"], strides=[2, 2], pads=[1, 1, 1, 1]), n("Relu", ["c3"], ["r3"]),
             n("GlobalAveragePool", ["r3"], ["g"]), n("Flatten", ["g"], ["f"]), n("Gemm", ["f", "fc"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save_model(m, str(path))


def mobilenet_v2(path: Path) -> None:
    """MobileNetV2 (width 1.0, 224^2, 1000 classes; BatchNorm folded: Conv+bias, Clip 0..6) with random He-scaled
    weights, built here with onnx.helper: an ImageNet-size model with a real working set."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []
    k = [0]

    def conv(x, cin, cout, ksize=1, stride=1, group=1, act=True):
        k[0] += 1
        w, b, y = f"w{k[0]}", f"b{k[0]}", f"t{k[0]}"
        fan = cin // group * ksize * ksize
        inits.append(numpy_helper.from_array((rng.standard_normal((cout, cin // group, ksize, ksize))
                                              * np.sqrt(2 / fan)).astype(np.float32), w))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), b))
        p = ksize // 2
        nodes.append(helper.make_node("Conv", [x, w, b], [y + ("c" if act else "")], strides=[stride, stride],
                                      pads=[p] * 4, group=group))
        if act:
            nodes.append(helper.make_node("Clip", [y + "c", "zero", "six"], [y]))
        return y

    inits += [numpy_helper.from_array(np.array(0, np.float32), "zero"), numpy_helper.from_array(np.array(6, np.float32), "six")]
    x, c = conv("x", 3, 32, 3, 2), 32
    for t, cout, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            h = conv(x, c, c * t) if t != 1 else x
            h = conv(h, c * t, c * t, 3, s if i == 0 else 1, group=c * t)
            h = conv(h, c * t, cout, act=False)
            if i > 0 or (s == 1 and c == cout):
                nodes.append(helper.make_node("Add", [x, h], [h + "r"]))
                h += "r"
            x, c = h, cout
    x = conv(x, c, 1280)
    inits.append(numpy_helper.from_array((rng.standard_normal((1000, 1280)) * 0.03).astype(np.float32), "fc"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "mobilenet_v2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save_model(m, str(path))


def worker(model: str, folder: str, n: int) -> None:
    """Calibrate on the first n images of `folder` (streamed) and report this process's peak RSS."""
    import onnx

    from onnxcompress.config import DataConfig, ImageConfig, QuantConfig
    from onnxcompress.data import load_data, model_layout
    from onnxcompress.quant.search import quantize_model

    m = onnx.load(model)
    ds = load_data(folder, model_layout(m), DataConfig(image=ImageConfig(preset="imagenet")), m)
    t0 = time.perf_counter()
    _, rec = quantize_model(m, ds, None, QuantConfig(mode="static", calibration_samples=n, equalize=False))
    cal = rec.to_dict()["stats"]["calibration"]
    print(json.dumps({"samples": cal["samples"], "runs": cal["batches"], "seconds": time.perf_counter() - t0,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_worker(model: Path, folder: Path, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", str(model), str(folder), str(n)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_section(tmp: Path, model_name: str) -> None:
    from onnxcompress.sources.demo import write_fashion_folder

    model = tmp / "model.onnx"
    (mobilenet_v2 if model_name == "mobilenet_v2" else small_cnn)(model)
    t0 = time.perf_counter()
    big = write_fashion_folder(VAL, tmp / "jpeg2000", limit=2000, fmt="jpg", size=256, rgb=True)
    print(f"wrote 2,000 JPEGs (256x256 RGB, from the bundled Fashion-MNIST arrays) in {time.perf_counter() - t0:.1f} s")
    files = sorted(big.rglob("*.jpg"))
    rng = np.random.default_rng(0)
    runs = {}
    for n in (32, 256):
        sub = tmp / f"jpeg{n}"
        sub.mkdir()
        for f in [files[i] for i in sorted(rng.choice(len(files), n, replace=False))]:
            (sub / f.name).write_bytes(f.read_bytes())
        runs[n] = run_worker(model, sub, n)
    runs[2000] = run_worker(model, big, 2000)
    mb = {n: r["maxrss_mb"] for n, r in runs.items()}
    ratio = mb[2000] / mb[32]
    print(f"1. calibration peak RSS on {model_name} (224^2, imagenet preset), fresh process each: "
          f"32 JPEGs {mb[32]:.0f} MB, 256 {mb[256]:.0f} MB, 2,000 {mb[2000]:.0f} MB; 2,000 vs 32: {ratio:.3f}x "
          f"(limit 1.1x) [{'OK' if ratio <= 1.1 else 'OVER'}], +{mb[2000] - mb[32]:.0f} MB; 2,000 vs 256: "
          f"{mb[2000] / mb[256]:.3f}x. Calibration runs of {runs[32]['samples'] // runs[32]['runs']} samples "
          f"({runs[32]['runs']} runs for 32, {runs[2000]['runs']} for 2,000: sized to ~16 MB by runtime.budget), so "
          f"32 samples already hold the steady state (one run in the model, the next decoded). The 2,000 samples as "
          f"one float32 array (the .npz path): {2000 * 3 * 224 * 224 * 4 / 1e9:.2f} GB")
    print(f"   calibration time: {runs[2000]['seconds']:.1f} s for 2,000, {runs[32]['seconds']:.1f} s for 32")
    decode_section(big, model)


def decode_section(folder: Path, model: Path) -> None:
    import onnx

    from onnxcompress.config import DataConfig, ImageConfig
    from onnxcompress.data import input_specs
    from onnxcompress.sources import open_source

    m = onnx.load(str(model))
    line = []
    for workers in (1, 2):
        ds = open_source(folder, input_specs(m), DataConfig(workers=workers, image=ImageConfig(preset="imagenet")), m)
        t0 = time.perf_counter()
        n = sum(len(b["x"]) for b in ds.batches(32))
        line.append(f"{n / (time.perf_counter() - t0):.0f} images/s with {workers} thread{'s' if workers > 1 else ''}")
    print("2. decoded + preprocessed (JPEG 256^2 -> resize 256 -> crop 224 -> normalize): " + ", ".join(line))


def equality_section(tmp: Path) -> None:
    import onnx
    import onnxruntime as ort

    from onnxcompress.config import QuantConfig
    from onnxcompress.data import feeds, load_data, model_layout
    from onnxcompress.quant.calibrate import calibrate
    from onnxcompress.quant.search import quantize_model
    from onnxcompress.sources.demo import fashion_data_config, write_fashion_folder

    m = onnx.load(str(MODEL))
    layout = model_layout(m)
    cfg = fashion_data_config()
    val_dir = write_fashion_folder(VAL, tmp / "val_png")
    cal_dir = write_fashion_folder(CALIB, tmp / "calib_png")
    val_npz, cal_npz = load_data(VAL, layout), load_data(CALIB, layout)
    val_img, cal_img = load_data(val_dir, layout, cfg, m), load_data(cal_dir, layout, cfg, m)

    def top1(model, ds) -> float:
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        pred = np.concatenate([s.run(None, dict(f))[0].argmax(1) for f in feeds(ds, 256)])
        return float((pred == ds.labels).mean() * 100)

    r_npz = calibrate(m, feeds(cal_npz, 64)).ranges
    r_img = calibrate(m, feeds(cal_img, 64)).ranges
    diff = max(max(abs(a - c), abs(b - d)) / max(abs(a), abs(b), 1e-12) for (a, b), (c, d)
               in ((r_npz[k], r_img[k]) for k in r_npz))
    q_npz, _ = quantize_model(m, cal_npz, None, QuantConfig(mode="static"))
    q_img, _ = quantize_model(m, cal_img, None, QuantConfig(mode="static"))
    t = [top1(m, val_npz), top1(m, val_img), top1(q_npz, val_npz), top1(q_img, val_npz), top1(q_img, val_img)]
    print(f"3. bundled model, .npz vs PNG folder: FP32 top-1 {t[0]:.2f} vs {t[1]:.2f} (2,000 images); calibration "
          f"ranges of {len(r_npz)} tensors: same keys {set(r_npz) == set(r_img)}, largest relative difference "
          f"{diff:.1e}; int8 top-1 (calibrated on .npz vs on PNGs, scored on the .npz) {t[2]:.2f} vs {t[3]:.2f} "
          f"(on the PNGs: {t[4]:.2f})")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["small_cnn", "mobilenet_v2"], default="small_cnn",
                    help="224^2 model calibrated in section 1 (mobilenet_v2: a real working set, ~10x slower)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-data-") as d:
        tmp = Path(d)
        memory_section(tmp, args.model)
        equality_section(tmp)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
