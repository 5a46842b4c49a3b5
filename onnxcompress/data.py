"""Calibration/validation data sources.

A source yields `dict[input_name, np.ndarray]` batches. Accepted: a `.npz` whose arrays are named after
the model inputs (first axis = samples), optionally with `labels`; a `.npy` for single-input models; a
folder of such `.npz`/`.npy` files (each file a chunk; chunks may differ in shape, e.g. sequence length).
Everything is checked against the model's inputs before any work starts.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import onnx

from .errors import InputError

LABELS = "labels"
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


@dataclass
class Dataset:
    """Samples as chunks; each chunk maps input name -> array with a leading sample axis."""

    chunks: list[dict[str, np.ndarray]]
    labels: Optional[np.ndarray]
    source: str

    def __len__(self) -> int:
        return sum(len(next(iter(c.values()))) for c in self.chunks)

    @property
    def names(self) -> list[str]:
        return list(self.chunks[0]) if self.chunks else []

    def batches(self, batch_size: int, limit: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield batches of at most batch_size samples, at most `limit` samples in all."""
        left = len(self) if limit is None else min(limit, len(self))
        for chunk in self.chunks:
            n = len(next(iter(chunk.values())))
            for start in range(0, n, batch_size):
                if left <= 0:
                    return
                stop = min(n, start + batch_size, start + left)
                yield {k: v[start:stop] for k, v in chunk.items()}
                left -= stop - start

    def take(self, limit: int) -> "Dataset":
        chunks, left = [], limit
        for c in self.chunks:
            if left <= 0:
                break
            n = len(next(iter(c.values())))
            chunks.append({k: v[:left] for k, v in c.items()})
            left -= min(n, left)
        labels = None if self.labels is None else self.labels[:limit]
        return Dataset(chunks, labels, self.source)


def _read_file(p: Path, specs: list[InputSpec]) -> tuple[dict[str, np.ndarray], Optional[np.ndarray]]:
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            if len(specs) != 1:
                raise InputError(f"{p} is a single .npy array but the model has {len(specs)} inputs; use a .npz with arrays named {', '.join(s.name for s in specs)}")
            return {specs[0].name: arr}, None
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except InputError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"cannot read data file {p} ({str(exc).splitlines()[0][:150]}); pass a .npz/.npy written by numpy") from None
    labels = arrays.pop(LABELS, None)
    return arrays, labels


def load_data(path: str | Path, specs: list[InputSpec]) -> Dataset:
    """Load and check a data source against the model input specs."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"data file {p} not found; pass a .npz with arrays named after the model inputs")
    files = sorted(f for f in p.iterdir() if f.suffix in (".npz", ".npy")) if p.is_dir() else [p]
    if p.is_dir() and not files:
        raise InputError(f"data folder {p} holds no .npz/.npy files; add files with arrays named after the model inputs")
    if p.is_file() and p.suffix not in (".npz", ".npy"):
        raise InputError(f"data file {p} has an unsupported type '{p.suffix}'; use .npz (arrays named after inputs) or .npy")
    chunks, labels_all = [], []
    for f in files:
        arrays, labels = _read_file(f, specs)
        _check_chunk(f, arrays, labels, specs)
        if len(next(iter(arrays.values()))) == 0:
            continue
        chunks.append({s.name: np.ascontiguousarray(arrays[s.name]) for s in specs})
        labels_all.append(labels)
    if not chunks:
        raise InputError(f"data source {p} holds zero samples; provide at least one sample")
    has = [lab is not None for lab in labels_all]
    if any(has) and not all(has):
        raise InputError(f"some files in {p} have 'labels' and some do not; give labels in every file or none")
    labels = np.concatenate(labels_all) if all(has) else None
    return Dataset(chunks, labels, str(p))


def _check_chunk(f: Path, arrays: dict[str, np.ndarray], labels: Optional[np.ndarray], specs: list[InputSpec]) -> None:
    names = {s.name for s in specs}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise InputError(f"{f} has no array for model input '{missing[0]}' (found: {', '.join(sorted(arrays)) or 'none'}); name the arrays after the inputs")
    extra = sorted(set(arrays) - names)
    if extra:
        raise InputError(f"{f} has array '{extra[0]}' that is not a model input (inputs: {', '.join(sorted(names))}); remove it or rename it to 'labels'")
    counts = set()
    for s in specs:
        a = arrays[s.name]
        if a.ndim != len(s.shape):
            raise InputError(f"{f}: input '{s.name}' expects rank {len(s.shape)} shape {_fmt(s.shape)}, found shape {a.shape}; reshape the array")
        for i, (d, got) in enumerate(zip(s.shape, a.shape)):
            if i > 0 and isinstance(d, int) and d > 0 and d != got:
                raise InputError(f"{f}: input '{s.name}' expects shape {_fmt(s.shape)}, found {a.shape} (axis {i}: {d} != {got}); resize the data")
        if a.dtype != s.dtype:
            if not (np.issubdtype(a.dtype, np.floating) and np.issubdtype(s.dtype, np.floating)):
                raise InputError(f"{f}: input '{s.name}' expects dtype {s.dtype}, found {a.dtype}; cast the array with astype({s.dtype})")
            arrays[s.name] = a.astype(s.dtype)
        if np.issubdtype(a.dtype, np.floating) and a.size and not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise InputError(f"{f}: input '{s.name}' has {bad} NaN/Inf values; clean the data before calibrating")
        counts.add(a.shape[0])
    if len(counts) > 1:
        raise InputError(f"{f}: inputs have different sample counts {sorted(counts)}; the first axis must be the sample axis for every input")
    if labels is not None and len(labels) != next(iter(counts)):
        raise InputError(f"{f}: 'labels' has {len(labels)} entries but there are {next(iter(counts))} samples; give one label per sample")


def random_data(specs: list[InputSpec], n: int, seed: int = 0, dynamic: int = 1) -> Dataset:
    """Random inputs for models without data: dynamic dims become `dynamic` (batch) or 8."""
    rng = np.random.default_rng(seed)
    chunk = {}
    for s in specs:
        shape = [n] + [d if isinstance(d, int) and d > 0 else 8 for d in s.shape[1:]]
        if np.issubdtype(s.dtype, np.floating):
            chunk[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.dtype == np.bool_:
            chunk[s.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            chunk[s.name] = rng.integers(0, 2, shape).astype(s.dtype)
    return Dataset([chunk], None, "random")


def _fmt(shape: tuple[Dim, ...]) -> str:
    return "x".join(str(d) if isinstance(d, int) and d > 0 else (d or "?") for d in shape)
