import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxcompress.errors import InputError
from onnxcompress.quant.calibrate import Histogram, calibrate


def _bin(x, radius, bins):
    width = 2 * radius / bins
    return np.bincount(np.clip(((x + radius) / width).astype(np.int64), 0, bins - 1), minlength=bins)


def test_streaming_histogram_equals_one_pass_on_concatenated_data():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(5000) * s for s in (0.1, 1.0, 7.0, 3.0, 40.0)]  # range grows 3 times
    h = Histogram(bins=1024)
    for p in parts:
        h.update(p)
    allx = np.concatenate(parts)
    assert h.radius >= np.abs(allx).max() and h.radius / 2 < np.abs(allx).max()
    np.testing.assert_array_equal(h.counts, _bin(allx, h.radius, 1024))
    assert h.counts.sum() == allx.size and h.counts.size == 1024  # fixed size


def test_percentile_range_matches_numpy_within_a_bin():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(100_000), [60.0, -45.0]])  # two outliers
    h = Histogram(bins=4096)
    for chunk in np.array_split(x, 7):
        h.update(chunk)
    lo, hi = h.percentile_range(99.9)
    width = 2 * h.radius / h.bins
    assert abs(hi - np.percentile(x, 99.9)) <= width
    assert abs(lo - np.percentile(x, 0.1)) <= width
    assert hi < 10 and lo > -10  # outliers clipped


def test_entropy_clips_outliers_and_keeps_asymmetric_sides():
    rng = np.random.default_rng(2)
    x = np.concatenate([np.abs(rng.standard_normal(200_000)), [80.0]])  # ReLU-like with one outlier
    x[:50_000] = 0.0
    h = Histogram()
    h.update(x)
    lo, hi = h.entropy_range()
    assert lo == 0.0
    assert 2.0 < hi < 20.0  # far below the outlier, far above the bulk's centre


def _model(op="Relu"):
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"]), helper.make_node("Neg", ["y"], ["z"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S"])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", "S"])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_ranges_variable_length_batches_and_nonfinite_ignored():
    rng = np.random.default_rng(3)
    batches = [{"x": rng.standard_normal((2, s)).astype(np.float32)} for s in (3, 17, 9)]
    batches[1]["x"][0, 0] = -np.inf  # a padded attention-mask-like value
    res = calibrate(_model("Identity"), iter(batches), "minmax")
    finite = np.concatenate([b["x"][np.isfinite(b["x"])] for b in batches])
    assert res.ranges["x"] == pytest.approx((min(finite.min(), 0), max(finite.max(), 0)))
    assert res.ranges["z"] == pytest.approx((min(-finite.max(), 0), max(-finite.min(), 0)))
    assert res.nonfinite == {"x": 1, "y": 1, "z": 1}
    assert res.samples == 6 and res.batches == 3


def test_tensor_without_finite_values_is_refused_by_name():
    batches = [{"x": np.full((2, 4), np.nan, np.float32)}]
    with pytest.raises(InputError, match="tensor 'x' has no finite values"):
        calibrate(_model(), iter(batches), "minmax")
