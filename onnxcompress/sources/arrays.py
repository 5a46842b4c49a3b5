"""Arrays: the .npz/.npy files and folders of `data.load_data` (held in memory as today), through the registry.

`samples` picks a seeded random subset of rows (kept in file order, so chunks of different shapes stay apart)."""
from __future__ import annotations

import numpy as np


def open_arrays(path, specs, config, model=None):
    from ..data import Dataset, load_data

    ds = load_data(path, specs)  # specs: the model's data.Layout
    ds.memory_budget = config.memory_budget_bytes()
    if config.samples is None or config.samples >= len(ds):
        return ds
    rows = np.sort(np.random.default_rng(config.seed or 0).choice(len(ds), config.samples, replace=False))
    chunks, start = [], 0
    for c in ds.chunks:
        lay = ds._layout(c)
        n = lay.samples(c)
        pick = rows[(rows >= start) & (rows < start + n)] - start
        if len(pick):
            chunks.append({k: v if k in lay.consts else v[pick] for k, v in c.items()})
        start += n
    labels = None if ds.labels is None else ds.labels[rows]
    return Dataset(chunks, labels, ds.source, ds.layout, ds.memory_budget)
