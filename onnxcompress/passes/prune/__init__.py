"""Channel pruning on ONNX graphs: dependency groups, a per-op handler registry, physical removal."""
from __future__ import annotations

import onnx

from ...stats import count_macs, count_params
from ..base import PassRecord
from .remove import analyze, remove_channels
from .structured import structured_prune


def remove_zeroed_channels(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassRecord]:
    """Exact: remove channels whose weights are all zero; the output is numerically unchanged."""
    return remove_channels(model, exact=True)


def prune_model(model: onnx.ModelProto, config, calibration=None) -> tuple[onnx.ModelProto, PassRecord]:
    """The prune stage: zeroed-only removal, or structured pruning at `config.ratio`."""
    if config.zeroed_only or config.ratio == 0:
        pruned, rec = remove_zeroed_channels(model)
    else:
        pruned, rec = structured_prune(model, config.ratio, config.criterion, config.scope, config.align,
                                       config.min_channels)
        rec.stats["params_before"] = count_params(model)
        rec.stats["macs_before"] = count_macs(model)[0]
    if calibration is not None and config.reconstruct and config.ratio > 0:
        rec.skip("reconstruct", "least-squares reconstruction is not implemented yet; fine-tune or distill instead")
    return pruned, rec


__all__ = ["analyze", "prune_model", "remove_zeroed_channels", "structured_prune"]
