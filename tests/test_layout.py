"""Input layouts of real models: a batch fixed at 1 (or 4), a batch axis that is not first (LSTM state),
scalar / const inputs, integer and bool inputs; through every command that takes data."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from conftest import run_ort, tiny_cnn
from onnxcompress.cli import main
from onnxcompress.data import (Dataset, InputSpec, input_specs, load_data, model_layout, random_data, resolve_layout)
from onnxcompress.errors import ConfigError, InputError
from onnxcompress.runtime.session import make_session, run_dataset
from onnxcompress.quant.calibrate import calibrate

torch = pytest.importorskip("torch")
torch.set_num_threads(2)
F32 = np.dtype("float32")


def _one_line_error(r, code=2):
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.output
    return lines[0]


# ---------------------------------------------------------------- layout resolution from shapes

def spec(name, shape, dtype=F32):
    return InputSpec(name, tuple(shape), np.dtype(dtype))


def test_layout_from_shapes():
    lay = resolve_layout([spec("x", ["N", 64]), spec("state", [2, "N", 16]), spec("sr", [], "int64")])
    assert [(i.name, i.axis) for i in lay.inputs] == [("x", 0), ("state", 1), ("sr", None)]
    assert lay.batch is None and lay.symbols == {"N"}
    fixed = resolve_layout([spec("state", [2, 1, 16]), spec("x", [1, 64])])  # the state first: batch 1 found on axis 1
    assert [(i.name, i.axis) for i in fixed.inputs] == [("state", 1), ("x", 0)] and fixed.batch == 1
    assert resolve_layout([spec("x", [1, 3, 8, 8])]).batch == 1
    given = resolve_layout([spec("x", ["N", 64]), spec("mask", [4, 4])], ["mask:const"])
    assert given["mask"].const and given.explicit == ("mask:const",)


def test_output_batch_axes():
    # silero-VAD as exported by spox: no dim names; the state out [?, ?, ?] is shaped like the state in
    lay = resolve_layout([spec("input", [None, None]), spec("state", [2, None, 128]), spec("sr", [], "int64")], ["state:1"])
    assert [lay.output_axis(s) for s in ([None, 1], [None, None, None], [2, None, 128], ["T", "b", 5], [])] == [0, 1, 1, 0, None]
    named = resolve_layout([spec("image", ["batch", 3, 60, 160])])
    assert named.output_axis(["T", "batch", 37]) == 1  # a time-major CTC output
    assert resolve_layout([spec("x", [1, 64]), spec("state", [2, 1, 16])]).output_axis([2, 1, 16]) == 1


@pytest.mark.parametrize("specs, items, needle", [
    ([spec("x", ["N", 64]), spec("m", [4, 4])], (), "batch axis of input 'm' .* --input-layout m:AXIS"),
    ([spec("x", [1, 64]), spec("y", [4, 64])], ("x:0", "y:0"), "different fixed batch sizes"),
    ([spec("x", [1, 64]), spec("y", [4, 64])], ("y:0",), "batch axis of input .x. .*other inputs. batch dim is 4"),
    ([spec("x", ["N", 64])], ("nope:1",), "no input 'nope' .*inputs: x"),
    ([spec("x", ["N", 64])], ("x:2",), "input 'x' has shape Nx64 .*rank 2.*axis from 0 to 1"),
    ([spec("sr", [], "int64")], ("sr:0",), "use sr:const"),
])
def test_layouts_the_shapes_contradict_are_named(specs, items, needle):
    with pytest.raises(InputError, match=needle):
        resolve_layout(specs, items)


@pytest.mark.parametrize("item", ["x", "x:y", ":1", "x:const=abc", "x:-1"])
def test_layout_syntax(item):
    with pytest.raises(ConfigError):
        resolve_layout([spec("x", ["N", 4])], [item])


def test_tf_style_names_keep_their_colon():
    lay = resolve_layout([spec("x:0", ["N", 4]), spec("sr:0", [2, 3])], ["sr:0:const"])
    assert lay["sr:0"].const and lay["x:0"].axis == 0


# ---------------------------------------------------------------- a fixed batch of 4: split, pad, drop the padding

def test_fixed_batch_runs_are_padded_and_the_padding_dropped(tmp_path):
    fixed, dynamic = tiny_cnn(batch=4), tiny_cnn(batch="N")
    x = np.random.default_rng(0).standard_normal((10, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=x)
    ds = load_data(tmp_path / "d.npz", input_specs(fixed))
    assert ds.layout.batch == 4
    runs = list(ds.feeds(64))
    assert [(f.samples, f.size, f["input"].shape[0]) for f in runs] == [(4, 4, 4), (4, 4, 4), (2, 4, 4)]
    out = run_dataset(make_session(fixed), ds)["logits"]
    np.testing.assert_allclose(out, run_ort(dynamic, {"input": x})[0], rtol=1e-5, atol=1e-6)
    # calibration reads each sample once: the same histogram ranges as the dynamic model on all 10 samples
    a = calibrate(fixed, ds.feeds(64), "percentile", 90.0)
    b = calibrate(dynamic, load_data(tmp_path / "d.npz", input_specs(dynamic)).feeds(64), "percentile", 90.0)
    assert a.samples == b.samples == 10 and a.ranges == b.ranges


# ---------------------------------------------------------------- a torch CNN exported with the batch fixed at 1

class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32)
        self.c2, self.fc = torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        return self.fc(torch.relu(self.c2(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def cnn1(tmp_path_factory):
    d = tmp_path_factory.mktemp("cnn1")
    torch.manual_seed(0)
    net = CNN().eval()
    with torch.no_grad():
        net.b1.running_mean.uniform_(-0.2, 0.2)
        net.b1.running_var.uniform_(0.5, 2.0)
        torch.onnx.export(net, torch.randn(1, 3, 12, 12), str(d / "m.onnx"), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"])
    x = np.random.default_rng(1).standard_normal((12, 3, 12, 12)).astype(np.float32)
    ref = np.concatenate([run_ort(d / "m.onnx", {"x": x[i:i + 1]})[0] for i in range(len(x))])
    np.savez(d / "d.npz", x=x, labels=ref.argmax(1))
    return d, x, ref


def _per_sample(path, x):
    return np.concatenate([run_ort(path, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def _cos(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.min((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def test_batch_fixed_at_1_quantize_prune_validate_bench(cnn1, tmp_path):
    d, x, ref = cnn1
    assert input_specs(onnx.load(str(d / "m.onnx")))[0].shape == (1, 3, 12, 12)
    r = CliRunner()
    q = r.invoke(main, ["quantize", str(d / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "-c", str(d / "d.npz"),
                        "--mode", "static", "--target", "avx2", "--json"])  # 7-bit weights: no 16-bit saturation on any x86
    assert q.exit_code == 0, q.output
    assert json.loads(q.stdout)["stats"]["calibration"]["samples"] == 12
    assert _cos(_per_sample(tmp_path / "q.onnx", x), ref) > 0.98
    p = r.invoke(main, ["prune", str(d / "m.onnx"), "-o", str(tmp_path / "p.onnx"), "--ratio", "0.3", "-c",
                        str(d / "d.npz"), "--json"])
    assert p.exit_code == 0, p.output
    rc = json.loads(p.stdout)["stats"]["reconstruct"]
    assert rc["samples"] == 12 and rc["refit"] >= 1
    pruned = onnx.load(str(tmp_path / "p.onnx"))
    assert input_specs(pruned)[0].shape == (1, 3, 12, 12)
    assert {i.name: list(i.dims) for i in pruned.graph.initializer}[pruned.graph.node[0].input[1]][0] < 32
    assert np.isfinite(_per_sample(tmp_path / "p.onnx", x)).all()
    v = r.invoke(main, ["validate", str(d / "m.onnx"), str(tmp_path / "q.onnx"), "--data", str(d / "d.npz"),
                        "--min-cosine", "0.98", "--max-latency-ratio", "100", "--json"])
    assert v.exit_code == 0, v.output
    res = json.loads(v.stdout)
    assert res["samples"] == 12 and res["outputs"]["logits"]["cosine"] > 0.98
    b = r.invoke(main, ["bench", str(d / "m.onnx"), str(tmp_path / "q.onnx"), "--data", str(d / "d.npz"), "--runs", "3",
                        "--warmup", "1", "--no-memory", "--batch", "1,4", "--json"])
    assert b.exit_code == 0, b.output
    res = json.loads(b.stdout)["results"]["m.onnx"]
    assert res["cpu/t1/b1"]["median_ms"] > 0 and "fixed batch of 1" in res["cpu/t1/b4"]["skipped"]


def test_batch_fixed_at_1_quantize_auto_with_validation(cnn1, tmp_path):
    d, x, ref = cnn1
    q = CliRunner().invoke(main, ["quantize", str(d / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "-c", str(d / "d.npz"),
                                  "-v", str(d / "d.npz"), "--json"])
    assert q.exit_code == 0, q.output
    auto = json.loads(q.stdout)["stats"]["auto"]
    assert auto["chosen"] == "static" and auto["candidates"][0]["drop"] <= 1.0  # measured on the 12 samples, batch 1
    assert _cos(_per_sample(tmp_path / "q.onnx", x), ref) > 0.97


# ---------------------------------------------------------------- a streaming-audio toy: GRU state [2, N, H], scalar sr

class VAD(torch.nn.Module):
    """Silero-VAD-like: x [N, 64], state [2, N, 16], sr int64 scalar (scales the input) -> prob [N, 1], state."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(8, 8)
        self.rnn = torch.nn.GRU(8, 16, num_layers=2, batch_first=True)
        self.out = torch.nn.Linear(16, 1)

    def forward(self, x, state, sr):
        x = x * (16000.0 / sr.to(torch.float32))
        h, state = self.rnn(torch.relu(self.inp(x.reshape(x.shape[0], 8, 8))), state)
        return torch.sigmoid(self.out(h[:, -1])), state


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    d = tmp_path_factory.mktemp("vad")
    torch.manual_seed(0)
    with torch.no_grad():  # different dim names for the two batch axes: the layout must be given
        torch.onnx.export(VAD().eval(), (torch.randn(3, 64), torch.zeros(2, 3, 16), torch.tensor(8000)),
                          str(d / "m.onnx"), dynamo=False, opset_version=17, input_names=["x", "state", "sr"],
                          output_names=["prob", "state_out"],
                          dynamic_axes={"x": {0: "n"}, "state": {1: "m"}, "prob": {0: "n"}, "state_out": {1: "m"}})
    rng = np.random.default_rng(2)
    x = rng.standard_normal((12, 64)).astype(np.float32)
    state = (rng.standard_normal((2, 12, 16)) * 0.5).astype(np.float32)  # the model's layout: samples on axis 1
    np.savez(d / "d.npz", x=x, state=state, sr=np.int64(8000))
    return d, x, state


