"""ONNX Runtime sessions per execution provider, and running a dataset through them."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnx
import onnxruntime as ort

from ..data import Dataset
from ..errors import InputError, MissingDependency

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "azure": "AzureExecutionProvider",
}
INSTALL_HINT = {
    "openvino": "pip install onnxruntime-openvino (it replaces the onnxruntime module; use a separate venv)",
    "cuda": "pip install onnxruntime-gpu",
    "dnnl": "build onnxruntime with --use_dnnl",
    "xnnpack": "an onnxruntime build with XNNPACK (the Android/iOS packages have it)",
}

ModelLike = Union[str, Path, onnx.ModelProto]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy whose outputs are exactly `names` (intermediate tensors to read; ORT computes only what
    they need). The model itself is never touched."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names))
    return m


def available_providers() -> list[str]:
    """Short names of the execution providers this onnxruntime build exposes (cpu, openvino, ...)."""
    short = {v: k for k, v in PROVIDERS.items()}
    return [short.get(p, p) for p in ort.get_available_providers()]


def resolve_provider(name: str) -> str:
    key = name.strip().lower()
    full = PROVIDERS.get(key, name.strip())
    available = ort.get_available_providers()
    if full not in available:
        hint = INSTALL_HINT.get(key, "install an onnxruntime build that has it")
        raise MissingDependency(
            f"execution provider '{name}' is not available (have: {', '.join(available_providers())}); {hint}"
        )
    return full


def _provider_entry(full: str, threads: Optional[int]):
    """OpenVINO ignores intra_op_num_threads and uses its own pool (8 threads, several streams) unless told."""
    if full == "OpenVINOExecutionProvider":
        opts = {"device_type": "CPU"}
        if threads:
            opts.update(num_of_threads=str(threads), num_streams="1")
        return (full, opts)
    return full


def make_session(model: ModelLike, provider: str = "cpu", threads: Optional[int] = None,
                 optimize: bool = True, optimized_path: Optional[str] = None,
                 spinning: bool = True) -> ort.InferenceSession:
    """spinning=False: idle intra-op threads sleep at once instead of spinning, so sessions timed in
    turn (interleaved benchmarks) do not steal each other's cores."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    src = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    try:
        return ort.InferenceSession(src, opts, providers=[_provider_entry(resolve_provider(provider), threads)])
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.NotImplemented, ort.capi.onnxruntime_pybind11_state.InvalidArgument) as exc:
        msg = str(exc).strip().splitlines()[0][:300]
        raise InputError(f"ONNX Runtime cannot load the model: {msg}; check the model with 'onnxcompress inspect'") from None


def static_batch(session: ort.InferenceSession) -> Optional[int]:
    """The fixed batch size of the first input, or None when the batch axis is dynamic."""
    shape = session.get_inputs()[0].shape
    return shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None


def run_dataset(session: ort.InferenceSession, data: Dataset, batch_size: int = 64,
                limit: Optional[int] = None) -> dict[str, np.ndarray]:
    """Run every batch; outputs are concatenated along the first axis."""
    parts: dict[str, list[np.ndarray]] = {}
    for outs in iter_outputs(session, data, batch_size, limit):
        for k, v in outs.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) if v[0].ndim else v[0] for k, v in parts.items()}


def iter_outputs(session: ort.InferenceSession, data: Dataset, batch_size: int = 64,
                 limit: Optional[int] = None):
    """Yield the outputs of each batch (batches may differ in shape, e.g. sequence length)."""
    fixed = static_batch(session)
    bs = fixed or batch_size
    names = [o.name for o in session.get_outputs()]
    for batch in data.batches(bs, limit):
        n = len(next(iter(batch.values())))
        if fixed and n != fixed:
            if n < fixed:  # pad the last batch of a fixed-batch model, then drop the padding
                batch = {k: np.concatenate([v, np.repeat(v[-1:], fixed - n, 0)]) for k, v in batch.items()}
        try:
            outs = session.run(names, batch)
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ort.capi.onnxruntime_pybind11_state.Fail) as exc:
            msg = str(exc).strip().splitlines()[0][:300]
            raise InputError(f"running the model on {data.source} failed: {msg}; check the data shapes") from None
        yield {name: (out[:n] if out.ndim else out) for name, out in zip(names, outs)}
