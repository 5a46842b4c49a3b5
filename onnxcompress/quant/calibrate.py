"""Streaming calibration: ranges collected batch by batch into fixed-size histograms.

Why our own (ORT's calibrators are the baseline): ORT's Percentile/Entropy keep every activation of
every sample in memory (peak memory grows with the sample count), its Entropy with default settings
has a single candidate threshold (128 bins for 128 levels), it crashes when samples differ in shape,
and MinMax writes infinite ranges when a tensor holds -inf (attention masks). Here memory is flat in
the number of samples and bounded by the memory budget (runtime/budget.py): MinMax reduces every tensor
inside the graph, so a run returns scalars; Percentile/Entropy read the tensors out in runs and passes
sized to the budget into B bins per tensor. Samples may differ in shape, non-finite values are counted
and ignored, and a tensor with no finite value is refused by name.
The ranges go to ORT's QDQ quantizer through its calibration cache: we do not rewrite QDQ insertion.
"""
from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import InputError
from ..data import feeds, real_input, samples_of
from ..runtime.budget import budget_of, measure, one_sample, plan_passes, release
from ..runtime.session import run_feed, session_options, with_outputs
from ..io import atomic_write_bytes, is_big, save_model

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}


class Histogram:
    """Signed histogram over [-R, R] with a fixed number of bins. When data exceeds R, R doubles
    (as often as needed) and pairs of old bins merge: rebinning is exact and the size never grows."""

    def __init__(self, bins: int = 4096):
        assert bins % 2 == 0
        self.bins = bins
        self.radius = 0.0
        self.counts = np.zeros(bins, dtype=np.int64)
        self.lo = np.inf
        self.hi = -np.inf

    def _grow(self, need: float) -> None:
        if need == 0.0:
            return  # only zeros so far: they sit in bin bins/2 at any radius
        if self.radius == 0.0:
            self.radius = float(2.0 ** np.ceil(np.log2(need)))
            return
        while self.radius < need:
            half = self.bins // 2
            merged = self.counts.reshape(-1, 2).sum(axis=1)  # bins / 2 bins of double width
            new = np.zeros_like(self.counts)
            new[half // 2: half // 2 + half] = merged
            self.counts = new
            self.radius *= 2.0

    def update(self, x: np.ndarray, lo: Optional[float] = None, hi: Optional[float] = None) -> None:
        """Add finite values `x` (their min/max may be passed in when already known).

        The bin of x is floor(x * bins / 2R) + bins/2 with R a power of two: the product is exact, so a value
        lands in the same bin (after merges) whatever the batches it came in; the counts do not depend on how
        the data was split (a memory budget that changes the batch size changes no range)."""
        if x.size == 0:
            return
        self.lo = min(self.lo, float(x.min()) if lo is None else lo)
        self.hi = max(self.hi, float(x.max()) if hi is None else hi)
        need = max(abs(self.lo), abs(self.hi))
        if need > self.radius:
            self._grow(need)
        half = self.bins // 2
        if self.radius == 0.0:
            self.counts[half] += x.size
            return
        scale = self.bins / (2 * self.radius)
        ftype = np.float32 if 2.0 ** -100 < scale < 2.0 ** 100 else np.float64  # a float32 power of two, or exact in float64
        t = x.astype(ftype, copy=False) * ftype(scale)
        idx = np.floor(t, out=t).astype(np.int64 if ftype is np.float64 else np.int32)
        idx += half
        np.clip(idx, 0, self.bins - 1, out=idx)  # x == radius lands in the last bin
        self.counts += np.bincount(idx.ravel(), minlength=self.bins)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.radius, self.radius, self.bins + 1)

    def percentile_range(self, p: float) -> tuple[float, float]:
        """[lo, hi] holding p% of the values at each tail (asymmetric: fits uint8 after ReLU)."""
        total = self.counts.sum()
        cdf = np.cumsum(self.counts) / total
        edges = self.edges
        tail = (100.0 - p) / 100.0
        lo_i = int(np.searchsorted(cdf, tail, side="left"))
        hi_i = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
        lo = max(self.lo, float(edges[lo_i]))
        hi = min(self.hi, float(edges[min(hi_i + 1, self.bins)]))
        return lo, hi

    def entropy_range(self, levels: int = 128, stride: int = 2) -> tuple[float, float]:
        """KL-divergence-optimal thresholds (TensorRT's method), found for each sign separately so an
        asymmetric tensor (a normalized image, a ReLU output) is not folded onto the wrong side."""
        half = self.bins // 2
        width = self.radius / half
        hi = _kl_threshold(self.counts[half:].astype(np.float64), levels, stride) * width
        lo = _kl_threshold(self.counts[:half][::-1].astype(np.float64), levels, stride) * width
        return max(self.lo, -lo), min(self.hi, hi)


