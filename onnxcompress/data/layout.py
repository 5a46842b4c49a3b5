"""Input layouts, and the one place that turns a dataset batch into the feeds a model takes.

A dataset batch (`Dataset.batches`, and every data source) is canonical: a batched input has its samples
on the first axis; a const input is its bare value (the model input's rank). What a model takes differs:
- a fixed batch size (exported with batch 1): a batch is split into runs of that size, the last run is
  padded by repeating its last sample, and the padding is dropped from everything read back;
- the batch on another axis (an LSTM state [layers, N, hidden] is `state:1`): the sample axis is moved;
- const inputs (a scalar sample rate, a fixed mask): fed unchanged in every run; a size-1 dim that is the
  batch dim of the model is broadcast to the run's size.
The layout is decided from the model's shapes where they settle it: a rank-0 input is const; a dim name
shared with another input's batch axis, or a fixed batch size found on exactly one axis, gives the axis;
a fixed batch dim is recorded as the model's batch size. Where the shapes cannot settle it, it is given
as `--input-layout name:AXIS,name:const[=VALUE]` (DataConfig.input_layout) and checked against the model
here, before any work starts.

`feeds(data, batch_size, limit)` is the only code that makes model inputs from a dataset: sessions are run
on its `Feed`s (runtime.session.run_feed / iter_outputs), never on dataset batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Union

import numpy as np
import onnx

from ..errors import ConfigError, InputError

Dim = Union[int, str, None]


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[Dim, ...]  # int = static, str/None = dynamic
    dtype: np.dtype


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs in old models are left out)."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dims: list[Dim] = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else np.dtype("float32")
        specs.append(InputSpec(inp.name, tuple(dims), dtype))
    return specs


def static(d: Dim) -> bool:
    return isinstance(d, int) and d > 0


def fmt(shape: tuple[Dim, ...], axis: Optional[int] = None) -> str:
    """2xNx128: static dims, dim names (or ?), N on the batch axis."""
    if not shape:
        return "scalar"
    return "x".join("N" if i == axis else (str(d) if static(d) else (d if isinstance(d, str) and d else "?"))
                    for i, d in enumerate(shape))


def parse_input_layout(items: Iterable[str]) -> dict[str, tuple[Optional[int], Optional[float]]]:
    """'name:AXIS' | 'name:const' | 'name:const=VALUE' -> {name: (axis or None for const, value)}.
    The name is what precedes the last ':' (TF input names such as 'x:0' keep theirs)."""
    out: dict[str, tuple[Optional[int], Optional[float]]] = {}
    for item in items:
        text = str(item).strip()
        name, sep, kind = text.rpartition(":")
        kind = kind.strip().lower()
        if not sep or not name:
            raise ConfigError(f"input layout '{text}' is not NAME:AXIS or NAME:const[=VALUE]; e.g. state:1,sr:const=16000")
        if name in out:
            raise ConfigError(f"input layout names '{name}' twice; give each input once")
        if kind == "const" or kind.startswith("const="):
            value = None
            if "=" in kind:
                try:
                    value = float(kind.split("=", 1)[1])
                except ValueError:
                    raise ConfigError(f"input layout '{text}': the const value is not a number; e.g. {name}:const=16000") from None
            out[name] = (None, value)
            continue
        try:
            axis = int(kind)
        except ValueError:
            raise ConfigError(f"input layout '{text}': '{kind}' is neither a batch axis nor 'const'; e.g. {name}:1 or {name}:const") from None
        if axis < 0:
            raise ConfigError(f"input layout '{text}': the batch axis must be >= 0")
        out[name] = (axis, None)
    return out


@dataclass(frozen=True)
class InputLayout:
    spec: InputSpec
    axis: Optional[int]  # the batch axis; None = const (fed unchanged in every run)
    value: Optional[float] = None  # a const given as name:const=VALUE (used when the data has none)
    high: Optional[int] = None  # integer inputs that index a table (token ids): its size, for random data

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def const(self) -> bool:
        return self.axis is None

    def expected(self) -> str:
        return fmt(self.spec.shape, self.axis)

    def const_value(self, symbols: frozenset = frozenset()) -> np.ndarray:
        """The value of name:const=VALUE in the model input's shape (batch dims 1, other free dims 1)."""
        shape = [d if static(d) else 1 for d in self.spec.shape]
        return np.full(shape, self.value).astype(self.spec.dtype)


