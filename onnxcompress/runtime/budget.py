"""Memory budget: reading intermediate tensors in passes and batches sized to a budget.

Every command that reads intermediate tensors (calibration, per-layer SQNR, bias correction, SmoothQuant,
prune reconstruction) makes instrumented copies whose outputs are those tensors: a run holds
batch x (the bytes of the exposed tensors per sample + the model's own working set per sample). Here:

- `measure(model, data)`: per-sample bytes of every tensor, from ONNX shape inference on a weightless
  copy of the graph at the shapes of one real sample (no model run); tensors it cannot size are probed by
  running that one sample in ORT, 16 tensors at a time. The working set is the peak of the live tensors
  when the nodes run in order (what ORT's planner keeps alive: a tensor lives from its producer to its
  last reader).
- `plan_passes(unit_bytes, budget, max_batch, working)`: with cap = min(budget, RUN_BYTES + working), the fewest
  passes over the data whose tensors per sample (+ working set) fit the cap (consecutive tensors, graph
  order, so an early pass stops early: ORT computes only what its outputs need), then per pass the batch
  with batch x (its tensors + working) <= cap. A tensor that alone exceeds the cap gets a pass of its own
  at batch 1 (in `Plan.over` when it exceeds the budget itself).
- `read_tensors(...)`: runs the plan, one session per model and pass (made, used, dropped), yielding
  each run's tensors: the caller reduces them (min/max, histograms, sums) before the next run.

RUN_BYTES: runs grow to ~16 MB of tensors (exposed + working set), whatever the budget: a bigger batch does
not run faster on CPU (ORT's per-run overhead is well under a millisecond; MobileNetV2 224^2 minmax calibration,
batch 1 vs 3: within noise), while each extra MB shows in the peak, and a run much smaller than the
data makes the peak independent of the sample count (32 samples already run in several batches, with the
next one decoded meanwhile, like 2,000). More passes cost compute (an early pass stops early), fewer cost
memory. The budget (DataConfig.memory_budget, `--memory-budget`) is the hard cap: a smaller one makes
smaller runs and more passes; default min(2 GB, half the available RAM).
"""
from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from ..errors import ConfigError

GIB = 1 << 30
MIB = 1 << 20
DEFAULT_CAP = 2 * GIB
RUN_BYTES = 16 * MIB
PROBE_GROUP = 16
ARENA = 2  # ORT's memory for a run vs the live tensors (arena rounding, kernel buffers): measured 1.5-1.7x on MobileNetV2
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_budget(text: Union[str, int, None], flag: str = "--memory-budget") -> Optional[int]:
    """'512M', '2G', '1.5GB', '300MiB', '65536' (bytes) -> bytes; K/M/G/T are powers of 1024. None -> None."""
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
        if not m:
            raise ConfigError(f"{flag} '{text}' is not a size; use a number with a unit, e.g. 512M or 2G")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value < 1:
        raise ConfigError(f"{flag} '{text}' must be more than 0 bytes; use e.g. 512M or 2G")
    return value


