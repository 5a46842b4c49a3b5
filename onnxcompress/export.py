"""torch -> ONNX export, checked numerically against torch.

Default exporter: "auto" tries the dynamo exporter (torch's recommended path) and falls back to the
TorchScript exporter when dynamo fails or its model does not match torch; the reason is recorded.
Dynamic axes are exported from an example where they are >= 2 (torch specializes sizes 0 and 1) and
checked at several sizes, so a silently static axis is caught. The result is always one .onnx file
unless the model is over 2 GB (then `<name>.data` beside it): the dynamo exporter's stray
`.onnx.data` is folded back.
"""
from __future__ import annotations

import logging
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx

from .config import ExportConfig
from .errors import ExportError, InputError, MissingDependency
from .evaluate.compare import MetricAccumulator
from .runtime.session import make_session
from .io import is_big, save_model
from .passes.base import PassRecord


@dataclass(frozen=True)
class TensorSpec:
    """One model input: name, example shape, torch dtype name, dynamic axes and their names."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    dynamic: tuple[int, ...] = (0,)  # axes exported as dynamic
    dim_names: tuple[str, ...] = ()  # one per dynamic axis; equal names = equal sizes (e.g. "seq")

    def axis_name(self, ax: int) -> str:
        if ax in self.dynamic and len(self.dim_names) == len(self.dynamic):
            return self.dim_names[self.dynamic.index(ax)]
        return "batch" if ax == 0 else f"{self.name}_dim{ax}"


def import_torch():
    try:
        import torch
    except ImportError:
        raise MissingDependency("torch is not installed; pip install 'onnxcompress[torch]' (pins torch==2.13.0)") from None
    return torch


def _dynamic_sizes(specs: list[TensorSpec], grow: int, min_dynamic: int) -> dict[str, int]:
    """One size per dynamic-axis name: max(min_dynamic, shape + grow), and different names get different
    sizes (torch.export gives equal sizes one symbol, which would tie e.g. batch to sequence length)."""
    sizes: dict[str, int] = {}
    for s in specs:
        for ax in s.dynamic:
            name = s.axis_name(ax)
            if name not in sizes:
                size = max(min_dynamic, s.shape[ax] + grow)
                while size in sizes.values():
                    size += 1
                sizes[name] = size
    return sizes


def example_inputs(specs: list[TensorSpec], seed: int = 0, grow: int = 0, min_dynamic: int = 1) -> tuple:
    """Random inputs; dynamic axes get size max(min_dynamic, shape + grow) (grow varies them in checks),
    distinct per axis name."""
    torch = import_torch()
    g = torch.Generator().manual_seed(seed)
    sizes = _dynamic_sizes(specs, grow, min_dynamic)
    out = []
    for s in specs:
        dt = getattr(torch, s.dtype)
        shape = [sizes[s.axis_name(i)] if i in s.dynamic else d for i, d in enumerate(s.shape)]
        if dt.is_floating_point:
            out.append(torch.randn(*shape, generator=g, dtype=dt))
        elif dt == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=g).bool())
        else:
            out.append(torch.randint(0, 2, shape, generator=g, dtype=dt))
    return tuple(out)


def _leaves(out) -> list:
    """Flatten a module's output (tensor, tuple/list, dict) to tensors in the exporters' order."""
    torch = import_torch()
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _leaves(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _leaves(v)]
    return []


def _reason(exc: BaseException) -> str:
    """The innermost cause's first meaningful line (torch wraps the real error in a generic one)."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 8:
        chain.append(chain[-1].__cause__)
    for e in reversed(chain):
        for line in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines():
            line = line.strip()
            if line and not line.startswith(("Failed to export the model with torch.export", "This is step")):
                return f"{type(e).__name__}: {line[:300]}"
    return type(exc).__name__


