"""prune -> distill -> export -> ONNX channel removal, end to end on tiny models."""
import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from conftest import run_ort  # noqa: E402
from train_nets import InvRes, TwoHeads  # noqa: E402

from onnxcompress.config import ExportConfig, TrainConfig  # noqa: E402
from onnxcompress.errors import InputError  # noqa: E402
from onnxcompress.export import TensorSpec  # noqa: E402
from onnxcompress.train.run import prune_and_distill  # noqa: E402

torch.set_num_threads(2)
TS = ExportConfig(exporter="torchscript")


def _x(n=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 6, 6)).astype(np.float32)


def test_iterative_schedule_exports_and_removes_exactly(tmp_path):
    net = InvRes().eval()
    x = _x()
    cfg = TrainConfig(enabled=True, ratio=0.5, steps=2, epochs=1, batch_size=16, align=4, min_channels=4)
    rec = prune_and_distill(net, [TensorSpec("input", (1, 1, 6, 6))], x, tmp_path / "p.onnx", cfg, export_config=TS)
    s = rec.stats
    assert [st["ratio"] for st in s["steps"]] == [0.25, 0.5]
    assert s["steps"][0]["weight_sparsity"] < s["steps"][1]["weight_sparsity"]
    m = onnx.load(str(tmp_path / "p.onnx"))
    dw = [n for n in m.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert dw and all(next(a.i for a in n.attribute if a.name == "group") < 32 for n in dw)  # depthwise shrunk
    assert s["params_after"] < s["params_before"] and s["onnx_removal"]["groups_removed"] > 0
    assert {"teacher_metric", "pruned_no_finetune_metric", "final_metric"} <= set(s)
    assert run_ort(tmp_path / "p.onnx", {"input": _x(5, seed=9)})[0].shape == (5, 3)
    assert s["export"]["max_abs_error"] < 1e-4


def test_multi_input_mse_model(tmp_path):
    net = TwoHeads().eval()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((48, 1, 5, 5)).astype(np.float32), rng.standard_normal((48, 5)).astype(np.float32)]
    cfg = TrainConfig(enabled=True, ratio=0.5, epochs=1, batch_size=16, loss="mse", align=4, min_channels=4)
    specs = [TensorSpec("img", (1, 1, 5, 5)), TensorSpec("feats", (1, 5))]
    rec = prune_and_distill(net, specs, xs, tmp_path / "t.onnx", cfg, export_config=TS)
    assert rec.stats["metric"].startswith("fidelity")
    assert rec.stats["final_metric"] >= rec.stats["pruned_no_finetune_metric"] - 1e-6
    outs = run_ort(tmp_path / "t.onnx", {"img": xs[0][:3], "feats": xs[1][:3]})
    assert [o.shape for o in outs] == [(3, 2, 5, 5), (3, 4)]
    with pytest.raises(InputError, match="one array per --input"):
        prune_and_distill(net, specs, xs[:1], tmp_path / "u.onnx", cfg, export_config=TS)

