"""Fine-tuning with knowledge distillation: the original model teaches the pruned one.

loss = KL(softmax(t/T) || softmax(s/T)) * T^2  (+ alpha * cross-entropy when labels exist);
label-free by default, so any unlabeled data works (even the calibration set); MSE on the outputs for
models that are not classifiers. Early stopping on a validation metric, best checkpoint restored.
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..config import TrainConfig
from .prune import Masks


def kd_loss(student_logits, teacher_logits, temperature: float, labels=None, alpha: float = 0.0, kind: str = "kl"):
    import torch.nn.functional as F

    if kind == "mse":
        loss = F.mse_loss(student_logits, teacher_logits)
    else:
        t = temperature
        loss = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.softmax(teacher_logits / t, dim=-1),
                        reduction="batchmean") * (t * t)
    if labels is not None and alpha > 0:
        loss = (1 - alpha) * loss + alpha * F.cross_entropy(student_logits, labels)
    return loss


def evaluate(module, x: np.ndarray, labels: Optional[np.ndarray], teacher=None, batch: int = 500) -> float:
    """top-1 % with labels, else % agreement with the teacher's predictions."""
    import torch

    module.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i:i + batch])
            pred = module(xb).argmax(-1).numpy()
            ref = labels[i:i + batch] if labels is not None else teacher(xb).argmax(-1).numpy()
            hits += int((pred == ref).sum())
    return 100.0 * hits / len(x)


def progress(epoch: int, epochs: int, step: int, steps: int, loss: float, t0: float) -> None:
    done = int(30 * step / max(steps, 1))
    sys.stderr.write(f"\r  epoch {epoch + 1}/{epochs} [{'#' * done}{'.' * (30 - done)}] loss {loss:.4f} "
                     f"{time.perf_counter() - t0:5.0f}s")
    sys.stderr.flush()


def distill(student, teacher, x: np.ndarray, labels: Optional[np.ndarray], cfg: TrainConfig, masks: Optional[Masks],
            val_x: Optional[np.ndarray] = None, val_labels: Optional[np.ndarray] = None,
            show: Callable = progress) -> list[dict]:
    """Train `student` to match `teacher` on x (labels used only when cfg.alpha > 0). Returns the history."""
    import torch

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    teacher.eval()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    steps = max(1, len(x) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps))
    history: list[dict] = []
    best, best_state, bad = -np.inf, copy.deepcopy(student.state_dict()), 0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        student.train()
        for m in student.modules():  # small data: keep BN statistics as the teacher had them
            if cfg.freeze_bn and isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        order = rng.permutation(len(x))
        total = 0.0
        for i in range(steps):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb = torch.from_numpy(x[idx])
            with torch.no_grad():
                t = teacher(xb)
            yb = torch.from_numpy(labels[idx]) if (labels is not None and cfg.alpha > 0) else None
            loss = kd_loss(student(xb), t, cfg.temperature, yb, cfg.alpha, cfg.loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if masks is not None:
                masks.apply(student)
            total += float(loss.detach())
            if show and (i % 20 == 0 or i == steps - 1):
                show(epoch, cfg.epochs, i + 1, steps, total / (i + 1), t0)
        vx = val_x if val_x is not None else x[:1000]
        metric = evaluate(student, vx, val_labels if val_x is not None else None, teacher)
        history.append({"epoch": epoch + 1, "loss": total / steps, "val_metric": metric})
        if show:
            sys.stderr.write(f"  val {metric:.2f}\n")
        if metric > best:
            best, best_state, bad = metric, copy.deepcopy(student.state_dict()), 0
            if cfg.checkpoint_dir:
                Path(cfg.checkpoint_dir).mkdir(parents=True, exist_ok=True)
                torch.save(best_state, Path(cfg.checkpoint_dir) / "best.pt")
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    student.load_state_dict(best_state)
    return history
