"""Train the two benchmark models of models/extra_nets.py on Fashion-MNIST (seeded).

    apt-get update && apt-get install -y dataset-fashion-mnist
    python models/train_extra.py mbv2 vit       # ~5 min each on 2 CPU cores

Writes models/fashion_{mbv2,vit}.{onnx,safetensors,json}. The bundled calibration/validation files
(calibration/fashion_*.npz) are shared with FashionNet.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from extra_nets import BUILDERS  # noqa: E402
from train_fashion import accuracy, find_data_dir, load_split  # noqa: E402


def train(name: str, epochs: int, lr: float, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    d = find_data_dir()
    xtr, ytr = load_split(d, "train")
    xte, yte = load_split(d, "test")
    model = BUILDERS[name]()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05 if name == "vit" else 1e-4)
    bs = 128
    steps = epochs * (len(xtr) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.time()
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g).numpy()
        for i in range(len(xtr) // bs):
            idx = perm[i * bs:(i + 1) * bs]
            x = torch.from_numpy(xtr[idx])
            flip = torch.rand(len(idx), generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = F.cross_entropy(model(x), torch.from_numpy(ytr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"{name} epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, {time.time() - t0:.0f}s", flush=True)
    acc = accuracy(model, xte, yte)
    model.eval()
    onnx_path = HERE / f"fashion_{name}.onnx"
    torch.onnx.export(model, torch.from_numpy(xte[:1]), str(onnx_path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(HERE / f"fashion_{name}.safetensors"))
    info = {"model": name, "top1_test_10k": round(acc, 2), "epochs": epochs, "lr": lr, "seed": seed,
            "params": sum(p.numel() for p in model.parameters()), "train_seconds": round(time.time() - t0),
            "command": f"python models/train_extra.py {name}"}
    (HERE / f"fashion_{name}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(info)
    return info


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="+", choices=sorted(BUILDERS))
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for n in args.names:
        train(n, args.epochs, 3e-3 if n == "mbv2" else 1e-3)
