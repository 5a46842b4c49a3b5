"""Array data files: .npz / .npy / a folder of them, checked against the model's input layout.

Format. A `.npz` holds one array per model input, named after it, plus optionally `labels` (one per
sample). A batched input is given in the model input's own layout with the samples on its batch axis:
the first axis by default ([N, 3, 224, 224]), another one when the layout says so (an LSTM state
`--input-layout state:1` is [2, N, 128]). A const input (rank 0, or `name:const`) is given as its bare
value, of the model input's rank (e.g. `sr=np.int64(16000)`), or one value per sample on a new first
axis, all equal; `name:const=VALUE` supplies it when the file has none. A `.npy` serves a model with a
single input to give. A folder holds such files, each one a chunk: chunks may differ in shape (sequence
lengths) and in const values. Integer and bool inputs are kept as they are (integers are cast between
integer types only when every value fits); float arrays are cast to the input's float type and must be
finite. Everything is checked before any work starts; a mismatch is one InputError naming the input,
the expected and the found shape, and the fix.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import InputError
from .dataset import Dataset
from .layout import InputLayout, InputSpec, Layout, as_layout, fmt, static

LABELS = "labels"


def _givens(layout: Layout) -> list[InputLayout]:
    """The inputs a file must give (a const with a --input-layout value may be left out)."""
    return [i for i in layout.inputs if not (i.const and i.value is not None)]


def _read_file(p: Path, layout: Layout) -> tuple[dict[str, np.ndarray], Optional[np.ndarray]]:
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            need = _givens(layout)
            if len(need) != 1:
                raise InputError(f"{p} is a single .npy array but the model has {len(need)} inputs to give; "
                                 f"use a .npz with arrays named {', '.join(i.name for i in need)}")
            return {need[0].name: arr}, None
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except InputError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"cannot read data file {p} ({str(exc).splitlines()[0][:150]}); pass a .npz/.npy written by numpy") from None
    labels = arrays.pop(LABELS, None)
    return arrays, labels


def load_data(path: str | Path, specs: Union[Layout, list[InputSpec]], config=None, model=None) -> Dataset:
    """Load and check a data source against the model's input layout (or its input specs: the layout
    the shapes settle). Images, text and audio (and `config`, a config.DataConfig) go through the
    sources registry (onnxcompress/sources), streamed from disk; `model` lets it check a tokenizer."""
    if hasattr(path, "batches"):  # already opened and checked (the CLI opens sources with their options)
        return path
    layout = as_layout(specs)
    from ..sources import detect_kind, open_source

    if detect_kind(path, config) != "arrays" or (config is not None and config.samples is not None):
        return open_source(path, layout, config, model)
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
        arrays, labels = _read_file(f, layout)
        chunk = check_chunk(f, arrays, labels, layout)
        if layout.samples(chunk) == 0:
            continue
        chunks.append(chunk)
        labels_all.append(labels)
    if not chunks:
        raise InputError(f"data source {p} holds zero samples; provide at least one sample")
    has = [lab is not None for lab in labels_all]
    if any(has) and not all(has):
        raise InputError(f"some files in {p} have 'labels' and some do not; give labels in every file or none")
    labels = np.concatenate(labels_all) if all(has) else None
    return Dataset(chunks, labels, str(p), layout, None if config is None else config.memory_budget_bytes())


def _cast(f: Path, i: InputLayout, a: np.ndarray) -> np.ndarray:
    want = i.spec.dtype
    if a.dtype == want:
        return a
    if np.issubdtype(a.dtype, np.floating) and np.issubdtype(want, np.floating):
        return a.astype(want)
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(want, np.integer):
        info = np.iinfo(want)
        if not a.size or (int(a.min()) >= info.min and int(a.max()) <= info.max):
            return a.astype(want)
        raise InputError(f"{f}: input '{i.name}' expects dtype {want}, found {a.dtype} values outside its range; "
                         "fix the values")
    raise InputError(f"{f}: input '{i.name}' expects dtype {want}, found {a.dtype}; cast the array with astype({want})")


def _batched(f: Path, i: InputLayout, a: np.ndarray) -> np.ndarray:
    shape, axis = i.spec.shape, i.axis
    where = "" if axis == 0 else f" (samples on axis {axis}, from the input layout)"
    if a.ndim != len(shape):
        raise InputError(f"{f}: input '{i.name}' expects rank {len(shape)} shape {i.expected()}{where}, found shape "
                         f"{a.shape}; reshape the array, or give the layout with --input-layout {i.name}:AXIS|const")
    for j, (d, got) in enumerate(zip(shape, a.shape)):
        if j != axis and static(d) and d != got:
            raise InputError(f"{f}: input '{i.name}' expects shape {i.expected()}{where}, found {a.shape} "
                             f"(axis {j}: {d} != {got}); resize the data, or fix --input-layout {i.name}:AXIS")
    return np.moveaxis(a, axis, 0) if axis else a


def _const(f: Path, i: InputLayout, a: np.ndarray, symbols: frozenset) -> np.ndarray:
    shape = i.spec.shape
    if a.ndim == len(shape) + 1 and len(a):  # one value per sample: they must all be the same
        if not (a == a[:1]).all():
            raise InputError(f"{f}: const input '{i.name}' differs between samples; it is fed unchanged in every "
                             f"batch: give one value of shape {fmt(shape)}, or one file per value")
        a = a[0]
    if a.ndim != len(shape) or any(static(d) and d != got for d, got in zip(shape, a.shape)):
        raise InputError(f"{f}: const input '{i.name}' expects its value with shape {fmt(shape)} (or one per sample, "
                         f"N x {fmt(shape)}), found shape {a.shape}; give the bare value, or its batch axis with "
                         f"--input-layout {i.name}:AXIS")
    for d, got in zip(shape, a.shape):
        if isinstance(d, str) and d in symbols and got != 1:
            raise InputError(f"{f}: const input '{i.name}' has {got} rows on its batch dim '{d}' (shape {a.shape}); "
                             "give one row (it is broadcast to every batch) or make it a batched input")
    return a


def check_chunk(f: Path, arrays: dict[str, np.ndarray], labels: Optional[np.ndarray],
                layout: Layout) -> dict[str, np.ndarray]:
    """One file's arrays checked against the layout -> a canonical chunk (samples first, consts bare)."""
    names = set(layout.names)
    missing = [i.name for i in _givens(layout) if i.name not in arrays]
    if missing:
        m = layout[missing[0]]
        fix = f" or --input-layout {m.name}:const=VALUE" if m.const else ""
        raise InputError(f"{f} has no array for model input '{m.name}' (found: {', '.join(sorted(arrays)) or 'none'}); "
                         f"name the arrays after the inputs{fix}")
    extra = sorted(set(arrays) - names)
    if extra:
        raise InputError(f"{f} has array '{extra[0]}' that is not a model input (inputs: {', '.join(sorted(names))}); remove it or rename it to 'labels'")
    chunk: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for i in layout.inputs:
        if i.name not in arrays:
            chunk[i.name] = i.const_value()
            continue
        a = _cast(f, i, np.asarray(arrays[i.name]))
        if np.issubdtype(a.dtype, np.floating) and a.size and not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise InputError(f"{f}: input '{i.name}' has {bad} NaN/Inf values; clean the data before calibrating")
        if i.const:
            chunk[i.name] = _const(f, i, a, layout.symbols)
        else:
            chunk[i.name] = np.ascontiguousarray(_batched(f, i, a))
            counts[i.name] = len(chunk[i.name])
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"'{k}' {v} on axis {layout[k].axis}" for k, v in counts.items())
        raise InputError(f"{f}: inputs have different sample counts ({detail}); every batched input needs the same "
                         "number of samples on its batch axis: fix the data or --input-layout NAME:AXIS")
    n = next(iter(counts.values())) if counts else 1
    if labels is not None and len(labels) != n:
        raise InputError(f"{f}: 'labels' has {len(labels)} entries but there are {n} samples; give one label per sample")
    return chunk
