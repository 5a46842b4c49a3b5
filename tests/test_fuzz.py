"""Fuzzing: corrupted models and random data specs never escape as anything but our own errors."""
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_cnn
from onnxcompress.config import QuantConfig, ValidateConfig
from onnxcompress.data import input_specs, load_data
from onnxcompress.errors import OnnxCompressError
from onnxcompress.evaluate.validate import validate
from onnxcompress.io import load_model
from onnxcompress.quant.qdq import quantize

GOOD = tiny_cnn().SerializeToString()
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), derandomize=not os.environ.get("FUZZ_EXAMPLES"), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def corrupted(draw):
    data = bytearray(GOOD)
    kind = draw(st.sampled_from(["flip", "truncate", "splice"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    else:
        i = draw(st.integers(0, len(data) - 1))
        data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@FUZZ
@given(blob=corrupted())
def test_corrupted_model_through_load_validate_quantize(tmp_path_factory, blob):
    d = tmp_path_factory.mktemp("fz")
    p = d / "m.onnx"
    p.write_bytes(blob)
    try:
        model = load_model(p)
    except OnnxCompressError:
        return
    data = d / "d.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32))
    try:
        ds = load_data(data, input_specs(model))
        validate(p, p, data, ValidateConfig(max_drop=None))
        quantize(model, ds, QuantConfig(calibration_samples=4))
    except OnnxCompressError:
        pass
    assert p.read_bytes() == blob  # the input is never modified


dims = st.one_of(st.integers(0, 10), st.just(8))


@FUZZ
@given(shape=st.lists(dims, min_size=0, max_size=5),
       dtype=st.sampled_from(["float32", "float64", "int64", "uint8", "bool"]),
       name=st.sampled_from(["input", "x", "labels"]),
       nonfinite=st.booleans())
def test_random_data_specs(tmp_path_factory, shape, dtype, name, nonfinite):
    d = tmp_path_factory.mktemp("fd")
    arr = np.zeros(shape, dtype=dtype)
    if nonfinite and arr.size and arr.dtype.kind == "f":
        arr.flat[0] = np.inf
    np.savez(d / "d.npz", **{name: arr})
    try:
        ds = load_data(d / "d.npz", input_specs(tiny_cnn()))
    except OnnxCompressError:
        return
    # whatever was accepted must fit the model exactly
    for b in ds.batches(4):
        assert b["input"].shape[1:] == (1, 8, 8) and b["input"].dtype == np.float32
        assert np.isfinite(b["input"]).all()