def format_bytes(n: float) -> str:
    for unit, size in (("G", GIB), ("M", MIB), ("K", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{int(n)}B"


def available_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_budget() -> int:
    """min(2 GB, half the available RAM)."""
    avail = available_memory()
    return DEFAULT_CAP if avail is None else max(64 * MIB, min(DEFAULT_CAP, avail // 2))


def budget_of(data=None, budget: Union[int, str, None] = None) -> int:
    """The budget in bytes: `budget` when given, else the data's (DataConfig.memory_budget, set when the data
    was opened), else the default."""
    explicit = parse_budget(budget)
    if explicit is not None:
        return explicit
    own = getattr(data, "memory_budget", None)
    return own if own is not None else default_budget()


# ---------------------------------------------------------------- planning (pure)

@dataclass(frozen=True)
class Pass:
    units: tuple[int, ...]  # indices into the caller's list of units (tensors, or tensor pairs)
    batch: int
    bytes: int  # estimated bytes of one run: batch x (the units' bytes + working set) per sample


@dataclass(frozen=True)
class Plan:
    passes: tuple[Pass, ...]
    budget: int
    over: tuple[int, ...] = ()  # units that alone exceed the budget at batch 1

    def to_dict(self) -> dict:
        return {"budget": self.budget, "passes": len(self.passes), "batches": [p.batch for p in self.passes],
                "peak_bytes": max((p.bytes for p in self.passes), default=0), "over_budget": len(self.over)}


def plan_passes(unit_bytes: Sequence[int], budget: int, max_batch: int, working: int = 0,
                run_bytes: int = RUN_BYTES) -> Plan:
    """Passes over the data for reading `unit_bytes` (per-sample bytes of each unit, in graph order).

    With cap = min(budget, run_bytes + working): consecutive units are packed greedily while (their sum + working)
    <= cap (greedy packing of a sequence gives the fewest passes; a unit alone over the cap gets a pass
    of its own, and is `over` when it exceeds the budget itself); each pass then gets the largest batch
    <= max_batch with batch x (sum + working) <= cap, at least 1. No units: one pass, batch by `working`."""
    max_batch = max(1, int(max_batch))
    # run_bytes of exposed tensors on top of the working set: a model whose own working set exceeds
    # run_bytes (a detector at 640^2) would otherwise read one tensor per pass (hundreds of passes)
    cap = min(budget, run_bytes + working)
    groups: list[list[int]] = []
    over: list[int] = []
    cur: list[int] = []
    total = 0
    for i, b in enumerate(unit_bytes):
        b = max(0, int(b))
        if b + working > cap:  # alone over the cap: a pass of its own, batch 1
            if b + working > budget:
                over.append(i)
            if cur:
                groups.append(cur)
            groups.append([i])
            cur, total = [], 0
            continue
        if cur and total + b + working > cap:
            groups.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += b
    if cur or not groups:
        groups.append(cur)
    passes = []
    for g in groups:
        per = sum(max(0, int(unit_bytes[i])) for i in g) + working
        batch = max(1, min(max_batch, cap // per if per else max_batch))
        passes.append(Pass(tuple(g), batch, batch * per))
    return Plan(tuple(passes), budget, tuple(over))


# ---------------------------------------------------------------- measuring (one sample)

def _skeleton(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The graph without weight data (large initializers become typed inputs), inputs at the feed's shapes:
    shape inference on it costs no copy of the weights, and works on models over 2 GB loaded without data."""
    g = model.graph
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.graph.name = g.name
    m.graph.node.extend(g.node)
    m.graph.output.extend(g.output)
    inits = {i.name for i in g.initializer}
    for vi in g.input:
        if vi.name in inits:
            continue
        if vi.name in feed:
            a = np.asarray(feed[vi.name])
            m.graph.input.append(helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, list(a.shape)))
        else:
            m.graph.input.append(vi)
    for t in g.initializer:
        if int(np.prod(t.dims)) <= 64 and t.data_location != onnx.TensorProto.EXTERNAL:
            m.graph.initializer.append(t)  # small constants (shapes, axes) feed data propagation
        else:
            m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return m


def _nbytes(vi: onnx.ValueInfoProto) -> Optional[int]:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape") or tt.elem_type == 0:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if any(d is None for d in dims):
        return None
    try:
        item = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
    except (KeyError, TypeError):
        return None
    return int(np.prod(dims, dtype=np.int64)) * item


@dataclass
class Sizes:
    """Per-sample bytes of a model's tensors (None: unknown) and its per-sample working set."""

    bytes: dict[str, Optional[int]] = field(default_factory=dict)
    working: int = 0
    samples: int = 1  # the run the sizes were read on (a fixed-batch model runs its batch)

    def of(self, name: str, default: int = 0) -> int:
        b = self.bytes.get(name)
        return default if b is None else b


def measure(model: onnx.ModelProto, feed: dict[str, np.ndarray], probe: Sequence[str] = (),
            provider: str = "cpu") -> Sizes:
    """Sizes of every tensor on one run (`feed`, one sample, or a fixed-batch model's batch), per sample.
    Tensors in `probe` that shape inference leaves unsized are read from ORT on that run."""
    samples = max(1, int(getattr(feed, "size", 0) or _rows(feed)))
    sizes: dict[str, Optional[int]] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(model, feed), data_prop=True)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
            sizes.setdefault(vi.name, _nbytes(vi))
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError):
        pass  # a graph ONNX cannot infer (custom ops): everything is probed below
    for name, a in feed.items():
        sizes[name] = int(np.asarray(a).nbytes)
    unknown = [n for n in dict.fromkeys(probe) if sizes.get(n) is None]
    if unknown:
        from .session import make_session, run_feed, with_outputs

        for i in range(0, len(unknown), PROBE_GROUP):
            names = unknown[i:i + PROBE_GROUP]
            sess = make_session(with_outputs(model, names), provider, optimize=False, quiet=True)
            for n, v in zip(names, run_feed(sess, names, feed, "one sample")):
                sizes[n] = int(np.asarray(v).nbytes)
            del sess
    per = {k: (None if v is None else -(-v // samples)) for k, v in sizes.items()}
    return Sizes(per, ARENA * working_set(model, per), samples)


def _rows(feed: dict[str, np.ndarray]) -> int:
    first = next((np.asarray(v) for v in feed.values() if np.ndim(v)), None)
    return 1 if first is None else int(first.shape[0])


def working_set(model: onnx.ModelProto, sizes: dict[str, Optional[int]]) -> int:
    """Peak bytes of live tensors (per sample) when the nodes run in order; weights are not counted."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    last: dict[str, int] = {}
    for k, node in enumerate(g.node):
        for i in node.input:
            last[i] = k
    keep = {o.name for o in g.output}
    live = {vi.name for vi in g.input if vi.name not in inits}
    cur = sum(sizes.get(n) or 0 for n in live)
    peak = cur
    for k, node in enumerate(g.node):
        for o in node.output:
            if o and o not in live:
                live.add(o)
                cur += sizes.get(o) or 0
        peak = max(peak, cur)
        for i in set(node.input):
            if i in live and last.get(i) == k and i not in keep:
                live.discard(i)
                cur -= sizes.get(i) or 0
    return int(peak)


def one_sample(data, model: onnx.ModelProto):
    """The first run of one sample (a fixed-batch model: its batch) of `data`, as the model takes it."""
    from ..data import example_feed

    return example_feed(data, 1, model)


# ---------------------------------------------------------------- reading

def plan_reads(models: Sequence[onnx.ModelProto], names: Sequence[Sequence[str]], data, batch_size: int,
               budget: Union[int, str, None] = None, feed=None) -> Plan:
    """The passes for reading, per unit i, tensor names[m][i] of each model m (pairs: a reference and a
    candidate tensor read together). Unit bytes = the sum over models; working = the sum of the models'."""
    feed = one_sample(data, models[0]) if feed is None else feed
    sizes = [measure(m, feed, probe=n) for m, n in zip(models, names)]
    units = [sum(s.of(n[i]) for s, n in zip(sizes, names)) for i in range(len(names[0]))] if names else []
    return plan_passes(units, budget_of(data, budget), batch_size, sum(s.working for s in sizes))


def run_batch(model: onnx.ModelProto, data, batch_size: int, budget: Union[int, str, None] = None) -> int:
    """The batch for plain runs of `model` (its outputs only) within the budget."""
    feed = one_sample(data, model)
    s = measure(model, feed)
    outs = sum(s.of(o.name) for o in model.graph.output)
    return plan_passes([outs], budget_of(data, budget), batch_size, s.working).passes[0].batch


def read_tensors(models: Sequence[onnx.ModelProto], names: Sequence[Sequence[str]], data, batch_size: int,
                 limit: Optional[int] = None, budget: Union[int, str, None] = None, plan: Optional[Plan] = None,
                 optimize: Union[bool, Sequence[bool]] = False, provider: str = "cpu", source: str = "the data",
                 ) -> Iterator[tuple[Pass, object, list[list[np.ndarray]]]]:
    """Run the plan (plan_reads unless given): per pass, one session per model exposing that pass's tensors
    (made here, dropped after the pass); yields (pass, feed, values) per run, values[m][j] = tensor
    names[m][pass.units[j]] of model m without padding rows. Runs follow data.feeds (batch axes, fixed batch)."""
    from ..data import feeds
    from .session import make_session, run_feed, with_outputs

    plan = plan or plan_reads(models, names, data, batch_size, budget)
    opt = [optimize] * len(models) if isinstance(optimize, bool) else list(optimize)
    for p in plan.passes:
        if not p.units:
            continue
        wanted = [[n[i] for i in p.units] for n in names]
        sessions = [make_session(with_outputs(m, w), provider, optimize=o) for m, w, o in zip(models, wanted, opt)]
        for feed in feeds(data, p.batch, limit, models[0]):
            yield p, feed, [run_feed(s, w, feed, source) for s, w in zip(sessions, wanted)]
        del sessions
        release()


def release() -> None:
    """Give freed memory back to the OS after a pass: glibc keeps freed heap pages (its mmap threshold rises
    to the size of the largest block freed, so activation-size blocks end up on the heap); malloc_trim
    returns them (measured: RSS after a MobileNetV2 quantization 221 -> 129 MB). A no-op elsewhere."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


__all__ = ["DEFAULT_CAP", "RUN_BYTES", "Pass", "Plan", "Sizes", "budget_of", "default_budget", "format_bytes",
           "measure", "parse_budget", "plan_passes", "plan_reads", "read_tensors", "run_batch", "working_set"]
