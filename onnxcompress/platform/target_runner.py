"""Runs inside the target (the chroot's python, numpy + onnxruntime only; no onnxcompress import).

    python3 target_runner.py JOB.json

JOB.json: {"models": {key: model path}, "feeds": feeds.npz or null, "outputs": out.npz,
           "optimized": {key: path to write ORT's optimized graph to}, "info": info.json}
feeds.npz holds run i's input NAME as "i/NAME"; out.npz gets model KEY's output j of run i as "KEY/i/j"
(outputs by position: names may hold any character). One intra-op thread, as on an edge device.
"""
import ctypes
import json
import platform
import sys

import numpy as np
import onnxruntime as ort

# Linux arm64 hwcaps (asm/hwcap.h): the int8 dot-product and matrix-multiply features ORT's MLAS picks kernels by
HWCAP = {"asimd": (16, 1 << 1), "asimddp": (16, 1 << 20), "sve": (16, 1 << 22), "i8mm": (26, 1 << 13),
         "bf16": (26, 1 << 14), "sve2": (26, 1 << 1)}


def cpu_features():
    try:
        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype = ctypes.c_ulong
        getauxval.argtypes = [ctypes.c_ulong]
    except (OSError, AttributeError):
        return []
    return [name for name, (at, bit) in HWCAP.items() if getauxval(at) & bit]


def session(path, optimized_path=None):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def main(job_path):
    with open(job_path) as f:
        job = json.load(f)
    runs = []
    if job.get("feeds"):
        with np.load(job["feeds"]) as z:
            for key in z.files:
                i, name = key.split("/", 1)
                i = int(i)
                while len(runs) <= i:
                    runs.append({})
                runs[i][name] = z[key]
    out = {}
    for key, path in job["models"].items():
        sess = session(path, job.get("optimized", {}).get(key))
        for i, feed in enumerate(runs):
            for j, value in enumerate(sess.run(None, feed)):
                out[f"{key}/{i}/{j}"] = value
    np.savez(job["outputs"], **out)
    with open(job["info"], "w") as f:
        json.dump({"onnxruntime": ort.__version__, "numpy": np.__version__, "machine": platform.machine(),
                   "python": platform.python_version(), "cpu_features": cpu_features()}, f)


if __name__ == "__main__":
    main(sys.argv[1])
