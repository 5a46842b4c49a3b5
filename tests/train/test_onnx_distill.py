"""prune-distill for an ONNX source: prune in ONNX, train the pruned graph in torch, write it back, keep the best."""
import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from conftest import run_ort, tiny_cnn  # noqa: E402

from onnxcompress.cli import main  # noqa: E402
from onnxcompress.cli.train_onnx import parse_duration  # noqa: E402
from onnxcompress.config import PruneConfig, TrainConfig  # noqa: E402
from onnxcompress.errors import ConfigError  # noqa: E402
from onnxcompress.passes.prune import prune_model  # noqa: E402
from onnxcompress.train.from_onnx import to_torch  # noqa: E402
from onnxcompress.train.onnx_distill import (agreement_kl, augment, distill_graph, load_checkpoint,  # noqa: E402
                                             prune_distill_onnx)

torch.set_num_threads(1)  # a shared, loaded machine: one thread avoids lock-step waits


def _data(n=96, seed=0):
    return {"input": np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)}


def test_agreement_and_kl_by_hand():
    t = np.array([[2.0, 0.0], [0.0, 1.0]])
    assert agreement_kl(t, t) == (100.0, 0.0)
    s = np.array([[2.0, 0.0], [1.0, 0.0]])
    agree, kl = agreement_kl(s, t)
    pt = np.exp(t[1]) / np.exp(t[1]).sum()
    ps = np.exp(s[1]) / np.exp(s[1]).sum()
    assert agree == 50.0
    assert kl == pytest.approx(float((pt * np.log(pt / ps)).sum()) / 2)


def test_augment_keeps_shape_and_changes_pixels():
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    y = augment(x, np.random.default_rng(1))
    assert y.shape == x.shape and y.dtype == x.dtype and not np.allclose(x, y)
    assert augment(x[:, :, :, 0], np.random.default_rng(1)) is not None  # other ranks pass through


def test_distill_moves_the_pruned_graph_towards_the_teacher_and_writes_it_back(tmp_path):
    teacher = tiny_cnn(channels=16)
    xs, val = _data(), _data(48, 1)
    student, _ = prune_model(teacher, PruneConfig(enabled=True, ratio=0.5, align=1, min_channels=1, reconstruct=False))
    cfg = TrainConfig(enabled=True, epochs=12, batch_size=32, lr=1e-2, temperature=1.0, augment=False,
                      evaluations=3, checkpoint_dir=str(tmp_path / "ck"))
    out, stats = distill_graph(teacher, student, xs, val, cfg)
    assert stats["best_agreement"] >= stats["start_agreement"] and stats["best_kl"] < stats["start_kl"]
    # the written graph is the student's graph with new weights, and computes what the kept torch state computes
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in student.graph.node]
    _, kl_written = agreement_kl(run_ort(out, val)[0], run_ort(teacher, val)[0])
    assert kl_written == pytest.approx(stats["best_kl"], rel=1e-4)
    assert stats["max_error_vs_torch"] < 1e-5
    # checkpoints: plain tensors keyed by ONNX initializer names, loadable with weights_only=True
    history = json.loads((tmp_path / "ck" / "history.json").read_text())
    assert len(history) == 4 and history[0]["step"] == 0
    module = to_torch(student)
    load_checkpoint(module, tmp_path / "ck" / "best.pt")
    with torch.no_grad():
        got = module(torch.from_numpy(val["input"])).numpy()
    np.testing.assert_allclose(got, run_ort(out, val)[0], rtol=1e-5, atol=1e-5)


def test_never_returns_a_student_worse_than_its_start_on_the_held_out_data():
    """A student equal to its teacher (100% agreement, KL 0) trained at a destructive learning rate: every
    evaluated state is worse, so the start state is the one written back, weight for weight."""
    teacher = tiny_cnn(channels=16)
    cfg = TrainConfig(enabled=True, epochs=2, batch_size=32, lr=5.0, temperature=1.0, augment=False, evaluations=2)
    out, stats = distill_graph(teacher, teacher, _data(), _data(48, 1), cfg)
    assert stats["start_agreement"] == 100.0 and stats["best_agreement"] == 100.0
    assert any(h["val_kl"] > 0 for h in stats["history"][1:])  # training did move it (and was worse)
    before = {i.name: onnx.numpy_helper.to_array(i) for i in teacher.graph.initializer}
    for i in out.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(i), before[i.name])


