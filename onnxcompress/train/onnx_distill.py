"""Recovery by distillation for any ONNX model: prune in ONNX, train the pruned graph in torch, write it back.

    model.onnx --simplify--> teacher (FP32, run by ONNX Runtime)
               --prune_model (the ONNX channel groups: allocation to --target-macs or --ratio, refit)--> student graph
               --from_onnx.to_torch--> student module (parameters = the student graph's initializers)
               --label-free distillation within a time budget (best state by held-out agreement, checkpoints)-->
               --from_onnx.write_back--> the same student graph with trained weights, checked in ORT against torch

Pruning happens once, on the ONNX side, with the ONNX dependency groups (passes/prune): the student is
the physically smaller graph, so nothing is masked while training (the channels are already removed,
exactly as remove_zeroed_channels removes zeroed ones) and every step costs the pruned MACs, not the
original's. The teacher is the FP32 ONNX model itself, run by ORT on the same augmented batch as the student.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx

from ..config import PruneConfig, TrainConfig
from ..errors import InputError, InternalError
from ..passes.base import PassRecord
from .distill import kd_loss

Arrays = dict  # input name -> np.ndarray, samples first
Show = Optional[Callable[[str], None]]


def collect(data, limit: Optional[int] = None, batch: int = 64) -> Arrays:
    """A dataset's canonical batches (samples first) as one array per input, held in memory."""
    parts: dict[str, list] = {}
    for b in data.batches(batch, limit):
        for k, v in b.items():
            parts.setdefault(k, []).append(v)
    if not parts:
        raise InputError("the training data holds no samples; pass a folder or file with at least one sample")
    return {k: np.concatenate(v) for k, v in parts.items()}


def _n(xs: Arrays) -> int:
    return len(next(iter(xs.values())))


def _take(xs: Arrays, idx) -> Arrays:
    return {k: v[idx] for k, v in xs.items()}


def augment(x: np.ndarray, rng: np.random.Generator, min_scale: float = 0.35) -> np.ndarray:
    """Random resized crop (area share in [min_scale, 1], aspect 3/4..4/3) back to H x W, and random
    horizontal flip, per sample of an N x C x H x W batch (bilinear, via torch). Other shapes pass through."""
    import torch
    import torch.nn.functional as F

    if x.ndim != 4 or x.dtype != np.float32:
        return x
    n, _, h, w = x.shape
    out = np.empty_like(x)
    for i in range(n):
        area = rng.uniform(min_scale, 1.0) * h * w
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch = int(round(min(h, math.sqrt(area / ratio))))
        cw = int(round(min(w, math.sqrt(area * ratio))))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = torch.from_numpy(x[i:i + 1, :, top:top + ch, left:left + cw])
        img = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False).numpy()[0]
        out[i] = img[:, :, ::-1] if rng.random() < 0.5 else img
    return out


def agreement_kl(student_logits: np.ndarray, teacher_logits: np.ndarray) -> tuple[float, float]:
    """(% of samples whose argmax over the last axis matches the teacher's, mean KL(teacher || student))."""
    s = student_logits.reshape(-1, student_logits.shape[-1]).astype(np.float64)
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1]).astype(np.float64)
    agree = 100.0 * float((s.argmax(-1) == t.argmax(-1)).mean())
    ls = s - s.max(-1, keepdims=True)
    ls -= np.log(np.exp(ls).sum(-1, keepdims=True))
    lt = t - t.max(-1, keepdims=True)
    lt -= np.log(np.exp(lt).sum(-1, keepdims=True))
    kl = float((np.exp(lt) * (lt - ls)).sum(-1).mean())
    return agree, kl


def run_ort(session, xs: Arrays, batch: int = 32) -> np.ndarray:
    """First output of an ORT session over the samples, in batches."""
    outs = [session.run(None, _take(xs, slice(i, i + batch)))[0] for i in range(0, _n(xs), batch)]
    return np.concatenate(outs)


def run_torch(module, xs: Arrays, batch: int = 32) -> np.ndarray:
    import torch

    module.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, _n(xs), batch):
            b = _take(xs, slice(i, i + batch))
            y = module(*[_tensor(b[name]) for name in module.input_names])
            outs.append((y[0] if isinstance(y, tuple) else y).numpy())
    return np.concatenate(outs)


