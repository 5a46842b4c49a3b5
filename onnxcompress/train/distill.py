"""Fine-tuning with knowledge distillation: the original model teaches the pruned one.

loss = (1 - alpha) * KL(softmax(t/T) || softmax(s/T)) * T^2 + alpha * cross-entropy(s, labels)
(alpha > 0 only when labels exist; alpha = 0, the default, is label-free, so any unlabeled data works,
even the calibration set). Models that are not classifiers use MSE on the chosen outputs instead.
Masks are re-applied after every optimizer step, so pruned weights stay exactly zero. Early stopping
on a validation metric; the best state is restored and checkpointed.

Validation metric (higher is better): top-1 % with labels; else % agreement of the argmax with the
teacher (kl); for mse, fidelity % = 100 * (1 - sum((s - t)^2) / sum(t^2)) against the teacher.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..config import TrainConfig
from ..errors import InputError
from .prune import Masks

Arrays = Union[np.ndarray, Sequence[np.ndarray]]
CACHE_BYTES = 256 * 2**20  # teacher outputs are computed once when they fit in this much memory


def as_inputs(x: Arrays) -> list[np.ndarray]:
    """One array (single-input model) or one array per model input, all with the same sample count."""
    xs = [x] if isinstance(x, np.ndarray) else list(x)
    if not xs or len({len(a) for a in xs}) != 1:
        raise InputError("training inputs must be one array per model input, all with the same number of samples")
    return xs


def outputs_of(out, select: Sequence[int] = ()) -> list:
    """Flatten a module output (tensor / tuple / list / dict) to tensors and keep the chosen indices."""
    import torch

    def leaves(o) -> list:
        if isinstance(o, torch.Tensor):
            return [o]
        if isinstance(o, dict):
            return [t for v in o.values() for t in leaves(v)]
        if isinstance(o, (list, tuple)):
            return [t for v in o for t in leaves(v)]
        return []

    flat = leaves(out)
    if not select:
        return flat
    bad = [i for i in select if not -len(flat) <= i < len(flat)]
    if bad:
        raise InputError(f"output index {bad[0]} does not exist: the model has {len(flat)} output(s); "
                         f"choose indices 0..{len(flat) - 1}")
    return [flat[i] for i in select]


def kd_loss(student_logits, teacher_logits, temperature: float, labels=None, alpha: float = 0.0, kind: str = "kl"):
    """Distillation loss for one output (see the module docstring); KL over the last axis."""
    import torch.nn.functional as F

    if kind == "mse":
        loss = F.mse_loss(student_logits, teacher_logits)
    else:
        t = temperature
        s = student_logits.reshape(-1, student_logits.shape[-1])
        p = teacher_logits.reshape(-1, teacher_logits.shape[-1])
        loss = F.kl_div(F.log_softmax(s / t, dim=-1), F.softmax(p / t, dim=-1), reduction="batchmean") * (t * t)
    if labels is not None and alpha > 0:
        loss = (1 - alpha) * loss + alpha * F.cross_entropy(student_logits, labels)
    return loss


def total_loss(s_outs: list, t_outs: list, cfg: TrainConfig, labels=None):
    """Sum of kd_loss over the chosen outputs; cross-entropy (labels) applies to the first one."""
    loss = 0.0
    for k, (s, t) in enumerate(zip(s_outs, t_outs)):
        loss = loss + kd_loss(s, t, cfg.temperature, labels if k == 0 else None, cfg.alpha, cfg.loss)
    return loss


def _batches(xs: list[np.ndarray], idx: np.ndarray) -> list:
    import torch

    return [torch.from_numpy(np.ascontiguousarray(a[idx])) for a in xs]


def evaluate(module, x: Arrays, labels: Optional[np.ndarray], teacher=None, batch: int = 500, kind: str = "kl",
             select: Sequence[int] = ()) -> float:
    """Validation metric in % (module docstring): top-1, agreement with the teacher, or mse fidelity."""
    import torch

    xs = as_inputs(x)
    n = len(xs[0])
    module.eval()
    hits, err, energy = 0, 0.0, 0.0
    with torch.no_grad():
        for i in range(0, n, batch):
            xb = _batches(xs, np.arange(i, min(n, i + batch)))
            out = outputs_of(module(*xb), select)
            if kind == "mse":
                ref = outputs_of(teacher(*xb), select)
                err += sum(float(((o.float() - r.float()) ** 2).sum()) for o, r in zip(out, ref))
                energy += sum(float((r.float() ** 2).sum()) for r in ref)
                continue
            pred = out[0].argmax(-1).numpy()
            ref = labels[i:i + batch] if labels is not None else outputs_of(teacher(*xb), select)[0].argmax(-1).numpy()
            hits += int((pred == ref).sum())
    if kind == "mse":
        return 100.0 * (1.0 - err / energy) if energy > 0 else (100.0 if err == 0 else -np.inf)
    return 100.0 * hits / n


def progress(epoch: int, epochs: int, step: int, steps: int, loss: float, t0: float) -> None:
    """Default progress bar on stderr: epoch, bar, running loss, elapsed seconds."""
    done = int(30 * step / max(steps, 1))
    sys.stderr.write(f"\r  epoch {epoch + 1}/{epochs} [{'#' * done}{'.' * (30 - done)}] loss {loss:.4f} "
                     f"{time.perf_counter() - t0:5.0f}s")
    sys.stderr.flush()


def _teacher_cache(teacher, xs: list[np.ndarray], select: Sequence[int], batch: int = 256) -> Optional[list]:
    """Teacher outputs for every sample, computed once (the teacher is frozen and there is no augmentation),
    or None when they would not fit in CACHE_BYTES."""
    import torch

    n = len(xs[0])
    with torch.no_grad():
        first = outputs_of(teacher(*_batches(xs, np.arange(min(n, batch)))), select)
        per_sample = sum(t.numel() * t.element_size() for t in first) / max(1, min(n, batch))
        if per_sample * n > CACHE_BYTES:
            return None
        parts = [first] + [outputs_of(teacher(*_batches(xs, np.arange(i, min(n, i + batch)))), select)
                           for i in range(batch, n, batch)]
    return [torch.cat([p[k] for p in parts]) for k in range(len(first))]


def _checkpoint(cfg: TrainConfig, name: str, state: dict, history: list[dict]) -> None:
    import torch

    d = Path(cfg.checkpoint_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        torch.save(state, d / f"{name}.pt")  # a plain state_dict: loads with torch.load(weights_only=True)
        (d / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    except OSError as exc:
        raise InputError(f"cannot write checkpoints into {d} ({exc.strerror or exc}); choose another --checkpoint-dir") from None


def distill(student, teacher, x: Arrays, labels: Optional[np.ndarray], cfg: TrainConfig, masks: Optional[Masks],
            val_x: Optional[Arrays] = None, val_labels: Optional[np.ndarray] = None,
            show: Optional[Callable] = progress, checkpoint_state: Optional[Callable] = None) -> list[dict]:
    """Train `student` to match `teacher` on x (labels used only when cfg.alpha > 0). The best state by the
    validation metric is restored at the end. Returns the history, one dict per epoch.
    checkpoint_state: maps the student's state_dict to what is checkpointed (e.g. full-width weights)."""
    import torch

    cfg.validate()
    xs = as_inputs(x)
    n = len(xs[0])
    if n < 1:
        raise InputError("no training samples; pass a data file with at least one sample")
    if labels is not None and cfg.alpha > 0 and len(labels) != n:
        raise InputError(f"{len(labels)} labels for {n} samples; give one label per sample")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    teacher.eval()
    select = cfg.outputs
    cache = _teacher_cache(teacher, xs, select)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise InputError("the student has no trainable parameters (requires_grad is False everywhere); unfreeze them")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    bs = min(cfg.batch_size, n)
    steps = max(1, n // bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps))
    use_labels = labels is not None and cfg.alpha > 0 and cfg.loss == "kl"
    vx = val_x if val_x is not None else [a[:1000] for a in xs]
    vy = val_labels if val_x is not None and cfg.loss == "kl" else None
    history: list[dict] = []
    best, best_state, bad = -np.inf, copy.deepcopy(student.state_dict()), 0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        student.train()
        if cfg.freeze_bn:  # small data: keep BatchNorm statistics as the teacher had them
            for m in student.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        order = rng.permutation(n)
        total = 0.0
        for i in range(steps):
            idx = np.sort(order[i * bs:(i + 1) * bs])
            xb = _batches(xs, idx)
            if cache is not None:
                t_outs = [c[torch.from_numpy(idx)] for c in cache]
            else:
                with torch.no_grad():
                    t_outs = outputs_of(teacher(*xb), select)
            yb = torch.from_numpy(labels[idx]) if use_labels else None
            loss = total_loss(outputs_of(student(*xb), select), t_outs, cfg, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if masks is not None:
                masks.apply(student)
            total += float(loss.detach())
            if show and (i % 10 == 0 or i == steps - 1):
                show(epoch, cfg.epochs, i + 1, steps, total / (i + 1), t0)
        metric = evaluate(student, vx, vy, teacher, kind=cfg.loss, select=select)
        history.append({"epoch": epoch + 1, "loss": total / steps, "val_metric": metric,
                        "seconds": round(time.perf_counter() - t0, 1)})
        if show:
            sys.stderr.write(f"  val {metric:.2f}\n")
        improved = metric > best
        if improved:
            best, best_state, bad = metric, copy.deepcopy(student.state_dict()), 0
        else:
            bad += 1
        if cfg.checkpoint_dir:
            conv = checkpoint_state or (lambda sd: sd)
            _checkpoint(cfg, "last", conv(student.state_dict()), history)
            if improved:
                _checkpoint(cfg, "best", conv(best_state), history)
        if bad >= cfg.patience:
            history[-1]["early_stop"] = True
            break
    student.load_state_dict(best_state)
    student.eval()
    return history