def _kl_threshold(h: np.ndarray, levels: int, stride: int) -> int:
    """Number of bins of a one-sided histogram to keep, minimizing KL(reference || quantized)."""
    h = h.copy()
    h[0] = 0.0  # the spike of exact zeros (ReLU outputs) is represented exactly; it must not steer the threshold
    nz = np.nonzero(h)[0]
    if nz.size == 0:
        return 0
    last = int(nz[-1]) + 1
    if last <= levels:
        return last
    def kl(i: int) -> float:
        ref = h[:i].copy()
        ref[-1] += h[i:].sum()  # outliers are clipped into the last bin
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=h[:i], minlength=levels)
        nonzero = (h[:i] > 0).astype(np.float64)
        cnt = np.bincount(group, weights=nonzero, minlength=levels)
        q = np.where(nonzero > 0, (mass / np.maximum(cnt, 1))[group], 0.0)
        p_ = ref / ref.sum()
        q_ = q / q.sum() if q.sum() > 0 else q
        mask = p_ > 0
        return float(np.sum(p_[mask] * np.log(p_[mask] / np.maximum(q_[mask], 1e-12))))

    # coarse scan, then every candidate around the best coarse one: same optimum, a fraction of the work
    coarse = list(range(levels, last, stride * 4)) + [last]
    best_i = min(coarse, key=kl)
    fine = range(max(levels, best_i - stride * 4), min(last, best_i + stride * 4) + 1, stride)
    return min([best_i, *fine], key=kl)


@dataclass
class TensorStats:
    name: str
    lo: float = np.inf
    hi: float = -np.inf
    nonfinite: int = 0
    seen: int = 0  # values read out, plus runs reduced in the graph (0: never seen, e.g. always empty)
    hist: Optional[Histogram] = None

    def add_range(self, lo: float, hi: float) -> None:
        """A run reduced in the graph (finite values only): its min and max."""
        self.seen += 1
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    def update(self, x: np.ndarray) -> None:
        x = x.reshape(-1)
        self.seen += x.size
        finite = np.isfinite(x)
        if not finite.all():
            self.nonfinite += int((~finite).sum())
            x = x[finite]
        if x.size:
            lo, hi = float(x.min()), float(x.max())
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
            if self.hist is not None:
                self.hist.update(x, lo, hi)


@dataclass
class CalibrationResult:
    ranges: dict[str, tuple[float, float]]
    method: str
    samples: int
    batches: int
    nonfinite: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "samples": self.samples, "batches": self.batches, "tensors": len(self.ranges),
                "nonfinite_values_ignored": self.nonfinite}


def _infer(model: onnx.ModelProto, path: Optional[Path]) -> onnx.ModelProto:
    """Shape inference; models over 2 GB are inferred from their file (protobuf caps a message at 2 GiB)."""
    if path is None:
        return onnx.shape_inference.infer_shapes(model)
    dst = path.parent / f".{path.stem}.inferred.onnx"
    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(dst))
        return onnx.load(str(dst), load_external_data=False)
    finally:
        dst.unlink(missing_ok=True)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def tensors_to_calibrate(model: onnx.ModelProto, workdir: Optional[Path] = None) -> list[str]:
    """Float activations: graph inputs and node outputs (ORT asks for ranges of these)."""
    inferred = _infer(model, workdir)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inits = {i.name for i in model.graph.initializer}
    names: list[str] = []
    for vi in model.graph.input:
        if vi.name not in inits and types.get(vi.name) in FLOAT_TYPES:
            names.append(vi.name)
    for n in model.graph.node:
        if n.op_type == "Constant":
            continue
        for o in n.output:
            if o and types.get(o) in FLOAT_TYPES and o not in names:
                names.append(o)
    return names