def _rename_dims(model: onnx.ModelProto, specs: list[TensorSpec]) -> None:
    """Give the dynamo exporter's symbolic dims (s0, s1, ...) the names of the input specs."""
    names: dict[str, str] = {}
    by_name = {s.name: s for s in specs}
    for inp in model.graph.input:
        s = by_name.get(inp.name)
        if s is None:
            continue
        for ax, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.dim_param and ax in s.dynamic:
                names.setdefault(d.dim_param, s.axis_name(ax))
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in names:
                d.dim_param = names[d.dim_param]


def _export_once(module, args: tuple, specs: list[TensorSpec], output_names: Optional[list[str]], path: Path,
                 config: ExportConfig, exporter: str) -> onnx.ModelProto:
    torch = import_torch()
    names = [s.name for s in specs]
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed" noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dyn = None
            if config.dynamic_batch:  # positional, so the forward() argument names do not matter
                dyn = tuple({ax: torch.export.Dim.AUTO for ax in s.dynamic} for s in specs)
            prog = torch.onnx.export(module, args, dynamo=True, input_names=names, output_names=output_names,
                                     opset_version=max(config.opset, 18), dynamic_shapes=dyn, verbose=False)
            prog.save(str(path))
        else:
            dyn = None
            if config.dynamic_batch:
                dyn = {s.name: {ax: s.axis_name(ax) for ax in s.dynamic} for s in specs}
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=names, output_names=output_names,
                              opset_version=config.opset, dynamic_axes=dyn, do_constant_folding=True)
    model = onnx.load(str(path))  # loads any external data written beside it into memory
    if exporter == "dynamo" and config.dynamic_batch:
        _rename_dims(model, specs)
    return model


class _Mismatch(Exception):
    pass


def _check(module, model: onnx.ModelProto, specs: list[TensorSpec], out: Path, config: ExportConfig,
           check_inputs: list[tuple]) -> tuple[dict[str, Any], Optional[Path]]:
    """Run ONNX and torch on random inputs (dynamic axes at several sizes) and on the provided inputs.

    Returns the worst errors (relative = max abs error / max |torch output|) and, for models over 2 GB,
    the file they were written to (they cannot be run from memory)."""
    torch = import_torch()
    try:
        if not is_big(model):
            onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise _Mismatch(f"exported model fails onnx.checker: {str(exc).splitlines()[0]}") from None
    big = is_big(model)
    path = save_model(model, out) if big else None
    try:
        sess = make_session(path if big else model, optimize=False)
    except InputError as exc:
        raise _Mismatch(f"onnxruntime cannot load the exported model ({exc})") from None
    onnx_inputs = [i.name for i in sess.get_inputs()]
    grow = config.dynamic_batch
    cases = [("random", example_inputs(specs, seed=100 + i, grow=i if grow else 0))
             for i in range(config.check_samples)] + [("provided", c) for c in check_inputs]
    per_output: dict[int, MetricAccumulator] = {}
    worst = {"random": 0.0, "provided": 0.0}
    for kind, case in cases:
        try:
            with torch.no_grad():
                refs = [r.detach().float().numpy() for r in _leaves(module(*case))]
        except Exception as exc:  # noqa: BLE001 - user code
            raise _Mismatch(f"torch itself fails on a {kind} input of shapes {[tuple(t.shape) for t in case]} "
                            f"({_reason(exc)}); give real sizes in --input or use --static-batch") from None
        feed = {n: t.numpy() for n, t in zip(onnx_inputs, case)}
        try:
            outs = sess.run(None, feed)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types; e.g. a static axis fed another size
            raise _Mismatch(f"onnxruntime fails on a {kind} input of shapes {[tuple(t.shape) for t in case]} "
                            f"({str(exc).splitlines()[0][:200]})") from None
        if len(outs) != len(refs):
            raise _Mismatch(f"ONNX model has {len(outs)} outputs, torch returned {len(refs)}")
        for k, (r, o) in enumerate(zip(refs, outs)):
            if r.shape != o.shape:
                raise _Mismatch(f"output {k} has shape {o.shape} in ONNX but {r.shape} in torch "
                                f"(input shapes {[tuple(t.shape) for t in case]})")
            per_output.setdefault(k, MetricAccumulator()).update(r, o)
            err = float(np.abs(r - o.astype(np.float32)).max()) if r.size else 0.0
            worst[kind] = max(worst[kind], err)
            if not np.allclose(o, r, rtol=config.rtol, atol=config.atol * max(1.0, float(np.abs(r).max(initial=0)))):
                raise _Mismatch(f"ONNX output {k} differs from torch on a {kind} input (max abs error {err:.3g})")
    outputs = [{"max_abs_error": m.max_abs, "max_rel_error": m.result()["max_rel_error"]} for m in per_output.values()]
    stats = {"max_abs_error": max((o["max_abs_error"] for o in outputs), default=0.0),
             "max_rel_error": max((o["max_rel_error"] for o in outputs), default=0.0),
             "max_abs_error_random": worst["random"], "outputs": outputs,
             "checked_inputs": len(cases), "checked_provided": len(check_inputs)}
    if check_inputs:
        stats["max_abs_error_provided"] = worst["provided"]
    return stats, path


