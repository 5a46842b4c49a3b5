"""Channel pruning on ONNX graphs: dependency groups, a per-op handler registry, physical removal,
least-squares reconstruction of the layers that lost input channels."""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import onnx

from ...config import PruneConfig
from ...data import example_feed
from ...stats import count_params, macs_or_none
from ..base import PassRecord
from .allocate import Planner, latency_removal, targeted_removal
from .iterative import iterative_removal
from .reconstruct import Batches, Reconstruction, reconstruct
from .remove import analyze, remove_channels, removal
from .sensitivity import activation_scores, calibration_runs
from .structured import Progress, structured_prune, structured_removal


def remove_zeroed_channels(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassRecord]:
    """Exact: remove channels whose weights are all zero; the output is numerically unchanged."""
    return remove_channels(model, exact=True)


def prune_model(model: onnx.ModelProto, config: PruneConfig, calibration: Optional[Batches] = None,
                progress: Progress = None, feed: Optional[Mapping[str, np.ndarray]] = None,
                input_shapes: Optional[Mapping[str, tuple[int, ...]]] = None,
                planner: Optional[Planner] = None) -> tuple[onnx.ModelProto, PassRecord]:
    """The prune stage: zeroed-only removal, structured pruning at `config.ratio`, or to a target
    (config.target_macs / target_params, allocate.py; `planner`: one built earlier for this model, reused
    by a search over targets); with calibration
    batches (and config.reconstruct), the layers that lost input channels are refit by least squares.

    MACs before and after are counted on the same shapes: measured on `feed` (one sample in the model's
    layout), else on the first calibration batch, else from `input_shapes`, else the model's own static
    shapes; None (with stats["macs_note"]) when dynamic spatial/sequence dims need one of those.
    `progress(done, total, what)` is told every step (library code never prints)."""
    say = progress or (lambda done, total, what: None)
    if feed is None and calibration is not None:  # one run of the data: its run size is what MACs are divided by
        feed = example_feed(calibration, 1, model) if hasattr(calibration, "batches") else next(iter(calibration), None)
    notes: list[str] = []

    def macs(m: onnx.ModelProto) -> Optional[int]:
        value, why = macs_or_none(m, feed, input_shapes)
        if why and why not in notes:
            notes.append(why)
        return value

    target = config.target_params if config.target_params is not None else config.target_macs
    if (config.zeroed_only or config.ratio == 0) and target is None and config.target_latency is None:
        say(0, 1, "removing zeroed channels")
        result = removal(model, exact=True, macs=macs)
        pruned, rec = result.model, result.record
        if calibration is not None and config.reconstruct:
            rec.skip("reconstruct", "removing zeroed channels is exact: nothing to reconstruct")
    else:
        if config.target_latency is not None:
            planner = planner or Planner(model, config, calibration, macs, feed, input_shapes, say)
            result = latency_removal(planner, config.target_latency, feed, config.search_steps, say)
        elif target is not None and planner is None and config.step > 0 and 1 - target > config.step + 1e-9 \
                and calibration is not None and config.reconstruct:
            result, pruned = iterative_removal(model, config, target, calibration, macs, feed, input_shapes, say)
            if notes:
                result.record.stats["macs_note"] = notes[0]
            return pruned, result.record  # each step was refit (iterative.py)
        elif target is not None:
            planner = planner or Planner(model, config, calibration, macs, feed, input_shapes, say)
            result = planner.removal(target)
        else:
            result = structured_removal(model, config.ratio, config.criterion, config.scope, config.align,
                                        config.min_channels, macs=macs, progress=say, activation=lambda ctx: activation_scores(
                                            ctx, calibration_runs(calibration, ctx.index.model, config.sensitivity_samples),
                                            config.criterion))
        pruned, rec = result.model, result.record
        if calibration is not None and config.reconstruct:
            pruned = reconstruct(model, pruned, result.kept, calibration, rec,
                                 Reconstruction.of(config.reconstruction), progress=say)
            rec.stats["params_after"] = count_params(pruned)  # a refit conv without bias gains one
    if notes:
        rec.stats["macs_note"] = notes[0]
    return pruned, rec


__all__ = ["Planner", "analyze", "prune_model", "reconstruct", "remove_zeroed_channels", "structured_prune",
           "targeted_removal"]
