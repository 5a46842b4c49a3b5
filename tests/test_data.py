import numpy as np
import pytest

from conftest import tiny_cnn
from onnxcompress.data import input_specs, load_data, random_data
from onnxcompress.errors import InputError


def specs():
    return input_specs(tiny_cnn())


def test_specs_read_dynamic_batch():
    (s,) = specs()
    assert s.name == "input" and s.shape == ("N", 1, 8, 8) and s.dtype == np.float32


def test_npz_batches_and_labels(tmp_path):
    x = np.arange(10 * 64, dtype=np.float32).reshape(10, 1, 8, 8)
    np.savez(tmp_path / "d.npz", input=x, labels=np.arange(10))
    ds = load_data(tmp_path / "d.npz", specs())
    assert len(ds) == 10
    sizes = [len(b["input"]) for b in ds.batches(4)]
    assert sizes == [4, 4, 2]
    assert [len(b["input"]) for b in ds.batches(4, limit=5)] == [4, 1]
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in ds.batches(3)]), x)
    assert ds.labels.tolist() == list(range(10))


def test_folder_of_chunks_and_float64_cast(tmp_path):
    d = tmp_path / "folder"
    d.mkdir()
    np.savez(d / "a.npz", input=np.zeros((3, 1, 8, 8), np.float64))
    np.save(d / "b.npy", np.ones((2, 1, 8, 8), np.float32))
    ds = load_data(d, specs())
    assert len(ds) == 5 and all(b["input"].dtype == np.float32 for b in ds.batches(8))


@pytest.mark.parametrize("arrays, needle", [
    ({"x": np.zeros((2, 1, 8, 8), np.float32)}, "no array for model input 'input'"),
    ({"input": np.zeros((2, 1, 8, 8), np.float32), "extra": np.zeros(2)}, "'extra' that is not a model input"),
    ({"input": np.zeros((2, 8, 8), np.float32)}, "expects rank 4"),
    ({"input": np.zeros((2, 3, 8, 8), np.float32)}, r"axis 1: 1 != 3"),
    ({"input": np.zeros((2, 1, 8, 8), np.int32)}, "expects dtype float32"),
    ({"input": np.zeros((0, 1, 8, 8), np.float32)}, "zero samples"),
    ({"input": np.full((2, 1, 8, 8), np.nan, np.float32)}, "NaN/Inf"),
    ({"input": np.zeros((2, 1, 8, 8), np.float32), "labels": np.zeros(3)}, "'labels' has 3 entries"),
])
def test_mismatches_are_named(tmp_path, arrays, needle):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(InputError, match=needle):
        load_data(tmp_path / "d.npz", specs())


def test_missing_and_wrong_type(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_data(tmp_path / "none.npz", specs())
    (tmp_path / "d.xyz").write_text("x")
    with pytest.raises(InputError, match="unsupported type"):
        load_data(tmp_path / "d.xyz", specs())
    (tmp_path / "d.npz").write_text("not a zip")
    with pytest.raises(InputError, match="cannot read"):
        load_data(tmp_path / "d.npz", specs())


def test_random_data_follows_specs():
    ds = random_data(specs(), 5)
    (b,) = list(ds.batches(8))
    assert b["input"].shape == (5, 1, 8, 8) and b["input"].dtype == np.float32
