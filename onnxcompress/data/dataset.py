"""Samples held as chunks of canonical arrays, and random data for models without any."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Union

import numpy as np

from .layout import Feed, InputLayout, InputSpec, Layout, as_layout, feeds, static


@dataclass
class Dataset:
    """Samples as chunks (files); each chunk maps input name -> array, canonical: samples on the first
    axis of a batched input, the bare value of a const input (one value per chunk). `layout` is the
    layout of the model the data was checked against (None: plain sample-first arrays)."""

    chunks: list[dict[str, np.ndarray]]
    labels: Optional[np.ndarray]
    source: str
    layout: Optional[Layout] = None
    memory_budget: Optional[int] = None  # bytes (DataConfig.memory_budget); None = runtime.budget's default

    def _layout(self, chunk: dict[str, np.ndarray]) -> Layout:
        return self.layout or Layout.of_batch(chunk)

    def __len__(self) -> int:
        return sum(self._layout(c).samples(c) for c in self.chunks)

    @property
    def names(self) -> list[str]:
        return list(self.chunks[0]) if self.chunks else []

    def batches(self, batch_size: int, limit: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
        """Canonical batches of at most batch_size samples, at most `limit` samples in all (a batch never
        spans two chunks). Models are run on `feeds`, not on these."""
        left = len(self) if limit is None else min(limit, len(self))
        for chunk in self.chunks:
            lay = self._layout(chunk)
            n, consts = lay.samples(chunk), lay.consts
            for start in range(0, n, max(1, batch_size)):
                if left <= 0:
                    return
                stop = min(n, start + batch_size, start + left)
                yield {k: v if k in consts else v[start:stop] for k, v in chunk.items()}
                left -= stop - start

    def feeds(self, batch_size: int, limit: Optional[int] = None) -> Iterator[Feed]:
        """The model runs over these samples (data.layout.feeds: fixed batch, batch axes, consts)."""
        return feeds(self, batch_size, limit)

    def take(self, limit: int) -> "Dataset":
        chunks, left = [], limit
        for c in self.chunks:
            if left <= 0:
                break
            lay = self._layout(c)
            n = lay.samples(c)
            chunks.append({k: v if k in lay.consts else v[:left] for k, v in c.items()})
            left -= min(n, left)
        labels = None if self.labels is None else self.labels[:limit]
        return Dataset(chunks, labels, self.source, self.layout, self.memory_budget)


def _values(i: InputLayout, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    dtype = i.spec.dtype
    if i.value is not None:
        return np.full(shape, i.value).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if "mask" in i.name.lower():  # attention / padding masks: nothing masked
        return np.ones(shape, dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, i.high or 2, shape).astype(dtype)  # token ids within the embedding table


def random_data(specs: Union[Layout, list[InputSpec]], n: int, seed: int = 0, dynamic: int = 1) -> Dataset:
    """Random inputs for models without data, following the layout: n samples on each batch axis, free
    dims 8 (a const's batch dims 1); floats normal, token ids within their table, masks all ones, a
    const's given value."""
    layout = as_layout(specs)
    rng = np.random.default_rng(seed)
    chunk = {}
    for i in layout.inputs:
        dims = [d if static(d) else (1 if d in layout.symbols else 8) for d in i.spec.shape]
        if i.const:
            chunk[i.name] = _values(i, dims, rng)
        else:
            chunk[i.name] = _values(i, [n] + [d for a, d in enumerate(dims) if a != i.axis], rng)
    return Dataset([chunk], None, "random", layout)
