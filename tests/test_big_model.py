"""A model over 2 GB (two 1.07 GB initializers, generated here; protobuf caps one message, and so one
tensor, at 2 GiB) goes through simplify, prune, quantize and validate with its external data beside it."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.cli import main

K = M = 16384  # two 16384 x 16384 float32 weights: 2 x 1.07 GB > the 2 GiB protobuf limit


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    w1 = np.empty((K, M), np.float32)
    for i in range(0, K, 2048):  # fill in slices to keep peak memory down
        w1[i:i + 2048] = rng.standard_normal((min(2048, K - i), M), dtype=np.float32) * 0.01
    w1[:, 7] = 0.0  # a dead hidden unit for the prune pass to remove
    w2 = rng.standard_normal((M, M), dtype=np.float32) * 0.01
    w3 = rng.standard_normal((M, 4)).astype(np.float32) * 0.05
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["h2"], name="mm2"), helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "w3"], ["y"], name="mm3")]
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    for arr, name in ((w1, "w1"), (w2, "w2"), (w3, "w3")):
        g.initializer.append(numpy_helper.from_array(arr, name))
    del w1, w2
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = d / "big.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, location="big.onnx.data", size_threshold=1024)
    del m
    np.savez(d / "data.npz", x=rng.standard_normal((8, K)).astype(np.float32))
    return d


@pytest.mark.slow  # ~4 min: a >2 GB model through every stage
def test_big_model_through_every_stage(big):
    r = CliRunner()
    src, data = big / "big.onnx", big / "data.npz"
    before = (big / "big.onnx.data").stat().st_size
    assert before > 2**31

    s = r.invoke(main, ["simplify", str(src), "-o", str(big / "s.onnx"), "--json"])
    assert s.exit_code == 0, s.output
    assert "over 2 GB" in s.stdout and (big / "s.onnx.data").stat().st_size > 2**31

    p = r.invoke(main, ["prune", str(src), "-o", str(big / "p.onnx"), "--json"])
    assert p.exit_code == 0, p.output
    pruned = onnx.load(str(big / "p.onnx"), load_external_data=False)
    dims = {i.name: list(i.dims) for i in pruned.graph.initializer}
    assert dims["w1"] == [K, M - 1] and dims["w2"] == [M - 1, M]
    assert (big / "p.onnx.data").exists()

    q = r.invoke(main, ["quantize", str(big / "p.onnx"), "-o", str(big / "q.onnx"), "-c", str(data)])
    assert q.exit_code == 0, q.output
    v = r.invoke(main, ["validate", str(src), str(big / "q.onnx"), "--data", str(data), "--min-cosine", "0.99", "--json"])
    assert v.exit_code == 0, v.output
    assert (big / "big.onnx.data").stat().st_size == before  # input untouched