class Feed(dict):
    """One model run: input name -> array in the model's layout. `samples` of its rows are real data;
    `size` is the batch the model runs (larger when the last run of a fixed-batch model is padded)."""

    def __init__(self, arrays: dict[str, np.ndarray], samples: int, size: int,
                 axes: Optional[dict[str, int]] = None):
        super().__init__(arrays)
        self.samples, self.size = samples, size
        self.axes = axes or {}  # batched input -> its batch axis

    def real(self, name: str) -> np.ndarray:
        """Input `name` without the padding rows (a const input as it is)."""
        axis = self.axes.get(name)
        return self[name] if axis is None else self.trim(self[name], axis)

    def trim(self, value: np.ndarray, axis: int = 0) -> np.ndarray:
        """`value` without the padding rows, along `axis` (for intermediate tensors: the first axis when
        it has the run's size; a tensor without that axis is returned as it is)."""
        if self.size > self.samples and value.ndim > axis and value.shape[axis] == self.size:
            index = [slice(None)] * value.ndim
            index[axis] = slice(0, self.samples)
            return value[tuple(index)]
        return value

    def batch_axis(self, value: np.ndarray, declared: Optional[int]) -> Optional[int]:
        """The axis of an output that holds the run's samples: the declared one when its size fits,
        else the only axis of the run's size; None = the output has no batch axis."""
        if value.ndim == 0:
            return None
        if declared is not None and declared < value.ndim and value.shape[declared] == self.size:
            return declared
        hits = [a for a, d in enumerate(value.shape) if d == self.size]
        return hits[0] if len(hits) == 1 else None

    def output(self, value: np.ndarray, declared: Optional[int]) -> tuple[np.ndarray, Optional[int]]:
        """(the output with its samples on the first axis and the padding dropped, its own batch axis);
        an output without a batch axis is returned unchanged with axis None."""
        axis = self.batch_axis(value, declared)
        if axis is None:
            return value, None
        v = self.trim(value, axis)
        return (np.moveaxis(v, axis, 0) if axis else v), axis


@dataclass(frozen=True)
class Layout:
    inputs: tuple[InputLayout, ...]
    batch: Optional[int] = None  # the model's fixed batch size; None = any
    symbols: frozenset = frozenset()  # dim names of the batch axes (outputs with one have a batch axis there)
    explicit: tuple[str, ...] = ()  # the --input-layout items it was resolved with

    def __getitem__(self, name: str) -> InputLayout:
        return next(i for i in self.inputs if i.name == name)

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def batched(self) -> list[InputLayout]:
        return [i for i in self.inputs if not i.const]

    @property
    def consts(self) -> set[str]:
        return {i.name for i in self.inputs if i.const}

    @classmethod
    def of_batch(cls, batch: dict[str, np.ndarray]) -> "Layout":
        """The layout of plain sample-first arrays (datasets built without a model): axis 0, any batch size;
        a rank-0 array is const."""
        ins = tuple(InputLayout(InputSpec(k, (None,) + tuple(np.shape(v))[1:] if np.ndim(v) else (), np.asarray(v).dtype),
                                0 if np.ndim(v) else None) for k, v in batch.items())
        return cls(ins)

    def samples(self, batch: dict[str, np.ndarray]) -> int:
        """Samples in a canonical batch (1 when every input is const: the model runs once on it)."""
        b = self.batched
        return len(batch[b[0].name]) if b else 1

    def feeds(self, batch: dict[str, np.ndarray], size: int) -> Iterator[Feed]:
        """The model runs for one canonical batch: at most `size` samples each (the fixed batch size, if
        the model has one; the last run padded), each input in its own layout."""
        n = self.samples(batch)
        run = self.batch or max(1, size)
        if not self.batched:
            yield Feed({i.name: self._const(i, batch[i.name], 1) for i in self.inputs}, 1, 1)
            return
        for start in range(0, n, run):
            k = min(run, n - start)
            m = self.batch or k
            feed = {}
            for i in self.inputs:
                v = batch[i.name]
                if i.const:
                    feed[i.name] = self._const(i, v, m)
                    continue
                part = v[start:start + k]
                if k < m:  # a fixed batch: pad with the last sample; its results are dropped (Feed.trim)
                    part = np.concatenate([part, np.repeat(part[-1:], m - k, axis=0)])
                feed[i.name] = np.ascontiguousarray(np.moveaxis(part, 0, i.axis)) if i.axis else part
            yield Feed(feed, k, m, {i.name: i.axis for i in self.batched})

    def _const(self, i: InputLayout, v: np.ndarray, m: int) -> np.ndarray:
        v = np.asarray(v)
        if m == 1 or v.ndim != len(i.spec.shape):
            return v
        target = tuple(m if (d in self.symbols and v.shape[a] == 1) else v.shape[a] for a, d in enumerate(i.spec.shape))
        return np.ascontiguousarray(np.broadcast_to(v, target)) if target != v.shape else v

    def output_axis(self, shape: Optional[list]) -> Optional[int]:
        """The batch axis of a model output from its declared shape (checked on every run by Feed.output):
        the axis named like an input's batch dim; else that of the batched inputs its shape matches (an LSTM
        state out like the state in, unknown dims matching anything), when they agree on one that is not 0;
        else the first axis of the fixed batch size; else axis 0."""
        if shape is None:
            return 0
        if len(shape) == 0:
            return None
        named = [a for a, d in enumerate(shape) if isinstance(d, str) and d in self.symbols]
        if named:
            return named[0]
        like = {i.axis for i in self.batched if len(i.spec.shape) == len(shape)
                and all(not (static(a) and static(b)) or a == b for a, b in zip(i.spec.shape, shape))}
        if len(like) == 1 and like != {0}:  # shaped like the inputs with that batch axis (an LSTM state in -> out)
            return like.pop()
        if self.batch is not None:
            hits = [a for a, d in enumerate(shape) if d == self.batch]
            if hits:
                return 0 if 0 in hits else hits[0]
        return 0


