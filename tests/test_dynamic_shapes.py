"""Dynamic batch and sequence dimensions through every stage, with data chunks of varying shape."""
import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from onnxcompress.cli import main


def seq_model(batch="batch"):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)).astype(np.float32) * 0.3
    w1[:, 5] = 0.0  # a dead hidden unit
    b1 = rng.standard_normal(32).astype(np.float32) * 0.1
    b1[5] = -1.0  # relu(-1) = 0: removable exactly
    w2 = rng.standard_normal((32, 4)).astype(np.float32) * 0.3
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"), helper.make_node("Add", ["h", "b1"], ["hb"], name="bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="act"), helper.make_node("MatMul", ["r", "w2"], ["y"], name="down")]
    g = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, "seq", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, "seq", 4])],
                          [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_every_stage_with_dynamic_batch_and_sequence(tmp_path):
    onnx.save(seq_model(), str(tmp_path / "m.onnx"))
    data = tmp_path / "chunks"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i, (n, s) in enumerate([(3, 5), (2, 11), (4, 1)]):  # batch and sequence length vary per chunk
        np.savez(data / f"{i}.npz", x=rng.standard_normal((n, s, 16)).astype(np.float32))
    r = CliRunner()
    assert r.invoke(main, ["simplify", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "s.onnx")]).exit_code == 0
    p = r.invoke(main, ["prune", str(tmp_path / "s.onnx"), "-o", str(tmp_path / "p.onnx"), "--json"])
    assert p.exit_code == 0, p.output
    assert json.loads(p.stdout)["stats"]["groups_removed"] == 1
    pruned = onnx.load(str(tmp_path / "p.onnx"))
    assert {i.name: list(i.dims) for i in pruned.graph.initializer}["w1"] == [16, 31]
    x = rng.standard_normal((2, 7, 16)).astype(np.float32)
    np.testing.assert_allclose(run_ort(tmp_path / "p.onnx", {"x": x})[0], run_ort(tmp_path / "m.onnx", {"x": x})[0],
                               rtol=1e-5, atol=1e-6)
    q = r.invoke(main, ["quantize", str(tmp_path / "p.onnx"), "-o", str(tmp_path / "q.onnx"), "-c", str(data), "--speed-check", "0",
                        "--json"])
    assert q.exit_code == 0, q.output
    assert json.loads(q.stdout)["stats"]["calibration"]["samples"] == 9
    v = r.invoke(main, ["validate", str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), "--data", str(data),
                        "--min-cosine", "0.99", "--json"])
    assert v.exit_code == 0, v.output
    assert json.loads(v.stdout)["samples"] == 9
    b = r.invoke(main, ["bench", str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), "--runs", "3", "--no-memory"])
    assert b.exit_code == 0, b.output
    out = run_ort(tmp_path / "q.onnx", {"x": rng.standard_normal((5, 3, 16)).astype(np.float32)})[0]
    assert out.shape == (5, 3, 4)


def test_batch_fixed_at_1_with_a_dynamic_sequence(tmp_path):
    """Chunks of different sequence lengths, each fed one sample per run (batch fixed at 1)."""
    onnx.save(seq_model(batch=1), str(tmp_path / "m.onnx"))
    data = tmp_path / "chunks"
    data.mkdir()
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((n, s, 16)).astype(np.float32) for n, s in ((3, 5), (2, 11))]
    for i, x in enumerate(xs):
        np.savez(data / f"{i}.npz", x=x)
    r = CliRunner()
    q = r.invoke(main, ["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "-c", str(data),
                        "--mode", "static", "--speed-check", "0", "--json"])
    assert q.exit_code == 0, q.output
    assert json.loads(q.stdout)["stats"]["calibration"]["samples"] == 5
    v = r.invoke(main, ["validate", str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), "--data", str(data),
                        "--min-cosine", "0.99", "--json"])
    assert v.exit_code == 0, v.output
    assert json.loads(v.stdout)["samples"] == 5
    for x in xs:
        ref = np.concatenate([run_ort(tmp_path / "m.onnx", {"x": x[i:i + 1]})[0] for i in range(len(x))])
        got = np.concatenate([run_ort(tmp_path / "q.onnx", {"x": x[i:i + 1]})[0] for i in range(len(x))])
        assert got.shape == ref.shape and np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99
