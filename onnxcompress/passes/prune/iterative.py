"""Pruning to a target in small steps: prune a little, refit, measure again on the refit model, repeat.

One-shot allocation predicts the damage of the whole reduction from one-layer curves measured on the
unpruned model, and damage is far from additive (many layers pruned a little cost much more than their
curves sum to). In steps, each step's allocation is measured on the model as pruned AND refit so far,
so it sees what the earlier steps did, and each step's reduction is small enough for the curves to hold.

Each step keeps `schedule(target, step)[i]` of the ORIGINAL model's MACs (or parameters): a fresh Planner on
the current model (analysis, scores, sensitivity curves), its removal at the matching fraction of the
current model, then reconstruction against the ORIGINAL model (every tensor's kept-channel mask composed
over the steps, so each refit layer is matched to the unpruned model's output, never to an earlier
step's approximation of it).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional

import numpy as np
import onnx

from ...config import PruneConfig
from ..base import PassRecord
from .allocate import Planner
from .reconstruct import Reconstruction, reconstruct
from .remove import Removal
from .structured import Progress


def schedule(target: float, step: float) -> list[float]:
    """Fractions kept after each step, from 1 down to `target`, each step removing at most `step` of the
    original (the last one lands on the target): schedule(0.7, 0.1) == [0.9, 0.8, 0.7]."""
    if step <= 0 or target >= 1.0:
        return [target]
    n = max(1, int(np.ceil((1.0 - target) / step - 1e-9)))
    return [round(1.0 - (1.0 - target) * (i + 1) / n, 6) for i in range(n)]


def compose(earlier: dict[str, np.ndarray], later: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Kept-position masks over the original positions after two removals: `earlier` masks are over the
    original, `later` ones over what `earlier` kept."""
    out = {k: v.copy() for k, v in earlier.items()}
    for name, mask in later.items():
        if name in out:
            idx = np.flatnonzero(out[name])
            if len(idx) != len(mask):  # a tensor whose channel axis changed meaning: not composable
                continue
            out[name][idx[~mask]] = False
        else:
            out[name] = mask.copy()
    return out


def iterative_removal(model: onnx.ModelProto, config: PruneConfig, target: float, calibration: Any,
                      macs: Callable, feed: Any = None, input_shapes: Any = None, progress: Progress = None,
                      refit: bool = True) -> tuple[Removal, onnx.ModelProto]:
    """Prune `model` to keep `target` of its MACs (config.target_params set: parameters) in the steps of
    `schedule(target, config.step)`; with `refit`, each step's model is reconstructed against `model`.
    Returns (the last step's Removal, with `kept` composed over all steps and the record's stats over all
    steps, its model the pruned and refit result) and that result."""
    say = progress or (lambda done, total, what: None)
    unit = "params" if config.target_params is not None else "macs"
    from ...stats import count_params

    def size(m: onnx.ModelProto) -> Optional[float]:
        return count_params(m) if unit == "params" else macs(m)

    before = size(model)
    steps = schedule(target, config.step)
    current, kept = model, {}
    history: list[dict] = []
    changed: list[str] = []
    result: Optional[Removal] = None
    floors: dict[str, int] = {}  # max_layer_fraction holds for the ORIGINAL width over all steps
    for i, t in enumerate(steps):
        now = size(current) if i else before
        rel = min(1.0, t * before / max(now, 1e-9)) if before and now else t
        tag = f"step {i + 1}/{len(steps)} to {t:.3f}x {unit}"

        def tell(done, total, what, tag=tag):
            say(done, total, f"{tag}: {what}")

        cfg = replace(config, target_macs=None if unit == "params" else rel,
                      target_params=rel if unit == "params" else None)
        if rel >= 1.0 - 1e-6:
            continue
        planner = Planner(current, cfg, calibration, macs, feed, input_shapes, tell, floors=floors)
        for key, width in planner.widths.items():
            floors.setdefault(key, int(np.ceil(width * (1 - config.max_layer_fraction) - 1e-9)))
        result = planner.removal(rel)
        kept = compose(kept, result.kept)
        pruned = result.model
        if refit and calibration is not None:
            pruned = reconstruct(model, pruned, kept, calibration, result.record,
                                 Reconstruction.of(config.reconstruction), progress=tell)
        s = result.record.stats
        after = size(pruned)
        history.append({"target": t, "reached": None if after is None or not before else after / before,
                        "predicted_damage": s.get("predicted_damage"), "measured_damage": s.get("measured_damage"),
                        "output_error_before": s.get("reconstruct", {}).get("output_error_before"),
                        "output_error_after": s.get("reconstruct", {}).get("output_error_after")})
        changed.extend(c for c in result.record.changed if c not in changed)
        current = pruned
    if result is None:  # nothing to remove (target 1.0)
        return Removal(model, PassRecord("prune")), model
    rec = result.record
    rec.changed[:] = changed
    rec.stats["steps"] = history
    rec.stats["target"] = target
    rec.stats[f"{unit}_before"] = before
    if unit == "macs":
        rec.stats["macs_after"] = macs(current)
    rec.stats["params_before"] = count_params(model)
    rec.stats["params_after"] = count_params(current)
    rec.stats["reached"] = reached = None if not before else size(current) / before
    rec.skipped[:] = [sk for sk in rec.skipped if sk.target != "target"]  # a step's own shortfall: judged overall here
    if reached is not None and reached > target + 0.005:
        rec.skip("target", f"kept {reached:.3f}x {unit}, above the target {target:.3f}x: the remaining channels are "
                 "blocked or at their layer's floor")
    return Removal(current, rec, kept), current