def test_time_budget_stops_training(tmp_path):
    teacher = tiny_cnn(channels=16)
    cfg = TrainConfig(enabled=True, epochs=10**6, batch_size=16, time_budget=1.0, augment=False, evaluations=2)
    out, stats = prune_distill_onnx(teacher, _data(), PruneConfig(enabled=True, ratio=0.5, align=1, min_channels=1),
                                    cfg, calibration_samples=32)
    assert stats.stats["distill"]["seconds"] < 30 and stats.stats["distill"]["steps"] >= 1
    assert stats.stats["macs_after"] < stats.stats["macs_before"]
    onnx.checker.check_model(out, full_check=True)


def test_parse_duration():
    assert parse_duration("30m") == 1800 and parse_duration("90s") == 90 and parse_duration("1h") == 3600
    assert parse_duration("12") == 12 and parse_duration(None) is None
    with pytest.raises(ConfigError, match="30m"):
        parse_duration("soon")


def test_cli_prune_distill_onnx_source(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save_model(tiny_cnn(channels=16), str(src))
    np.savez(tmp_path / "d.npz", **_data())
    out = tmp_path / "p.onnx"
    r = CliRunner().invoke(main, ["prune-distill", str(src), "--data", str(tmp_path / "d.npz"), "--ratio", "0.5",
                                  "--align", "1", "--min-channels", "1", "--time-budget", "2s", "--lr", "0.01",
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "held-out samples: pruned" in r.stdout and "MACs" in r.stdout
    assert run_ort(out, {"input": _data(2)["input"]})[0].shape == (2, 3)
    # bad input: one line, exit 2, nothing written
    bad = CliRunner().invoke(main, ["prune-distill", str(src), "--data", str(tmp_path / "d.npz"), "--time-budget",
                                    "soon", "-o", str(tmp_path / "q.onnx")])
    assert bad.exit_code == 2 and not (tmp_path / "q.onnx").exists()
    assert "--time-budget 'soon'" in bad.output and "Traceback" not in bad.output


def test_cli_trains_a_given_pruned_student(tmp_path):
    teacher = tiny_cnn(channels=16)
    src, stu = tmp_path / "m.onnx", tmp_path / "s.onnx"
    onnx.save_model(teacher, str(src))
    pruned, _ = prune_model(teacher, PruneConfig(enabled=True, ratio=0.5, align=1, min_channels=1, reconstruct=False))
    onnx.save_model(pruned, str(stu))
    np.savez(tmp_path / "d.npz", **_data())
    out = tmp_path / "p.onnx"
    r = CliRunner().invoke(main, ["prune-distill", str(src), "--student", str(stu), "--data", str(tmp_path / "d.npz"),
                                  "--epochs", "2", "--batch-size", "16", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["stats"]["prune"] == {"student": "given (already pruned)"}
    written = onnx.load(str(out))
    assert [i.dims for i in written.graph.initializer] == [i.dims for i in pruned.graph.initializer]
    # a student of another model is refused in one line
    other = tiny_cnn(channels=16)
    other.graph.output[0].name = "other"
    other.graph.node[-1].output[0] = "other"
    onnx.save_model(other, str(tmp_path / "o.onnx"))
    bad = CliRunner().invoke(main, ["prune-distill", str(src), "--student", str(tmp_path / "o.onnx"), "--data",
                                    str(tmp_path / "d.npz"), "--epochs", "1", "-o", str(tmp_path / "q.onnx")])
    assert bad.exit_code == 2 and "--student" in bad.output and not (tmp_path / "q.onnx").exists()