def calibrate(model: onnx.ModelProto, data, method: str = "minmax", percentile: float = 99.999, bins: int = 4096,
              max_outputs_per_run: Optional[int] = None, providers: Optional[list[str]] = None,
              model_path: Optional[Path] = None, *, samples: Optional[int] = None, batch_size: int = 32,
              memory_budget=None) -> CalibrationResult:
    """Collect ranges for every float activation.

    `data`: a dataset (data.Dataset, a streamed source: anything with `batches`), read in runs of at most
    `batch_size` samples, `samples` in all, sized to the memory budget (`memory_budget`, else the data's
    DataConfig.memory_budget, else runtime.budget's default); or an iterable of model runs (data.feeds,
    or plain sample-first batches), read once as given.

    minmax: one pass over an instrumented copy that reduces each tensor in the graph (ReduceMin/ReduceMax,
    and a ReduceSum that is non-finite when the tensor holds inf/NaN): a run holds scalars, not activations,
    so memory is the model's own working set (ORT's MinMax does the same). A tensor whose sum is not finite
    on a run is read out on that run and its inf/NaN counted and ignored. percentile/entropy: the tensors
    are read out into histograms, in passes over the data that each expose the tensors the budget holds
    (runtime.budget.plan_passes). The ranges do not depend on the budget.

    `model_path`: the model's file, for models over 2 GB loaded without their external data: shape
    inference and the instrumented copies then work beside that file and share its data file.
    `max_outputs_per_run` is ignored (the budget sizes the passes)."""
    args = (method, percentile, bins, providers, samples, batch_size, memory_budget)
    if model_path is not None:
        return _calibrate(model, data, *args, Path(model_path))
    big = is_big(model)
    tmp = tempfile.TemporaryDirectory(prefix="onnxcompress-cal-") if big else None
    try:
        workdir = None
        if tmp:
            workdir = Path(tmp.name) / "model.onnx"
            save_model(model, workdir)
        return _calibrate(model, data, *args, workdir)
    finally:
        if tmp:
            tmp.cleanup()


def _session(model: onnx.ModelProto, opts, providers, path: Optional[Path], i: int) -> ort.InferenceSession:
    if path is None:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
    # the instrumented graph is written beside the model so its external data references resolve
    aug = path.parent / f".{path.stem}.calib{i}.onnx"
    try:
        atomic_write_bytes(aug, model.SerializeToString())
        return ort.InferenceSession(str(aug), opts, providers=providers)
    finally:
        aug.unlink(missing_ok=True)


REDUCED = ("min", "max", "sum")


