"""Train the bundled FashionNet on Fashion-MNIST and write the bundled files.

    apt-get update && apt-get install -y dataset-fashion-mnist
    python models/train_fashion.py            # ~8 min on 2 CPU cores

Writes models/fashion_net.{safetensors,pt,onnx,json} and calibration/fashion_{calib,val}.npz.
Seeded: the same command gives the same weights on the same machine and library versions.
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from fashion_net import MEAN, STD, build  # noqa: E402


def find_data_dir() -> Path:
    try:
        files = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        sys.exit("dataset-fashion-mnist is not installed: apt-get update && apt-get install -y dataset-fashion-mnist")
    gz = [Path(line) for line in files.splitlines() if line.endswith("train-images-idx3-ubyte.gz")]
    if not gz:
        sys.exit("dataset-fashion-mnist lists no train-images-idx3-ubyte.gz; pass --data-dir")
    return gz[0].parent


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(d: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(d / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y = read_idx(d / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return ((x - MEAN) / STD)[:, None], y


@torch.no_grad()
def accuracy(model, x: np.ndarray, y: np.ndarray, bs: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        correct += int((model(torch.from_numpy(x[i:i + bs])).argmax(1).numpy() == y[i:i + bs]).sum())
    return 100.0 * correct / len(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(2)
    d = args.data_dir or find_data_dir()
    xtr, ytr = load_split(d, "train")
    xte, yte = load_split(d, "test")
    model = build(args.width)
    steps = args.epochs * (len(xtr) // args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.25)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(xtr))
        for i in range(len(xtr) // args.batch_size):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            xb = xtr[idx].copy()
            flip = rng.random(len(idx)) < 0.5
            xb[flip] = xb[flip][..., ::-1]  # horizontal flip: clothes are left-right symmetric
            loss = F.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(ytr[idx]), label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if i % 100 == 0:
                print(f"epoch {epoch} step {i} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
        print(f"epoch {epoch}: test top-1 {accuracy(model, xte, yte):.2f}%", flush=True)
    train_s = time.time() - t0
    model.eval()
    test_acc = accuracy(model, xte, yte)

    # bundled data: calibration from train, labeled validation from test (seeded subsets)
    calib_idx = np.sort(rng.choice(len(xtr), 512, replace=False))
    val_idx = np.sort(rng.choice(len(xte), 2000, replace=False))
    (ROOT / "calibration").mkdir(exist_ok=True)
    np.savez_compressed(ROOT / "calibration" / "fashion_calib.npz", input=xtr[calib_idx], labels=ytr[calib_idx])
    np.savez_compressed(ROOT / "calibration" / "fashion_val.npz", input=xte[val_idx], labels=yte[val_idx])
    val_acc = accuracy(model, xte[val_idx], yte[val_idx])

    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(sd, HERE / "fashion_net.pt")
    from safetensors.torch import save_file

    save_file(sd, str(HERE / "fashion_net.safetensors"))
    onnx_path = HERE / "fashion_net.onnx"
    torch.onnx.export(model, torch.from_numpy(xte[:1]), str(onnx_path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(xte[:64])).numpy()
    err = float(np.abs(sess.run(None, {"input": xte[:64]})[0] - ref).max())
    assert err < 1e-4, f"ONNX export differs from torch by {err}"
    meta = {
        "model": "FashionNet", "width": args.width, "parameters": int(sum(p.numel() for p in model.parameters())),
        "test_top1_10k": round(test_acc, 2), "val_top1_2000": round(val_acc, 2), "epochs": args.epochs,
        "seed": args.seed, "train_seconds": round(train_s, 1), "normalize": {"mean": MEAN, "std": STD},
        "input": {"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32"},
        "onnx_max_abs_error_vs_torch": err, "torch": torch.__version__,
        "command": "python models/train_fashion.py " + " ".join(sys.argv[1:]),
    }
    (HERE / "fashion_net.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
