"""ONNX Runtime sessions per execution provider, and running a dataset through them."""
from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import onnx
import onnxruntime as ort

from ..data import Dataset, Feed, InputSpec, Layout, feeds, layout_of, resolve_layout, trim
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


# The intra-op thread budget of sessions that do not set their own: a sweep job gets the CPUs given to its
# worker (onnxcompress.sweep), so N jobs side by side do not each start one thread per core. A context
# variable, set only inside `session_threads(n)`, rather than a module setting that would outlive the job.
_THREADS: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("onnxcompress_session_threads", default=None)


@contextlib.contextmanager
def session_threads(threads: Optional[int]) -> Iterator[None]:
    """Sessions opened inside (make_session without `threads`) get `threads` intra-op threads."""
    token = _THREADS.set(threads)
    try:
        yield
    finally:
        _THREADS.reset(token)


def default_threads() -> Optional[int]:
    """The budget of `session_threads` in force here, None outside (ORT's default: one per core)."""
    return _THREADS.get()


def session_options(optimize: bool = True, quiet: bool = False, threads: Optional[int] = None) -> ort.SessionOptions:
    """Options every session we open starts from: log level, optimization level, and the thread budget
    of `session_threads` (a sweep job's CPUs) unless `threads` is given."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4 if quiet else 3
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    threads = threads or _THREADS.get()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def make_session(model: ModelLike, provider: str = "cpu", threads: Optional[int] = None,
                 optimize: bool = True, optimized_path: Optional[str] = None,
                 spinning: bool = True, quiet: bool = False) -> ort.InferenceSession:
    """spinning=False: idle intra-op threads sleep at once instead of spinning, so sessions timed in
    turn (interleaved benchmarks) do not steal each other's cores. quiet=True: ORT logs nothing, not even
    its error lines (probing runs whose failure the caller handles: a failed run would print one
    `[E:onnxruntime ... ExecuteKernel]` line each)."""
    threads = threads or _THREADS.get()
    opts = session_options(optimize, quiet, threads)
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


_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(bool)": "bool"}


def session_layout(session: ort.InferenceSession) -> Layout:
    """The input layout a session's shapes settle (for data built without a model)."""
    return resolve_layout([InputSpec(i.name, tuple(i.shape or ()), np.dtype(_ORT_TYPES.get(i.type, "float32")))
                           for i in session.get_inputs()])


def _run(session: ort.InferenceSession, names: list[str], feed: Feed, source: str) -> list[np.ndarray]:
    try:
        return session.run(names, feed)
    except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ort.capi.onnxruntime_pybind11_state.Fail) as exc:
        msg = str(exc).strip().splitlines()[0][:300]
        raise InputError(f"running the model on {source} failed: {msg}; check the data shapes and --input-layout") from None


def run_feed(session: ort.InferenceSession, names: list[str], feed: Feed, source: str = "the data") -> list[np.ndarray]:
    """Read tensors `names` (intermediate ones too) on one run of data.feeds, without the padding rows of a
    fixed-batch run (an intermediate tensor's first axis is taken as its batch axis)."""
    return [trim(feed, o) for o in _run(session, names, feed, source)]


def _iter(session: ort.InferenceSession, data: Dataset, batch_size: int, limit: Optional[int]):
    layout = layout_of(data) or session_layout(session)
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    declared = {o.name: layout.output_axis(o.shape) for o in outputs}
    for feed in feeds(data, batch_size, limit, layout):
        outs = {}
        for name, value in zip(names, _run(session, names, feed, getattr(data, "source", "the data"))):
            outs[name] = feed.output(value, declared[name])
            declared[name] = declared[name] if outs[name][1] is None else outs[name][1]
        yield feed, outs


def run_dataset(session: ort.InferenceSession, data: Dataset, batch_size: int = 64,
                limit: Optional[int] = None) -> dict[str, np.ndarray]:
    """Run every batch; each output is concatenated along its own batch axis (an LSTM state [2, N, H] along
    axis 1), an output without a batch axis is stacked per run."""
    parts: dict[str, list[np.ndarray]] = {}
    axes: dict[str, Optional[int]] = {}
    for _feed, outs in _iter(session, data, batch_size, limit):
        for k, (v, axis) in outs.items():
            parts.setdefault(k, []).append(v)
            axes[k] = axis if axes.get(k) is None else axes[k]
    result = {}
    for k, v in parts.items():
        if axes[k] is None:
            result[k] = v[0] if len(v) == 1 else np.stack(v)
        else:
            result[k] = np.moveaxis(np.concatenate(v), 0, axes[k]) if axes[k] else np.concatenate(v)
    return result


def iter_outputs_many(sessions: list[ort.InferenceSession], data: Dataset, batch_size: int = 64,
                      limit: Optional[int] = None):
    """iter_outputs for several sessions on the same runs: per run, a list of their output dicts. Each
    sample is decoded once (not once per session) and one batch is in memory for all of them."""
    layout = layout_of(data) or session_layout(sessions[0])
    specs = [([o.name for o in s.get_outputs()], {o.name: layout.output_axis(o.shape) for o in s.get_outputs()})
             for s in sessions]
    for feed in feeds(data, batch_size, limit, layout):
        row = []
        for s, (names, declared) in zip(sessions, specs):
            outs = {}
            for name, value in zip(names, _run(s, names, feed, getattr(data, "source", "the data"))):
                outs[name], axis = feed.output(value, declared[name])
                declared[name] = declared[name] if axis is None else axis
            row.append(outs)
        yield row


def iter_outputs(session: ort.InferenceSession, data: Dataset, batch_size: int = 64,
                 limit: Optional[int] = None):
    """Yield the outputs of each model run (runs may differ in shape, e.g. sequence length), samples on the
    first axis: an output whose batch axis is another (an LSTM state [2, N, H]) comes as [N, 2, H]; one
    without a batch axis comes unchanged. The runs follow the data's input layout (data.feeds)."""
    for _feed, outs in _iter(session, data, batch_size, limit):
        yield {k: v for k, (v, _axis) in outs.items()}