def _axis_for(s: InputSpec, ref: Dim) -> int:
    """The batch axis of input `s` when the other inputs' batch dim is `ref` (a name, None or a size)."""
    d0 = s.shape[0]
    dynamic = [a for a, d in enumerate(s.shape) if not static(d)]
    if isinstance(ref, str):
        named = [a for a, d in enumerate(s.shape) if d == ref]
        if named:
            return named[0]
    elif static(ref):
        if d0 == ref or not static(d0):
            return 0
        sized = [a for a, d in enumerate(s.shape) if d == ref]
        if len(sized) == 1:
            return sized[0]
        dynamic = []
    if not static(d0):
        return 0
    if len(dynamic) == 1:  # a fixed first dim and one free dim: the samples go there
        return dynamic[0]
    raise InputError(f"the batch axis of input '{s.name}' ({fmt(s.shape)}) is not clear from the model's shapes "
                     f"(the other inputs' batch dim is {ref if ref is not None else 'unnamed'}); give it with "
                     f"--input-layout {s.name}:AXIS, or {s.name}:const if it is the same in every batch")


def resolve_layout(specs: list[InputSpec], items: Iterable[str] = ()) -> Layout:
    """The layout of a model's inputs: from `items` (--input-layout) where given, from the shapes elsewhere.
    Unknown names, axes out of range and contradicting fixed batch sizes are InputErrors naming the fix."""
    items = tuple(items)
    given = parse_input_layout(items)
    names = [s.name for s in specs]
    for name, (axis, value) in given.items():
        if name not in names:
            what = f"{name}:{'const' if axis is None else axis}"
            raise InputError(f"--input-layout {what}: the model has no input '{name}' (inputs: {', '.join(names)}); "
                             "name one of them")
    decided: dict[str, tuple[Optional[int], Optional[float]]] = {}
    for s in specs:
        if s.name in given:
            axis, value = given[s.name]
            if axis is not None and axis >= len(s.shape):
                fix = f"use {s.name}:const" if not s.shape else f"use an axis from 0 to {len(s.shape) - 1} or {s.name}:const"
                raise InputError(f"--input-layout {s.name}:{axis}: input '{s.name}' has shape {fmt(s.shape)} "
                                 f"(rank {len(s.shape)}), so it has no axis {axis}; {fix}")
            decided[s.name] = (axis, value)
        elif not s.shape:
            decided[s.name] = (None, None)
    open_ = [s for s in specs if s.name not in decided]
    if open_:
        refs = [s.shape[decided[s.name][0]] for s in specs if s.name in decided and decided[s.name][0] is not None]
        firsts = list(dict.fromkeys(s.shape[0] for s in open_))  # a dynamic first dim is the batch before a fixed one
        candidates = refs[:1] or [d for d in firsts if not static(d)] or firsts
        error: Optional[InputError] = None
        for ref in candidates:
            try:
                decided.update({s.name: (_axis_for(s, ref), None) for s in open_})
                break
            except InputError as exc:
                error = error or exc
        else:
            raise error
    inputs = tuple(InputLayout(s, *decided[s.name]) for s in specs)
    fixed = [(i.name, i.axis, i.spec.shape[i.axis]) for i in inputs if not i.const and static(i.spec.shape[i.axis])]
    if len({f[2] for f in fixed}) > 1:
        (a, ax, x), (b, bx, y) = fixed[0], next(f for f in fixed if f[2] != fixed[0][2])
        raise InputError(f"inputs '{a}' (batch axis {ax}: {x}) and '{b}' (batch axis {bx}: {y}) have different fixed "
                         f"batch sizes; give the batch axis of each with --input-layout NAME:AXIS (or NAME:const)")
    symbols = frozenset(i.spec.shape[i.axis] for i in inputs if not i.const and isinstance(i.spec.shape[i.axis], str))
    return Layout(inputs, fixed[0][2] if fixed else None, symbols, items)


