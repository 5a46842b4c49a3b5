"""The streamed dataset: order, bounded read-ahead, labels, take; and .npz arrays through the registry."""
from __future__ import annotations

import threading
import time

import numpy as np

from onnxcompress.config import DataConfig
from onnxcompress.data import Dataset, input_specs, load_data
from onnxcompress.sources import open_source
from onnxcompress.sources.base import StreamDataset, sample_order

from .helpers import image_model


class CountingSource:
    """Sample i decodes to [[i]]; records how far ahead of the consumer reads have started."""

    description = "counting"
    names = ["x"]

    def __init__(self, n):
        self.n = n
        self.labels = np.arange(n) * 10
        self.started = 0
        self.lock = threading.Lock()

    def __len__(self):
        return self.n

    def read(self, idx):
        with self.lock:
            self.started += 1
        time.sleep(0.002)
        return {"x": np.asarray(idx, np.float32)[:, None]}


def test_batches_in_order_with_bounded_read_ahead():
    src = CountingSource(100)
    ds = StreamDataset(src, sample_order(100, None, 3), workers=2, prefetch=2)
    seen, ahead = [], []
    for b in ds.batches(10):
        seen += b["x"][:, 0].astype(int).tolist()
        ahead.append(src.started - len(seen) // 10)
    assert seen == ds.order.tolist() and sorted(seen) == list(range(100))
    assert max(ahead) <= 2 and ds.labels.tolist() == (ds.order * 10).tolist()  # never more than `prefetch` ahead
    src.started = 0
    it = ds.batches(10)
    next(it)
    it.close()  # stopping early cancels the rest
    assert src.started <= 3


def test_take_and_limit():
    ds = StreamDataset(CountingSource(20), np.arange(20))
    assert len(ds.take(7)) == 7 and sum(len(b["x"]) for b in ds.batches(3, limit=8)) == 8
    assert [len(b["x"]) for b in ds.take(7).batches(3)] == [3, 3, 1]


def test_arrays_through_the_registry_and_subset(tmp_path):
    m = image_model(("N", 3, 4, 4))
    x = np.random.default_rng(0).standard_normal((30, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(30))
    full = open_source(tmp_path / "d.npz", input_specs(m))
    assert isinstance(full, Dataset) and len(full) == 30
    sub = load_data(tmp_path / "d.npz", input_specs(m), DataConfig(samples=8, seed=4))
    rows = sub.labels
    assert len(sub) == 8 and len(set(rows.tolist())) == 8 and (np.diff(rows) > 0).all()
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in sub.batches(3)]), x[rows])
    again = load_data(tmp_path / "d.npz", input_specs(m), DataConfig(samples=8, seed=4))
    assert again.labels.tolist() == rows.tolist()