def _tensor(a: np.ndarray):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _lr_at(cfg: TrainConfig, progress: float) -> float:
    """Short linear warm-up (first 3%), then cosine decay to 0 over the budget (time or epochs)."""
    if progress < 0.03:
        return cfg.lr * max(progress / 0.03, 0.05)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _save(cfg: TrainConfig, name: str, module, history: list[dict]) -> None:
    import torch

    d = Path(cfg.checkpoint_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        state = {k: torch.from_numpy(v) for k, v in module.onnx_state().items()}  # keys: ONNX initializer names
        tmp = d / f".{name}.pt.part"
        torch.save(state, tmp)  # a plain dict of tensors: torch.load(weights_only=True) reads it
        tmp.replace(d / f"{name}.pt")
        (d / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    except OSError as exc:
        raise InputError(f"cannot write checkpoints into {d} ({exc.strerror or exc}); choose another --checkpoint-dir") from None


def load_checkpoint(module, path: str | Path) -> None:
    """Load a best.pt/last.pt (ONNX initializer name -> tensor) into a student module (weights_only=True)."""
    import torch

    from .from_onnx import param_name

    state = torch.load(str(path), weights_only=True)
    with torch.no_grad():
        for name, t in state.items():
            key = param_name(name)
            if key not in module.params or tuple(module.params[key].shape) != tuple(t.shape):
                raise InputError(f"checkpoint {path} does not fit this student (tensor '{name}'); resume with the "
                                 "same model and pruning settings")
            module.params[key].copy_(t)


def distill_graph(teacher: onnx.ModelProto, student: onnx.ModelProto, train: Arrays, val: Arrays, cfg: TrainConfig,
                  show: Show = None) -> tuple[onnx.ModelProto, dict]:
    """Train `student` (an ONNX graph) to match `teacher` (ORT) on augmented `train` samples, label-free (KL
    on the first output). Stops at cfg.time_budget seconds (else cfg.epochs passes over the data); the
    state with the best held-out agreement (ties: lower KL) is kept, checkpointed as best.pt, and written
    back into the student graph, which must then match the torch student in ORT. Returns (model, stats)."""
    import torch

    from ..runtime.session import make_session
    from .from_onnx import max_error, to_torch, write_back

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    say = show or (lambda msg: None)
    t_sess = make_session(teacher, spinning=False)  # idle ORT threads must not spin against torch's
    module = to_torch(student)
    for p in module.params.values():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    t_val = run_ort(t_sess, val)
    start_agree, start_kl = agreement_kl(run_torch(module, val), t_val)
    history: list[dict] = [{"step": 0, "samples": 0, "seconds": 0.0, "val_agreement": start_agree, "val_kl": start_kl}]
    say(f"student before training: held-out agreement {start_agree:.2f}%, KL {start_kl:.4f} ({_n(val)} samples)")
    best = (start_agree, -start_kl)
    best_state = copy.deepcopy(module.state_dict())
    opt = torch.optim.AdamW(list(module.params.values()), lr=cfg.lr, weight_decay=0.0)
    n, bs = _n(train), min(cfg.batch_size, _n(train))
    steps_per_epoch = max(1, n // bs)
    total_steps = None if cfg.time_budget else cfg.epochs * steps_per_epoch
    evals = max(1, cfg.evaluations)
    t0 = time.perf_counter()
    step, seen, next_eval, order, pos, loss_avg = 0, 0, 1, rng.permutation(n), 0, None
    while True:
        elapsed = time.perf_counter() - t0
        frac = elapsed / cfg.time_budget if cfg.time_budget else step / total_steps
        if frac >= 1.0:
            break
        if pos + bs > n:
            order, pos = rng.permutation(n), 0
        idx = np.sort(order[pos:pos + bs])
        pos += bs
        batch = {k: augment(v, rng) if cfg.augment else v for k, v in _take(train, idx).items()}
        t_out = torch.from_numpy(t_sess.run(None, batch)[0])
        module.train()
        s_out = module(*[_tensor(batch[name]) for name in module.input_names])
        s_out = s_out[0] if isinstance(s_out, tuple) else s_out
        loss = kd_loss(s_out, t_out, cfg.temperature)
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, frac)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step, seen = step + 1, seen + bs
        value = float(loss.detach())
        loss_avg = value if loss_avg is None else 0.95 * loss_avg + 0.05 * value
        if step % 5 == 0:
            say(f"step {step}: {seen} samples, loss {loss_avg:.4f}, lr {_lr_at(cfg, frac):.2e}, "
                f"{time.perf_counter() - t0:.0f} s")
        frac = (time.perf_counter() - t0) / cfg.time_budget if cfg.time_budget else step / total_steps
        if frac >= next_eval / evals or frac >= 1.0:
            next_eval = int(frac * evals) + 1
            agree, kl = agreement_kl(run_torch(module, val), t_val)
            history.append({"step": step, "samples": seen, "seconds": round(time.perf_counter() - t0, 1),
                            "loss": loss_avg, "val_agreement": agree, "val_kl": kl})
            improved = (agree, -kl) > best
            if improved:
                best, best_state = (agree, -kl), copy.deepcopy(module.state_dict())
            say(f"held-out agreement {agree:.2f}%, KL {kl:.4f} after {seen} samples"
                + (" (best so far, kept)" if improved else f" (best {best[0]:.2f}%)"))
            if cfg.checkpoint_dir:
                _save(cfg, "last", module, history)
                if improved:
                    _save(cfg, "best", module, history)
    module.load_state_dict(best_state)
    module.eval()
    out = write_back(student, module)
    feeds = _take(val, slice(0, 8))
    err = max_error(out, module, feeds)
    if not err <= 1e-4:
        raise InternalError(f"prune-distill: the written student differs from the torch student by {err:.2e} "
                            "(relative to the output range); the converter computed another function")
    stats = {"steps": step, "samples_seen": seen, "seconds": round(time.perf_counter() - t0, 1),
             "history": history, "start_agreement": start_agree, "start_kl": start_kl,
             "best_agreement": best[0], "best_kl": -best[1], "max_error_vs_torch": err, "val_samples": _n(val)}
    return out, stats


def prune_distill_onnx(model: onnx.ModelProto, train, prune: PruneConfig, cfg: TrainConfig, val=None,
                       show: Show = None, calibration_samples: int = 1000,
                       student: Optional[onnx.ModelProto] = None) -> tuple[onnx.ModelProto, PassRecord]:
    """Simplify, prune on the ONNX side (prune: ratio or target, refit on calibration samples), distill
    the pruned graph from the simplified FP32 model, return the trained pruned model and its record.
    student: an already pruned model of `model` (e.g. written by `onnxcompress prune`) to train instead.
    train/val: datasets (data.Dataset / sources.StreamDataset) or arrays (input name -> samples first);
    without val, the last 10% of train (at most 500 samples) is held out for choosing the best state."""
    from ..passes.simplify import simplify
    from ..stats import count_params, macs_or_none

    cfg.validate()
    say = show or (lambda msg: None)
    xs = train if isinstance(train, dict) else collect(train)
    if val is None:
        k = min(500, max(1, _n(xs) // 10))
        if _n(xs) - k < 1:
            raise InputError("prune-distill needs at least 2 samples (one to train on, one held out); pass more data or -v VAL")
        val, xs = _take(xs, slice(_n(xs) - k, None)), _take(xs, slice(0, _n(xs) - k))
    vs = val if isinstance(val, dict) else collect(val)
    rec = PassRecord("prune-distill")
    base, simp = simplify(model)
    rec.skipped.extend(simp.skipped)
    from .from_onnx import to_torch

    to_torch(base)  # unsupported ops are refused before any pruning work
    if student is not None:
        _same_interface(base, student)
        pruned = student
        rec.stats["prune"] = {"student": "given (already pruned)"}
    else:
        pruned = _prune(base, xs, prune, calibration_samples, say, rec)
    feed = _take(vs, slice(0, 1))
    rec.stats.update(params_before=count_params(base), params_after=count_params(pruned),
                     macs_before=macs_or_none(base, feed)[0], macs_after=macs_or_none(pruned, feed)[0])
    say(f"pruned: MACs {rec.stats['macs_before']} -> {rec.stats['macs_after']}; distilling on {_n(xs)} samples, "
        f"held-out {_n(vs)}" + (f", budget {cfg.time_budget:.0f} s" if cfg.time_budget else f", {cfg.epochs} epochs"))
    trained, dstats = distill_graph(base, pruned, xs, vs, cfg, show)
    rec.stats["distill"] = dstats
    return trained, rec


def _same_interface(teacher: onnx.ModelProto, student: onnx.ModelProto) -> None:
    names = lambda vs: [v.name for v in vs]  # noqa: E731
    inits = {i.name for i in student.graph.initializer}
    s_in = [n for n in names(student.graph.input) if n not in inits]
    t_in = [n for n in names(teacher.graph.input) if n not in {i.name for i in teacher.graph.initializer}]
    if s_in != t_in or names(student.graph.output) != names(teacher.graph.output):
        raise InputError(f"the student's inputs/outputs ({s_in} -> {names(student.graph.output)}) are not the model's "
                         f"({t_in} -> {names(teacher.graph.output)}); pass a pruned copy of this model as --student")


def _prune(base: onnx.ModelProto, xs: Arrays, prune: PruneConfig, calibration_samples: int, say, rec: PassRecord):
    from ..passes.prune import prune_model

    cal_n = min(calibration_samples, _n(xs))
    cal = [_take(xs, slice(i, min(cal_n, i + 64))) for i in range(0, cal_n, 64)]
    say(f"pruning on {cal_n} calibration samples")
    last: list = [None]

    def tell(done, total, what):  # one line per new step name of the ONNX pruner
        if what != last[0]:
            last[0] = what
            say(f"prune: {what}")

    pruned, prec = prune_model(base, prune, calibration=cal, progress=tell)
    rec.stats["prune"] = prec.to_dict()["stats"]
    rec.skipped.extend(prec.skipped)
    return pruned
