"""onnxcompress: turn a trained model into a small, fast, verified ONNX model."""
from __future__ import annotations

__version__ = "0.1.0"

from .config import (  # noqa: E402
    BenchConfig,
    ExportConfig,
    PipelineConfig,
    PruneConfig,
    QuantConfig,
    SimplifyConfig,
    ValidateConfig,
    load_config,
    save_config,
)
from .errors import (  # noqa: E402
    AccuracyRegression, ConfigError, ExportError, InputError, InternalError, OnnxCompressError, PassError,
)
from .io import load_model, save_model  # noqa: E402


def __getattr__(name: str):
    # Heavy stages are imported on first use so `import onnxcompress` stays fast and torch-free.
    lazy = {
        "convert": ("pipeline", "convert"),
        # the stages convert composes, each `stage(model, context) -> (model, StageRecord)` (passes.base.Stage)
        "stages_for": ("pipeline.stages", "stages_for"),
        "Context": ("pipeline.stages", "Context"),
        "TorchSource": ("pipeline.stages", "TorchSource"),
        "StageRecord": ("passes.base", "StageRecord"),
        "run_stages": ("passes.base", "run_stages"),
        "Progress": ("progress", "Progress"),
        "quantize": ("quant.qdq", "quantize"),
        "quantize_model": ("quant.search", "quantize_model"),
        "prune": ("passes.prune", "prune_model"),
        "simplify": ("passes.simplify", "simplify"),
        "validate": ("evaluate.validate", "validate"),
        "export": ("export", "export"),
        "load_data": ("data", "load_data"),
        "AccuracyResult": ("evaluate.gates", "AccuracyResult"),
        "canonicalize": ("frontdoor", "canonicalize"),
        "verify": ("backdoor", "verify"),
        "save_verified": ("backdoor", "save_verified"),
    }
    if name in lazy:
        import importlib

        mod, attr = lazy[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(name)


__all__ = [
    "AccuracyRegression", "AccuracyResult", "BenchConfig", "InternalError", "ConfigError", "ExportConfig", "ExportError", "InputError",
    "OnnxCompressError", "PassError", "PipelineConfig", "PruneConfig", "QuantConfig", "SimplifyConfig",
    "ValidateConfig", "convert", "export", "load_config", "load_data", "load_model", "prune", "quantize", "quantize_model", "save_config",
    "save_model", "simplify", "validate", "canonicalize", "verify", "save_verified", "__version__",
    "stages_for", "Context", "TorchSource", "StageRecord", "run_stages", "Progress",
]
