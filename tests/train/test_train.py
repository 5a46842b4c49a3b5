import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from conftest import run_ort  # noqa: E402
from onnxcompress.cli import main  # noqa: E402
from onnxcompress.config import TrainConfig  # noqa: E402
from onnxcompress.export import TensorSpec  # noqa: E402
from onnxcompress.train.distill import distill, kd_loss  # noqa: E402
from onnxcompress.train.prune import structured_masks, unstructured_masks  # noqa: E402
from onnxcompress.train.run import prune_and_distill  # noqa: E402

nn = torch.nn


class Res(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.c1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.c2(self.c1(x)))
        return self.fc(x.mean((2, 3)))


def zero_rows(w):
    return {i for i in range(w.shape[0]) if not w[i].abs().sum()}


def test_structured_masks_couple_residual_channels_and_zero_bn():
    net = Res()
    masks, summary = structured_masks(net, (torch.randn(1, 1, 6, 6),), 0.5, align=4, min_channels=4)
    masks.apply(net)
    stream_stem, stream_c2 = zero_rows(net.stem[0].weight), zero_rows(net.c2[0].weight)
    assert stream_stem and stream_stem == stream_c2  # the residual stream is pruned in every branch
    assert all(net.stem[1].weight[i] == 0 and net.stem[1].bias[i] == 0 for i in stream_stem)
    inner = zero_rows(net.c1[0].weight)
    assert len(inner) % 4 == 0 and 16 - len(inner) >= 4
    assert zero_rows(net.fc.weight) == set()  # logits reach the graph output


def test_masked_model_exports_and_shrinks_exactly(tmp_path):
    net = Res().eval()
    x = np.random.default_rng(0).standard_normal((64, 1, 6, 6)).astype(np.float32)
    cfg = TrainConfig(enabled=True, ratio=0.5, epochs=1, batch_size=16, align=4, min_channels=4)
    rec = prune_and_distill(net, [TensorSpec("input", (1, 1, 6, 6))], x, tmp_path / "p.onnx", cfg, show=None)
    m = onnx.load(str(tmp_path / "p.onnx"))
    conv_out = [tuple(i.dims)[0] for i in m.graph.initializer if len(i.dims) == 4]
    assert max(conv_out) < 16  # channels physically removed
    assert rec.stats["onnx_removal"]["params_after"] < rec.stats["onnx_removal"]["params_before"]
    assert {"teacher_metric", "pruned_no_finetune_metric", "final_metric"} <= set(rec.stats)


def test_masks_stay_zero_while_fine_tuning():
    teacher, student = Res().eval(), Res()
    masks, _ = structured_masks(student, (torch.randn(1, 1, 6, 6),), 0.5, align=4, min_channels=4)
    masks.apply(student)
    before = zero_rows(student.c1[0].weight)
    x = np.random.default_rng(1).standard_normal((64, 1, 6, 6)).astype(np.float32)
    distill(student, teacher, x, None, TrainConfig(epochs=2, batch_size=16, lr=1e-2), masks, show=None)
    assert zero_rows(student.c1[0].weight) == before and before


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[2.0, 0.0, 1.0]])
    temp = 2.0
    p = torch.softmax(t / temp, -1)
    q = torch.log_softmax(s / temp, -1)
    expected = float((p * (p.log() - q)).sum()) * temp * temp
    assert float(kd_loss(s, t, temp)) == pytest.approx(expected, rel=1e-6)
    ce = float(torch.nn.functional.cross_entropy(s, torch.tensor([1])))
    assert float(kd_loss(s, t, temp, torch.tensor([1]), alpha=0.25)) == pytest.approx(0.75 * expected + 0.25 * ce, rel=1e-6)
    assert float(kd_loss(s, t, temp, kind="mse")) == pytest.approx(float(((s - t) ** 2).mean()))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_sparsity(scope):
    net = Res()
    masks = unstructured_masks(net, 0.6, scope)
    masks.apply(net)
    assert masks.sparsity() == pytest.approx(0.6, abs=0.01)
    if scope == "layer":
        w = net.c1[0].weight
        assert float((w == 0).float().mean()) == pytest.approx(0.6, abs=0.01)


def test_prune_distill_cli(tmp_path):
    f = tmp_path / "net.py"
    f.write_text("import torch\nfrom test_train import Res\ndef build():\n    return Res()\n")
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    np.savez(tmp_path / "d.npz", input=np.random.default_rng(2).standard_normal((48, 1, 6, 6)).astype(np.float32))
    r = CliRunner().invoke(main, ["prune-distill", f"{f}:build", "--input", "input:Nx1x6x6", "--data", str(tmp_path / "d.npz"),
                                  "--epochs", "1", "--batch-size", "16", "-o", str(tmp_path / "o.onnx"), "--json"])
    assert r.exit_code == 0, r.output
    x = np.zeros((2, 1, 6, 6), np.float32)
    assert run_ort(tmp_path / "o.onnx", {"input": x})[0].shape == (2, 4)
    bad = CliRunner().invoke(main, ["prune-distill", "nope:build", "--input", "input:Nx1x6x6", "--data",
                                    str(tmp_path / "d.npz"), "-o", str(tmp_path / "b.onnx")])
    assert bad.exit_code == 2 and "cannot import module" in bad.stderr and not (tmp_path / "b.onnx").exists()