def test_state_on_axis_1_and_scalar_sr(vad, tmp_path):
    d, x, state = vad
    m = onnx.load(str(d / "m.onnx"))
    lay = model_layout(m, ["state:1"])
    assert (lay["x"].axis, lay["state"].axis, lay["sr"].const) == (0, 1, True)
    ds = load_data(d / "d.npz", lay)
    assert len(ds) == 12 and ds.chunks[0]["state"].shape == (12, 2, 16) and ds.chunks[0]["sr"].shape == ()
    out = run_dataset(make_session(d / "m.onnx"), ds, batch_size=5)
    assert out["prob"].shape == (12, 1) and out["state_out"].shape == (2, 12, 16)  # along its own batch axis
    ref = run_ort(d / "m.onnx", {"x": x, "state": state, "sr": np.array(8000, np.int64)})
    np.testing.assert_allclose(out["prob"], ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["state_out"], ref[1], rtol=1e-5, atol=1e-6)
    r = CliRunner()
    q = r.invoke(main, ["quantize", str(d / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "-c", str(d / "d.npz"),
                        "--input-layout", "state:1", "--mode", "static", "--speed-check", "0", "--json"])
    assert q.exit_code == 0, q.output
    assert json.loads(q.stdout)["stats"]["calibration"]["samples"] == 12
    qout = run_ort(tmp_path / "q.onnx", {"x": x, "state": state, "sr": np.array(8000, np.int64)})
    assert _cos(qout[0], ref[0]) > 0.99 and _cos(np.moveaxis(qout[1], 1, 0), np.moveaxis(ref[1], 1, 0)) > 0.98
    v = r.invoke(main, ["validate", str(d / "m.onnx"), str(tmp_path / "q.onnx"), "--data", str(d / "d.npz"),
                        "--input-layout", "state:1", "--min-cosine", "0.98", "--json"])
    assert v.exit_code == 0, v.output
    assert json.loads(v.stdout)["samples"] == 12
    # no data: random inputs in the same layout, sr given its value
    v = r.invoke(main, ["validate", str(d / "m.onnx"), str(tmp_path / "q.onnx"), "--input-layout", "state:1,sr:const=16000",
                        "--json"])
    assert v.exit_code == 0, v.output


def test_const_given_per_sample_and_by_value(vad, tmp_path):
    d, x, state = vad
    lay = model_layout(onnx.load(str(d / "m.onnx")), ["state:1", "sr:const=16000"])
    np.savez(tmp_path / "same.npz", x=x, state=state, sr=np.full(12, 8000))  # per sample, all equal; int64 from int
    assert load_data(tmp_path / "same.npz", lay).chunks[0]["sr"] == 8000
    np.savez(tmp_path / "none.npz", x=x, state=state)  # the value from the layout
    ds = load_data(tmp_path / "none.npz", lay)
    assert ds.chunks[0]["sr"] == 16000 and ds.chunks[0]["sr"].dtype == np.int64
    np.savez(tmp_path / "differ.npz", x=x, state=state, sr=np.arange(12))
    with pytest.raises(InputError, match="const input 'sr' differs between samples"):
        load_data(tmp_path / "differ.npz", lay)


def test_bad_layouts_are_one_line_errors(vad, tmp_path):
    d, x, state = vad
    np.savez(tmp_path / "first.npz", x=x, state=np.moveaxis(state, 1, 0), sr=np.int64(8000))  # samples first: wrong
    r = CliRunner()
    base = ["quantize", str(d / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "-c"]
    line = _one_line_error(r.invoke(main, base + [str(d / "d.npz"), "--input-layout", "nope:1"]))
    assert "no input 'nope'" in line and "x, state, sr" in line
    line = _one_line_error(r.invoke(main, base + [str(d / "d.npz"), "--input-layout", "state:3"]))
    assert "input 'state'" in line and "2xmx16" in line and "axis from 0 to 2" in line
    line = _one_line_error(r.invoke(main, base + [str(tmp_path / "first.npz"), "--input-layout", "state:1"]))
    assert "input 'state' expects shape 2xNx16" in line and "(12, 2, 16)" in line and "--input-layout" in line
    line = _one_line_error(r.invoke(main, base + [str(d / "d.npz"), "--input-layout", "state:one"]))
    assert "state:one" in line
    for cmd in (["prune", str(d / "m.onnx"), "-o", str(tmp_path / "p.onnx"), "--ratio", "0.3", "-c", str(d / "d.npz")],
                ["validate", str(d / "m.onnx"), str(d / "m.onnx"), "--data", str(d / "d.npz")],
                ["bench", str(d / "m.onnx"), "--data", str(d / "d.npz"), "--runs", "1", "--no-memory"]):
        line = _one_line_error(r.invoke(main, cmd + ["--input-layout", "state:0"]))
        assert "'state' 2 on axis 0" in line and "--input-layout" in line
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "p.onnx").exists()


# ---------------------------------------------------------------- integer token ids and a bool mask

class Tokens(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 16)
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, ids, mask):
        h = self.emb(ids) * mask.unsqueeze(-1).to(torch.float32)
        return self.fc(h.sum(1) / mask.to(torch.float32).sum(1, keepdim=True).clamp(min=1.0))