def model_layout(model: onnx.ModelProto, items: Iterable[str] = ()) -> Layout:
    """resolve_layout for a model, plus the table size of integer inputs that index a Gather (token ids)."""
    layout = resolve_layout(input_specs(model), items)
    ints = {i.name for i in layout.inputs if np.issubdtype(i.spec.dtype, np.integer)}
    tables = {t.name: list(t.dims) for t in model.graph.initializer}
    high: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] in ints and n.input[0] in tables:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            dims = tables[n.input[0]]
            if dims and -len(dims) <= axis < len(dims):
                high.setdefault(n.input[1], dims[axis])
    if not high:
        return layout
    import dataclasses

    ins = tuple(dataclasses.replace(i, high=high.get(i.name)) for i in layout.inputs)
    return dataclasses.replace(layout, inputs=ins)


def as_layout(specs_or_layout: Union[Layout, list[InputSpec]]) -> Layout:
    return specs_or_layout if isinstance(specs_or_layout, Layout) else resolve_layout(specs_or_layout)


def layout_of(data, model: Union[onnx.ModelProto, Layout, None] = None) -> Optional[Layout]:
    """The layout `data` was checked against; else the one `model` (a model or a layout) settles."""
    layout = getattr(data, "layout", None)
    if layout is None and model is not None:
        layout = model if isinstance(model, Layout) else model_layout(model)
    return layout


def feeds(data, batch_size: int, limit: Optional[int] = None,
          model: Union[onnx.ModelProto, Layout, None] = None) -> Iterator[Feed]:
    """Model runs over `data` (anything with `batches(size, limit)` and optionally a `layout`): at most
    `limit` samples, runs of `batch_size` samples (of the fixed batch size, for a model that has one).
    `model`: the model (or layout) to follow when `data` was built without one."""
    layout = layout_of(data, model)
    size = batch_size
    if layout is not None and layout.batch:
        size = layout.batch * max(1, batch_size // layout.batch)
    for batch in data.batches(size, limit):
        yield from (layout or Layout.of_batch(batch)).feeds(batch, size)


def example_feed(data, samples: int = 1, model: Union[onnx.ModelProto, Layout, None] = None) -> Feed:
    """One run on `samples` samples of `data` (repeated when it has fewer): what latency is timed with.
    A model with a fixed batch size gets a run of that size."""
    layout = layout_of(data, model)
    batch = next(iter(data.batches(samples)))
    lay = layout or Layout.of_batch(batch)
    n = lay.samples(batch)
    if lay.batched and n < samples:
        batch = {k: v if k in lay.consts else np.resize(v, (samples,) + v.shape[1:]) for k, v in batch.items()}
    return next(lay.feeds(batch, lay.batch or samples))


def samples_of(batch: dict[str, np.ndarray]) -> int:
    """Real samples in a Feed, or in a plain sample-first batch."""
    if isinstance(batch, Feed):
        return batch.samples
    first = next(iter(batch.values()), None)
    return len(first) if first is not None and np.ndim(first) else 1


def real_input(batch: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Input `name` of a Feed without its padding rows (of a plain batch: as it is)."""
    return batch.real(name) if isinstance(batch, Feed) else batch[name]


def trim(batch: dict[str, np.ndarray], value: np.ndarray, axis: int = 0) -> np.ndarray:
    """`value` read on `batch` without the padding of a fixed-batch run (plain batches have none)."""
    return batch.trim(value, axis) if isinstance(batch, Feed) else value