def export(module, specs: list[TensorSpec], out: str | Path, config: ExportConfig = ExportConfig(),
           output_names: Optional[list[str]] = None, check_inputs: Optional[list[tuple]] = None) -> PassRecord:
    """Export `module` to `out`, checked against torch before anything is written.

    check_inputs: extra input tuples (torch tensors or numpy arrays) to compare on, e.g. real samples.
    Raises ExportError when every exporter fails or mismatches; each reason is in the message."""
    torch = import_torch()
    config.validate()
    if not specs:
        raise InputError("export needs at least one input spec; pass --input NAME:1x3x224x224")
    rec = PassRecord("export")
    module = module.eval()
    args = example_inputs(specs, min_dynamic=2 if config.dynamic_batch else 1)
    provided = [tuple(torch.as_tensor(np.asarray(t)) if not isinstance(t, torch.Tensor) else t for t in c)
                for c in (check_inputs or [])]
    order = ["dynamo", "torchscript"] if config.exporter == "auto" else [config.exporter]
    out = Path(out)
    for exporter in order:
        with tempfile.TemporaryDirectory(prefix="onnxcompress-export-") as d:
            try:
                model = _export_once(module, args, specs, output_names, Path(d) / "model.onnx", config, exporter)
            except Exception as exc:  # noqa: BLE001 - exporters raise anything; the reason is recorded
                rec.skip(f"exporter:{exporter}", _reason(exc))
                continue
        try:
            stats, written = _check(module, model, specs, out, config, provided)
        except _Mismatch as exc:
            rec.skip(f"exporter:{exporter}", str(exc))
            if is_big(model):  # checked from the written file: remove it
                for p in (out, Path(str(out) + ".data")):
                    p.unlink(missing_ok=True)
            continue
        if written is None:
            written = save_model(model, out)
        rec.stats["exporter"] = exporter
        if rec.skipped:
            rec.stats["fallback_reason"] = "; ".join(f"{s.target}: {s.reason}" for s in rec.skipped)
        rec.stats["opset_requested"] = config.opset
        rec.stats["opset"] = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), None)
        rec.stats["external_data"] = Path(str(written) + ".data").exists() and is_big(model)
        rec.stats.update(stats)
        rec.files.append(str(written))
        return rec
    raise ExportError("torch -> ONNX export failed with every exporter: "
                      + "; ".join(f"{s.target} ({s.reason})" for s in rec.skipped)
                      + "; try --exporter torchscript, another --opset, or --static-batch")


def state_dict_summary(module) -> dict[str, Any]:
    return {"parameters": int(sum(p.numel() for p in module.parameters()))}