def test_int64_token_ids_and_bool_mask(tmp_path):
    torch.manual_seed(0)
    p = tmp_path / "m.onnx"
    with torch.no_grad():
        torch.onnx.export(Tokens().eval(), (torch.zeros(2, 6, dtype=torch.int64), torch.ones(2, 6, dtype=torch.bool)),
                          str(p), dynamo=False, opset_version=17, input_names=["ids", "mask"], output_names=["logits"],
                          dynamic_axes={"ids": {0: "N", 1: "T"}, "mask": {0: "N", 1: "T"}, "logits": {0: "N"}})
    m = onnx.load(str(p))
    lay = model_layout(m)
    assert lay["ids"].high == 100 and [i.spec.dtype for i in lay.inputs] == [np.int64, np.bool_]
    rnd = random_data(lay, 16).chunks[0]
    assert rnd["ids"].dtype == np.int64 and 0 <= rnd["ids"].min() and rnd["ids"].max() < 100 and rnd["ids"].max() > 1
    assert rnd["mask"].dtype == np.bool_ and rnd["mask"].all()
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 100, (24, 6)).astype(np.int32)  # int32 ids are cast exactly to the int64 input
    mask = rng.random((24, 6)) > 0.3
    np.savez(tmp_path / "d.npz", ids=ids, mask=mask)
    ds = load_data(tmp_path / "d.npz", lay)
    assert ds.chunks[0]["ids"].dtype == np.int64 and ds.chunks[0]["mask"].dtype == np.bool_
    np.testing.assert_allclose(run_dataset(make_session(p), ds, 7)["logits"],
                               run_ort(p, {"ids": ids.astype(np.int64), "mask": mask})[0], rtol=1e-5, atol=1e-6)
    r = CliRunner()
    q = r.invoke(main, ["quantize", str(p), "-o", str(tmp_path / "q.onnx"), "-c", str(tmp_path / "d.npz"),
                        "--mode", "static", "--speed-check", "0", "--json"])
    assert q.exit_code == 0, q.output
    for data in (["--data", str(tmp_path / "d.npz")], []):  # real data, then random ids within the table
        v = r.invoke(main, ["validate", str(p), str(tmp_path / "q.onnx"), *data, "--min-cosine", "0.95", "--json"])
        assert v.exit_code == 0, v.output
    np.savez(tmp_path / "big.npz", ids=np.full((2, 6), 2**63 + 1, np.uint64), mask=mask[:2])
    with pytest.raises(InputError, match="input 'ids' expects dtype int64, found uint64 values outside its range"):
        load_data(tmp_path / "big.npz", lay)
    np.savez(tmp_path / "f.npz", ids=ids.astype(np.float32), mask=mask)
    with pytest.raises(InputError, match="expects dtype int64, found float32"):
        load_data(tmp_path / "f.npz", lay)


