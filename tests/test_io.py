import os

import numpy as np
import onnx
import pytest

from conftest import run_ort, tiny_cnn
from onnxcompress.errors import InputError
from onnxcompress.io import atomic_write_bytes, check_output_path, load_model, model_size, save_model


def test_save_and_load_round_trip(tmp_path):
    m = tiny_cnn()
    p = save_model(m, tmp_path / "m.onnx")
    back = load_model(p)
    x = np.ones((2, 1, 8, 8), np.float32)
    np.testing.assert_array_equal(run_ort(m, {"input": x})[0], run_ort(back, {"input": x})[0])
    assert model_size(p) == p.stat().st_size
    assert oct(p.stat().st_mode & 0o777) != oct(0o600)  # normal permissions, not mkstemp's


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"x" * 100)
    atomic_write_bytes(tmp_path / "a.bin", b"y" * 10)
    assert (tmp_path / "a.bin").read_bytes() == b"y" * 10
    assert sorted(os.listdir(tmp_path)) == ["a.bin"]


@pytest.mark.parametrize("content, needle", [
    (b"", "empty"),
    (b"hello, this is text\n", "not an ONNX model"),
])
def test_bad_files(tmp_path, content, needle):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(InputError, match=needle):
        load_model(p)


def test_missing_and_truncated(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "missing.onnx")
    data = tiny_cnn().SerializeToString()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        load_model(p)


def test_checker_failure_is_input_error(tmp_path):
    m = tiny_cnn()
    m.graph.node[0].input[1] = "does_not_exist"
    p = tmp_path / "broken.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(InputError, match="onnx.checker"):
        load_model(p)


def test_external_data_round_trip_and_missing(tmp_path):
    m = tiny_cnn()
    p = tmp_path / "ext.onnx"
    onnx.save_model(tiny_cnn(), str(p), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    back = load_model(p)
    x = np.ones((1, 1, 8, 8), np.float32)
    np.testing.assert_array_equal(run_ort(m, {"input": x})[0], run_ort(back, {"input": x})[0])
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(InputError, match="external data"):
        load_model(p)


def test_output_equal_to_input_is_refused(tmp_path, tiny_model_path):
    with pytest.raises(InputError, match="is the input file"):
        check_output_path(tiny_model_path, tiny_model_path)
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "out.onnx", tiny_model_path)


def test_load_model_goes_through_the_front_door_unless_asked_not_to(tmp_path):
    from onnx import helper

    m = tiny_cnn()
    const = helper.make_node("Constant", [], ["w2"], name="w2_const", value=m.graph.initializer[2])
    del m.graph.initializer[2]
    m.graph.node.insert(0, const)
    p = tmp_path / "const.onnx"
    p.write_bytes(m.SerializeToString())
    canon, raw = load_model(p), load_model(p, canonical=False)
    assert "w2" in {i.name for i in canon.graph.initializer} and canon.graph.node[0].op_type == "Conv"
    assert raw.graph.node[0].op_type == "Constant"
    x = np.ones((1, 1, 8, 8), np.float32)
    np.testing.assert_array_equal(run_ort(canon, {"input": x})[0], run_ort(raw, {"input": x})[0])
    assert p.read_bytes() == m.SerializeToString()  # the file is never touched
