"""Data sources in one registry keyed by kind: arrays (.npz/.npy), images, text, audio.

`open_source(path, specs, config)` detects the kind from the path (or takes config.kind), opens the source,
picks the seeded sample order, and checks the first sample against the model's input specs before any work
starts. Streamed kinds return a `StreamDataset` (the `data.Dataset` interface, read batch by batch from disk).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..config import DataConfig
from ..errors import InputError
from .base import StreamDataset, sample_order

Opener = Callable  # (path, specs, config, model) -> (source, skipped files)   [arrays: -> data.Dataset]
KINDS: dict[str, Opener] = {}
EXTS: dict[str, tuple[str, ...]] = {
    "arrays": (".npz", ".npy"),
    "images": (".jpg", ".jpeg", ".png", ".bmp", ".webp"),
    "text": (".txt", ".jsonl", ".csv"),
    "audio": (".wav",),
}


def register(kind: str) -> Callable[[Opener], Opener]:
    def deco(fn: Opener) -> Opener:
        KINDS[kind] = fn
        return fn
    return deco


def detect_kind(path, config: Optional[DataConfig] = None) -> str:
    """The kind a path holds: from config.kind, a file's extension, a glob's pattern, or a folder's files."""
    if config is not None and config.kind != "auto":
        return config.kind
    text = str(path)
    p = Path(text)
    suffix = p.suffix.lower()
    if p.is_file() or any(ch in text for ch in "*?["):
        for kind, exts in EXTS.items():
            if suffix in exts:
                return kind
        return "arrays"  # data.load_data names the unsupported type
    if p.is_dir():
        seen: set[str] = set()
        for f in _walk(p, depth=3):  # files, class folders, and one level below them
            for kind, exts in EXTS.items():
                if f.suffix.lower() in exts:
                    seen.add(kind)
        for kind in ("arrays", "images", "audio", "text"):
            if kind in seen:
                return kind
        raise InputError(f"data folder {p} holds no data files (.npz/.npy, images {'/'.join(EXTS['images'])}, .wav); "
                         f"add files or point to the right folder")
    return "arrays"  # not found: data.load_data names the missing file


def _walk(p: Path, depth: int):
    for f in sorted(p.iterdir()):
        if f.name.startswith("."):
            continue
        if f.is_file():
            yield f
        elif f.is_dir() and depth > 1:
            yield from _walk(f, depth - 1)


def open_source(path, specs, config: Optional[DataConfig] = None, model=None):
    """Open any kind of data for a model with these input specs (or data.Layout); checked before it is returned.

    Streamed kinds fill the model's batched inputs in canonical form (samples first; data.layout.feeds moves
    them to each input's batch axis) and const inputs with their --input-layout value."""
    from ..data.layout import as_layout

    config = config or DataConfig()
    layout = as_layout(specs)
    kind = detect_kind(path, config)
    if kind not in KINDS:
        raise InputError(f"unknown data kind '{kind}'; use one of {', '.join(KINDS)}")
    if kind == "arrays":
        return KINDS[kind](path, layout, config, model)
    consts = {}
    for i in layout.inputs:
        if i.const:
            if i.value is None:
                raise InputError(f"model input '{i.name}' is const and {kind} data cannot fill it; give its value with "
                                 f"--input-layout {i.name}:const=VALUE")
            consts[i.name] = i.const_value(layout.symbols)
    canonical = [type(i.spec)(i.name, (i.spec.shape[i.axis],) + tuple(d for a, d in enumerate(i.spec.shape) if a != i.axis),
                              i.spec.dtype) for i in layout.batched]
    source, skipped = KINDS[kind](path, canonical, config, model)
    order = sample_order(len(source), config.samples, config.seed)
    if hasattr(source, "files"):  # images: unreadable files found before any work
        from .images import check_headers, verify

        if config.skip_bad:
            order, bad = verify(source, order, config.workers)
            skipped = tuple(skipped) + bad
        else:
            check_headers(source, order, config.workers)
    if len(order) == 0:
        raise InputError(f"data source {path} holds zero usable samples{f' ({len(skipped)} unreadable)' if skipped else ''}; "
                         f"provide at least one readable sample")
    ds = StreamDataset(source, order, config.workers, config.prefetch, tuple(skipped), layout, consts,
                       config.memory_budget_bytes())
    check_batch(next(ds.take(1).batches(1)), canonical, source.description)
    return ds


def check_batch(batch: dict[str, np.ndarray], specs, where: str) -> None:
    """A decoded canonical batch against the model's (canonical) inputs: names, rank, static dims and dtype."""
    for s in specs:
        if s.name not in batch:
            raise InputError(f"{where} gives no value for model input '{s.name}' (gives: {', '.join(batch)}); "
                             f"pass .npz arrays named after the inputs")
        a = batch[s.name]
        bad = a.ndim != len(s.shape) or any(isinstance(d, int) and d > 0 and a.shape[i] != d
                                            for i, d in enumerate(s.shape) if i > 0)
        if bad:
            raise InputError(f"{where}: model input '{s.name}' expects samples of shape {tuple(s.shape[1:])}, a decoded "
                             f"sample has {a.shape[1:]}; set the preprocessing size/layout (--preset, --data-config)")
        if a.dtype != s.dtype:
            raise InputError(f"{where}: model input '{s.name}' expects {s.dtype}, decoded {a.dtype}; set the dtype "
                             f"in --data-config")


def _register_builtin() -> None:
    from .arrays import open_arrays
    from .audio import open_audio
    from .images import open_images
    from .text import open_text

    register("arrays")(open_arrays)
    register("images")(open_images)
    register("text")(open_text)
    register("audio")(open_audio)


_register_builtin()

__all__ = ["KINDS", "StreamDataset", "check_batch", "detect_kind", "open_source", "register"]