def test_dataset_without_a_layout_follows_the_session():
    """Datasets built in code (no model) still run a fixed-batch model: the layout comes from the session."""
    fixed = tiny_cnn(batch=1)
    x = np.random.default_rng(4).standard_normal((3, 1, 8, 8)).astype(np.float32)
    out = run_dataset(make_session(fixed), Dataset([{"input": x}], None, "t"))["logits"]
    np.testing.assert_allclose(out, run_ort(tiny_cnn(batch="N"), {"input": x})[0], rtol=1e-5, atol=1e-6)


def test_all_const_model_runs_once_per_chunk(tmp_path):
    g = helper.make_graph([helper.make_node("Mul", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, []),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    np.savez(tmp_path / "d.npz", a=np.float32(3), b=np.float32(2))
    ds = load_data(tmp_path / "d.npz", input_specs(m))
    assert len(ds) == 1 and run_dataset(make_session(m), ds)["y"] == 6


def test_convert_stores_the_layout_in_the_config(vad, tmp_path):
    from onnxcompress.config import PipelineConfig, from_dict, to_dict

    cfg = from_dict(PipelineConfig, {"data": {"input_layout": ["state:1", "sr:const=16000"]}})
    assert cfg.data.input_layout == ("state:1", "sr:const=16000") and from_dict(PipelineConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="state:x"):
        from_dict(PipelineConfig, {"data": {"input_layout": ["state:x"]}})
    d, x, state = vad
    fast = {"simplify": {"enabled": False}, "quant": {"mode": "static", "speed_check_seconds": 0},
            "bench": {"warmup": 0, "runs": 2}}
    (tmp_path / "cfg.json").write_text(json.dumps(fast))
    r = CliRunner().invoke(main, ["convert", str(d / "m.onnx"), "-o", str(tmp_path / "out"), "-c", str(d / "d.npz"),
                                  "-v", str(d / "d.npz"), "--input-layout", "state:1", "--config", str(tmp_path / "cfg.json"),
                                  "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["config"]["data"]["input_layout"] == ["state:1"]
    int8 = next(s for s in report["stages"] if s["name"] == "int8")
    assert int8["metrics"]["latency_ms"] > 0 and np.isfinite(run_ort(int8["path"], {
        "x": x, "state": state, "sr": np.array(8000, np.int64)})[1]).all()


def test_const_row_is_broadcast_to_the_run(tmp_path):
    g = helper.make_graph([helper.make_node("Mul", ["x", "mask"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                           helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    row = np.array([[1, 0, 2, 0]], np.float32)
    np.savez(tmp_path / "d.npz", x=x, mask=row)
    ds = load_data(tmp_path / "d.npz", model_layout(m, ["mask:const"]))
    assert [f["mask"].shape for f in ds.feeds(2)] == [(2, 4), (2, 4), (1, 4)]
    np.testing.assert_array_equal(run_dataset(make_session(m), ds, 2)["y"], x * row)
    np.savez(tmp_path / "rows.npz", x=x, mask=np.ones((3, 4), np.float32))
    with pytest.raises(InputError, match="const input 'mask' has 3 rows on its batch dim 'N'"):
        load_data(tmp_path / "rows.npz", model_layout(m, ["mask:const"]))


def test_reconstruction_on_a_fixed_batch_of_4_reads_each_sample_once(tmp_path):
    from onnxcompress.config import PruneConfig
    from onnxcompress.passes.prune import prune_model

    model = tiny_cnn(batch=4, channels=16)
    np.savez(tmp_path / "d.npz", input=np.random.default_rng(5).standard_normal((10, 1, 8, 8)).astype(np.float32))
    ds = load_data(tmp_path / "d.npz", input_specs(model))
    pruned, rec = prune_model(model, PruneConfig(enabled=True, ratio=0.5), calibration=list(ds.feeds(64)))
    rc = rec.stats["reconstruct"]
    assert rc["samples"] == 10 and rc["refit"] >= 1
    assert run_dataset(make_session(pruned), ds)["logits"].shape == (10, 3)


def test_accuracy_passes_on_a_fixed_batch_of_4(tmp_path):
    """Bias correction, SmoothQuant and layer SQNR read the padded runs of a fixed batch without crashing or
    counting the padding."""
    from onnxcompress.config import QuantConfig
    from onnxcompress.evaluate.layers import layer_sqnr
    from onnxcompress.quant.qdq import quantize

    model = tiny_cnn(batch=4)
    x = np.random.default_rng(6).standard_normal((10, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=x)
    ds = load_data(tmp_path / "d.npz", input_specs(model))
    q, rec = quantize(model, ds, QuantConfig(mode="static", bias_correction=True, smooth_quant=0.5))
    assert rec.stats["calibration"]["samples"] == 10
    out = run_dataset(make_session(q), ds)["logits"]
    assert _cos(out, run_ort(tiny_cnn(batch="N"), {"input": x})[0]) > 0.98
    rows = layer_sqnr(model, q, ds, samples=10)
    assert rows and all(np.isfinite(r["sqnr_db"]) or r["sqnr_db"] > 0 for r in rows)


def test_a_folder_gives_one_const_value_per_file(vad, tmp_path):
    d, x, state = vad
    (tmp_path / "f").mkdir()
    np.savez(tmp_path / "f" / "a.npz", x=x[:5], state=state[:, :5], sr=np.int64(8000))
    np.savez(tmp_path / "f" / "b.npz", x=x[5:], state=state[:, 5:], sr=np.int64(16000))
    ds = load_data(tmp_path / "f", model_layout(onnx.load(str(d / "m.onnx")), ["state:1"]))
    out = run_dataset(make_session(d / "m.onnx"), ds, batch_size=4)
    ref = [run_ort(d / "m.onnx", {"x": x[s], "state": state[:, s], "sr": np.array(sr, np.int64)})
           for s, sr in ((slice(0, 5), 8000), (slice(5, 12), 16000))]
    np.testing.assert_allclose(out["prob"], np.concatenate([r[0] for r in ref]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["state_out"], np.concatenate([r[1] for r in ref], axis=1), rtol=1e-5, atol=1e-6)