def reduced_model(model: onnx.ModelProto, names: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy whose outputs are, per tensor, its ReduceMin, ReduceMax and ReduceSum (all axes, scalars).
    The reductions follow their tensor's producer in the node list, so ORT frees each tensor as before."""
    m = _copy(model)
    del m.graph.output[:]
    want = {t: i for i, t in enumerate(names)}
    nodes, outs, seen = [], [], set()
    for node in model.graph.node:
        nodes.append(node)
        for t in node.output:
            if t in want and t not in seen:
                seen.add(t)
                for op in REDUCED:
                    o = f"onnxcompress_cal/{want[t]}/{op}"
                    nodes.append(onnx.helper.make_node(f"Reduce{op.capitalize()}", [t], [o], keepdims=0))
                    outs.append(o)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    order = {o: k for k, o in enumerate(f"onnxcompress_cal/{i}/{op}" for i in range(len(names)) for op in REDUCED)}
    outs.sort(key=order.__getitem__)  # in the order of `names`, three per tensor
    m.graph.output.extend(onnx.ValueInfoProto(name=o) for o in outs)
    return m, outs


class _Reader:
    """Instrumented sessions, made on demand and cached by the tensors they expose."""

    def __init__(self, model, workdir, providers):
        self.model, self.workdir, self.providers = model, workdir, providers or ["CPUExecutionProvider"]
        self.opts = session_options(optimize=False)  # the sweep's per-job thread budget applies here too
        if hasattr(ort, "ExecutionOrder"):  # the reductions run right after their tensor is made, which is then freed
            self.opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # (default order: all at the end, 3x memory)
        self.cache: dict[tuple[str, ...], ort.InferenceSession] = {}

    def session(self, names: tuple[str, ...], model: Optional[onnx.ModelProto] = None) -> ort.InferenceSession:
        if names not in self.cache:
            self.cache[names] = _session(model or with_outputs(self.model, list(names)), self.opts, self.providers,
                                         self.workdir, len(self.cache))
        return self.cache[names]

    def read(self, names: tuple[str, ...], feed) -> list[np.ndarray]:
        return run_feed(self.session(names), list(names), feed, "the calibration data")

    def drop(self) -> None:
        self.cache.clear()


def _first(data, model):
    """(one-sample run to size the tensors on, the runs to calibrate on, is a dataset)."""
    if hasattr(data, "batches"):
        return one_sample(data, model), None, True
    it = iter(data)
    first = next(it, None)
    if first is None:
        raise InputError("calibration data has no batches; provide at least one sample")
    return first, itertools.chain([first], it), False


def _calibrate(model, data, method, percentile, bins, providers, samples, batch_size, memory_budget,
               workdir) -> CalibrationResult:
    names = tensors_to_calibrate(model, workdir)
    stats = {n: TensorStats(n, hist=Histogram(bins) if method in ("percentile", "entropy") else None) for n in names}
    input_names = {i.name for i in model.graph.input} & set(stats)
    outputs = [n for n in names if n not in input_names]
    feed0, runs, is_data = _first(data, model)
    sizes = measure(model, feed0, probe=outputs if workdir is None else ())
    budget = budget_of(data, memory_budget)
    reader = _Reader(model, workdir, providers)
    count = {"samples": 0, "batches": 0}

    def start(feed) -> None:  # once per run of the first pass: inputs and counts
        count["samples"] += samples_of(feed)
        count["batches"] += 1
        for name in input_names:
            stats[name].update(real_input(feed, name))

    def readout(group: tuple[str, ...], feed) -> None:
        if group:
            for name, value in zip(group, reader.read(group, feed)):
                stats[name].update(value)

    if method == "minmax":
        batch = plan_passes([], budget, batch_size, sizes.working).passes[0].batch
        red, red_out = reduced_model(model, outputs)
        sess = reader.session(("\0reduced",), red) if outputs else None
        for feed in (feeds(data, batch, samples, model) if is_data else runs):
            start(feed)
            if sess is None:
                continue
            vals = run_feed(sess, red_out, feed, "the calibration data")
            flagged = []
            for i, name in enumerate(outputs):
                lo, hi, total = (float(v) for v in vals[3 * i: 3 * i + 3])
                if not np.isfinite(total):  # inf/NaN somewhere (or a float overflow of the sum): read it out
                    flagged.append(name)
                elif lo <= hi:  # not an empty tensor
                    stats[name].add_range(lo, hi)
            if flagged:
                plan = plan_passes([sizes.of(n) for n in flagged], budget, samples_of(feed), sizes.working)
                for p in plan.passes:
                    readout(tuple(flagged[i] for i in p.units), feed)
    else:
        plan = plan_passes([sizes.of(n) for n in outputs], budget, batch_size, sizes.working)
        groups = [tuple(outputs[i] for i in p.units) for p in plan.passes]
        if is_data:  # a pass over the data per group: one instrumented session alive at a time
            for k, (p, group) in enumerate(zip(plan.passes, groups)):
                for feed in feeds(data, p.batch, samples, model):
                    if k == 0:
                        start(feed)
                    readout(group, feed)
                reader.drop()
                release()
        else:  # runs given once: every group on each run
            for feed in runs:
                start(feed)
                for group in groups:
                    readout(group, feed)
    reader.drop()
    release()
    if count["batches"] == 0:
        raise InputError("calibration data has no batches; provide at least one sample")
    ranges: dict[str, tuple[float, float]] = {}
    for name, st in stats.items():
        if st.seen and st.lo > st.hi:
            raise InputError(f"tensor '{name}' has no finite values on the calibration data; "
                             "check the data or exclude the node that produces it")
        if not st.seen:
            continue
        if method == "percentile":
            lo, hi = st.hist.percentile_range(percentile)
        elif method == "entropy":
            lo, hi = st.hist.entropy_range()
        else:
            lo, hi = st.lo, st.hi
        ranges[name] = (min(lo, 0.0), max(hi, 0.0))
    return CalibrationResult(ranges, method, count["samples"], count["batches"],
                             {n: s.nonfinite for n, s in stats.items() if s.nonfinite})
