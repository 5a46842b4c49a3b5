"""Channel pruning on ONNX graphs: dependency groups, a per-op handler registry, physical removal,
least-squares reconstruction of the layers that lost input channels."""
from __future__ import annotations

from typing import Optional

import onnx

from ...config import PruneConfig
from ...stats import count_macs, count_params
from ..base import PassRecord
from .reconstruct import Batches, reconstruct
from .remove import analyze, remove_channels
from .structured import structured_prune, structured_removal


def remove_zeroed_channels(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassRecord]:
    """Exact: remove channels whose weights are all zero; the output is numerically unchanged."""
    return remove_channels(model, exact=True)


def prune_model(model: onnx.ModelProto, config: PruneConfig, calibration: Optional[Batches] = None
                ) -> tuple[onnx.ModelProto, PassRecord]:
    """The prune stage: zeroed-only removal, or structured pruning at `config.ratio`; with calibration
    batches (and config.reconstruct), the layers that lost input channels are refit by least squares."""
    if config.zeroed_only or config.ratio == 0:
        pruned, rec = remove_zeroed_channels(model)
        if calibration is not None and config.reconstruct:
            rec.skip("reconstruct", "removing zeroed channels is exact: nothing to reconstruct")
        return pruned, rec
    result = structured_removal(model, config.ratio, config.criterion, config.scope, config.align,
                                config.min_channels)
    pruned, rec = result.model, result.record
    rec.stats["params_before"] = count_params(model)
    rec.stats["macs_before"] = count_macs(model)[0]
    if calibration is not None and config.reconstruct:
        pruned = reconstruct(model, pruned, result.kept, calibration, rec)
        rec.stats["params_after"] = count_params(pruned)  # a refit conv without bias gains one
    return pruned, rec


__all__ = ["analyze", "prune_model", "reconstruct", "remove_zeroed_channels", "structured_prune"]
