"""torch -> ONNX export, checked numerically against torch.

Default exporter: "auto" tries the dynamo exporter (torch's recommended path) and falls back to the
TorchScript exporter with the reason recorded. The result is always one .onnx file unless the model
is over 2 GB (then `<name>.data` beside it): the dynamo exporter's stray `.onnx.data` is folded back.
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx

from .config import ExportConfig
from .errors import ExportError, MissingDependency
from .evaluate.compare import output_metrics
from .evaluate.runner import make_session
from .io import is_big, save_model
from .passes.base import PassRecord


@dataclass(frozen=True)
class TensorSpec:
    """One model input: name, shape (ints; names of dynamic axes in `dynamic`), torch dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    dynamic: tuple[int, ...] = (0,)  # axes exported as dynamic


def _torch():
    try:
        import torch
    except ImportError:
        raise MissingDependency("torch is not installed; pip install 'onnxcompress[torch]' (pins torch==2.13.0)") from None
    return torch


def example_inputs(specs: list[TensorSpec], seed: int = 0) -> tuple:
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in specs:
        dt = getattr(torch, s.dtype)
        if dt.is_floating_point:
            out.append(torch.randn(*s.shape, generator=g, dtype=dt))
        else:
            out.append(torch.randint(0, 2, s.shape, generator=g, dtype=dt))
    return tuple(out)


def _export_once(module, args: tuple, specs: list[TensorSpec], output_names: Optional[list[str]], path: Path,
                 config: ExportConfig, exporter: str) -> onnx.ModelProto:
    torch = _torch()
    names = [s.name for s in specs]
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed" noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dyn = None
            if config.dynamic_batch:
                dyn = {s.name: {ax: torch.export.Dim.AUTO for ax in s.dynamic} for s in specs}
            prog = torch.onnx.export(module, args, dynamo=True, input_names=names, output_names=output_names,
                                     opset_version=max(config.opset, 18), dynamic_shapes=dyn, verbose=False)
            prog.save(str(path))
        else:
            dyn = None
            if config.dynamic_batch:
                dyn = {s.name: {ax: f"{s.name}_dim{ax}" if ax else "batch" for ax in s.dynamic} for s in specs}
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=names, output_names=output_names,
                              opset_version=config.opset, dynamic_axes=dyn, do_constant_folding=True)
    model = onnx.load(str(path))  # loads any external data written beside it into memory
    return model


def export(module, specs: list[TensorSpec], out: str | Path, config: ExportConfig = ExportConfig(),
           output_names: Optional[list[str]] = None, check_inputs: Optional[list[tuple]] = None) -> PassRecord:
    """Export `module` to `out` and compare against torch. Raises ExportError on mismatch."""
    torch = _torch()
    config.validate()
    rec = PassRecord("export")
    module = module.eval()
    args = example_inputs(specs)
    order = ["dynamo", "torchscript"] if config.exporter == "auto" else [config.exporter]
    model = None
    with tempfile.TemporaryDirectory(prefix="onnxcompress-export-") as d:
        for exporter in order:
            try:
                model = _export_once(module, args, specs, output_names, Path(d) / "model.onnx", config, exporter)
                rec.stats["exporter"] = exporter
                break
            except Exception as exc:  # noqa: BLE001 - exporters raise anything; the reason is recorded
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
                rec.skip(f"exporter:{exporter}", reason)
        if model is None:
            raise ExportError("torch.onnx.export failed with every exporter: "
                              + "; ".join(f"{s.target} ({s.reason})" for s in rec.skipped))
    try:
        if not is_big(model):
            onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported model fails onnx.checker: {str(exc).splitlines()[0]}") from None
    rec.stats["opset"] = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    # numeric check against torch on random and on provided inputs, before anything is written
    # (models over 2 GB cannot be loaded from memory: they are checked from the written file)
    big = is_big(model)
    path = save_model(model, out) if big else Path(out)
    sess = make_session(path if big else model, optimize=False)
    onnx_inputs = [i.name for i in sess.get_inputs()]
    cases = [example_inputs(specs, seed=100 + i) for i in range(config.check_samples)] + list(check_inputs or [])
    worst: dict[str, float] = {"max_abs_error": 0.0, "max_rel_error": 0.0}
    for case in cases:
        with torch.no_grad():
            ref = module(*case)
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        feed = {n: t.numpy() for n, t in zip(onnx_inputs, case)}
        outs = sess.run(None, feed)
        for r, o in zip(refs, outs):
            m = output_metrics(r.detach().numpy(), o)
            worst["max_abs_error"] = max(worst["max_abs_error"], m["max_abs_error"])
            worst["max_rel_error"] = max(worst["max_rel_error"], m["max_rel_error"])
            if not np.allclose(o, r.detach().numpy(), rtol=config.rtol, atol=config.atol * max(1.0, float(np.abs(o).max()))):
                if big:
                    path.unlink(missing_ok=True)
                    Path(str(path) + ".data").unlink(missing_ok=True)
                raise ExportError(f"ONNX output differs from torch (max abs error {m['max_abs_error']:.3g}); "
                                  "try --exporter torchscript or a different --opset")
    if not big:
        save_model(model, path)
    rec.changed.append(str(path))
    rec.stats.update(worst)
    rec.stats["checked_inputs"] = len(cases)
    return rec


def state_dict_summary(module) -> dict[str, Any]:
    return {"parameters": int(sum(p.numel() for p in module.parameters()))}
