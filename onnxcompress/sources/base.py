"""A streamed dataset: a source that decodes a batch of sample indices on demand, read ahead by a small pool.

Only the sample list (file names, byte offsets, labels) is held in memory; pixel/token/audio data exist for
the batches in flight only (the one being used plus `prefetch` decoded ahead), so peak memory does not depend
on the number of samples. Decoding runs in `workers` threads: Pillow, the tokenizers library and numpy release
the GIL, so the thread running the model is not kept waiting.
"""
from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional, Protocol

import numpy as np


class Source(Protocol):
    """What a kind of data provides: a sample count, labels (or None) and a batch decoder."""

    description: str
    names: list[str]
    labels: Optional[np.ndarray]

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


def sample_order(n: int, samples: Optional[int], seed: Optional[int]) -> np.ndarray:
    """Sample indices to read: a seeded permutation (seed=None: file order), cut to `samples`."""
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    return order if samples is None else order[:samples]


class StreamDataset:
    """The `data.Dataset` interface (batches, take, labels, len) over a streamed source."""

    def __init__(self, source: Source, order: np.ndarray, workers: int = 2, prefetch: int = 2,
                 skipped: tuple[str, ...] = (), layout=None, consts: Optional[dict[str, np.ndarray]] = None,
                 memory_budget: Optional[int] = None):
        self._source = source
        self.layout = layout  # data.Layout of the model the source was checked against (feeds() reads it)
        self.consts = consts or {}  # const inputs (--input-layout name:const=VALUE), added to every batch
        self.order = np.asarray(order, dtype=np.int64)
        self.workers = max(1, workers)
        self.prefetch = max(1, prefetch)
        self.skipped = skipped  # files left out by --skip-bad
        self.source = source.description
        self.memory_budget = memory_budget  # bytes for intermediate tensors (DataConfig.memory_budget; runtime.budget)

    def __len__(self) -> int:
        return len(self.order)

    def __str__(self) -> str:
        return self._source.description

    @property
    def names(self) -> list[str]:
        return list(self._source.names) + list(self.consts)

    @property
    def labels(self) -> Optional[np.ndarray]:
        lab = self._source.labels
        return None if lab is None else lab[self.order]

    def take(self, limit: int) -> "StreamDataset":
        return StreamDataset(self._source, self.order[:limit], self.workers, self.prefetch, self.skipped, self.layout,
                             self.consts, self.memory_budget)

    def _read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {**self._source.read(indices), **self.consts}

    def feeds(self, batch_size: int, limit: Optional[int] = None):
        """The model runs over these samples (data.layout.feeds: fixed batch, batch axes, consts)."""
        from ..data import feeds

        return feeds(self, batch_size, limit)

    def batches(self, batch_size: int, limit: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
        """Canonical batches (samples first) in order, decoded ahead of the consumer by a bounded pool."""
        order = self.order if limit is None else self.order[:limit]
        groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if not groups:
            return
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="onnxcompress-decode")
        try:
            if hasattr(self._source, "read_one"):
                yield from self._by_sample(pool, groups)
            else:
                yield from self._by_batch(pool, groups)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _by_batch(self, pool, groups) -> Iterator[dict[str, np.ndarray]]:
        """Batch-level sources (text: per-batch padding; audio: a file's windows together): at most `prefetch`
        batches decoded ahead of the one the consumer holds."""
        pending: collections.deque = collections.deque()
        nxt = 0
        while nxt < len(groups) and len(pending) < self.prefetch:
            pending.append(pool.submit(self._read, groups[nxt]))
            nxt += 1
        while pending:
            batch = pending.popleft().result()
            if nxt < len(groups):
                pending.append(pool.submit(self._read, groups[nxt]))
                nxt += 1
            yield batch

    def _by_sample(self, pool, groups) -> Iterator[dict[str, np.ndarray]]:
        """Sample-level sources (images): a few samples (4 per worker) decoded ahead, written in place into the
        next batch's array (no stacking copy), so beyond the batch the consumer holds, memory grows by a few
        samples only, not by whole batches."""
        ahead = 4 * self.workers
        todo = ((int(i), g) for g in range(len(groups)) for i in groups[g])
        pending: collections.deque = collections.deque()

        def fill() -> None:
            while len(pending) < ahead:
                nxt = next(todo, None)
                if nxt is None:
                    return
                pending.append((nxt[0], pool.submit(self._source.read_one, nxt[0])))

        name = self._source.names[0]
        for g in groups:
            out = None
            for pos in range(len(g)):
                fill()
                i, fut = pending.popleft()
                x = fut.result()
                if out is None:
                    out, first = np.empty((len(g),) + x.shape, x.dtype), i
                elif x.shape != out.shape[1:]:
                    self._source.shape_error(i, x.shape, first, out.shape[1:])
                out[pos] = x
            fill()  # keep the pool busy while the consumer runs the model
            yield {name: out, **self.consts}

    @property
    def chunks(self) -> list[dict[str, np.ndarray]]:
        """Every sample in one chunk (materialised: for torch training only, which needs them all)."""
        parts = list(self.batches(256))
        if not parts:
            return []
        return [{k: v if k in self.consts else np.concatenate([p[k] for p in parts]) for k, v in parts[0].items()}]
