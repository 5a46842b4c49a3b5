import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train_nets import InvRes, Res, TwoHeads  # noqa: E402

import onnxcompress.train.distill as D  # noqa: E402
from onnxcompress.config import TrainConfig  # noqa: E402
from onnxcompress.errors import InputError  # noqa: E402
from onnxcompress.train.prune import structured_masks, unstructured_masks  # noqa: E402

torch.set_num_threads(2)


def test_kd_loss_against_hand_computation():
    s = [1.0, 2.0, 0.5]
    t = [2.0, 0.0, 1.0]
    T = 2.0

    def softmax(v):
        e = [math.exp(a / T) for a in v]
        return [a / sum(e) for a in e]

    p, q = softmax(t), softmax(s)
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) * T * T  # KL(teacher || student) * T^2
    got = float(D.kd_loss(torch.tensor([s]), torch.tensor([t]), T))
    assert got == pytest.approx(kl, rel=1e-6)
    ce = -math.log(math.exp(s[1]) / sum(math.exp(a) for a in s))
    mixed = float(D.kd_loss(torch.tensor([s]), torch.tensor([t]), T, torch.tensor([1]), alpha=0.25))
    assert mixed == pytest.approx(0.75 * kl + 0.25 * ce, rel=1e-6)
    mse = sum((a - b) ** 2 for a, b in zip(s, t)) / 3
    assert float(D.kd_loss(torch.tensor([s]), torch.tensor([t]), T, kind="mse")) == pytest.approx(mse, rel=1e-6)
    # a batch is averaged over samples: two copies give the same value
    assert float(D.kd_loss(torch.tensor([s, s]), torch.tensor([t, t]), T)) == pytest.approx(kl, rel=1e-6)


def test_kd_loss_is_zero_only_at_the_teacher():
    t = torch.randn(4, 5)
    assert float(D.kd_loss(t.clone(), t, 3.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(D.kd_loss(t + torch.randn(4, 5), t, 3.0)) > 1e-3


def _data(n=96, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 1, 6, 6)).astype(np.float32)


@pytest.mark.parametrize("structured", [True, False])
def test_masks_stay_zero_after_fine_tuning(structured):
    # InvRes: the pruned project-BN channels feed the residual sum with no ReLU before the head, so their
    # beta gets a gradient and only the re-applied mask keeps it at zero
    cls = InvRes if structured else Res
    teacher, student = cls().eval(), cls()
    if structured:
        masks, _ = structured_masks(student, (torch.randn(1, 1, 6, 6),), 0.5, align=4, min_channels=4)
    else:
        masks = unstructured_masks(student, 0.7)
    masks.apply(student)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    D.distill(student, teacher, _data(), None, TrainConfig(epochs=2, batch_size=16, lr=1e-2, patience=5), masks, show=None)
    assert sum(int((~m).sum()) for m in masks.keep.values()) > 0
    for n, p in student.named_parameters():
        if n in masks.keep:
            assert not p[~masks.keep[n]].any()  # exactly zero after every optimizer step
    assert any(not torch.equal(before[n], p) for n, p in student.named_parameters())  # it did train


def test_distillation_moves_the_student_towards_the_teacher():
    teacher = Res().eval()
    student = Res()
    torch.manual_seed(5)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = _data(128, seed=3)
    before = D.evaluate(student, x, None, teacher)
    hist = D.distill(student, teacher, x, None, TrainConfig(epochs=3, batch_size=32, lr=5e-3, patience=3), None,
                     show=None)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert D.evaluate(student, x, None, teacher) > before


def test_mse_on_chosen_outputs_with_two_inputs():
    teacher = TwoHeads().eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.vec.weight.add_(1.0)
        student.map.weight.add_(1.0)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((64, 1, 5, 5)).astype(np.float32), rng.standard_normal((64, 5)).astype(np.float32)]
    cfg = TrainConfig(loss="mse", outputs=(1,), epochs=3, batch_size=16, lr=1e-2, patience=3)
    map_before = student.map.weight.detach().clone()
    fid_before = D.evaluate(student, xs, None, teacher, kind="mse", select=(1,))
    hist = D.distill(student, teacher, xs, None, cfg, None, show=None)
    assert D.evaluate(student, xs, None, teacher, kind="mse", select=(1,)) > fid_before
    assert torch.equal(student.map.weight, map_before)  # output 0 is not in the loss: its head gets no gradient
    assert all("val_metric" in h for h in hist)
    with pytest.raises(InputError, match="output index 5"):
        D.distill(student, teacher, xs, None, TrainConfig(loss="mse", outputs=(5,), epochs=1), None, show=None)


def test_early_stopping_restores_best_and_writes_checkpoints(tmp_path, monkeypatch):
    teacher, student = Res().eval(), Res()
    metrics = iter([50.0, 60.0, 55.0, 40.0, 70.0, 80.0])
    monkeypatch.setattr(D, "evaluate", lambda *a, **k: next(metrics))
    states = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, path: (states.append((str(path), copy.deepcopy(obj))), real_save(obj, path)))
    cfg = TrainConfig(epochs=6, batch_size=32, lr=1e-2, patience=2, checkpoint_dir=str(tmp_path / "ck"))
    hist = D.distill(student, teacher, _data(), None, cfg, None, show=None)
    assert [h["val_metric"] for h in hist] == [50.0, 60.0, 55.0, 40.0] and hist[-1].get("early_stop")
    best = torch.load(tmp_path / "ck" / "best.pt", weights_only=True)
    epoch2 = [s for p, s in states if p.endswith("best.pt")][-1]
    for k, v in student.state_dict().items():  # the epoch-2 state is restored and checkpointed
        assert torch.equal(v, best[k]) and torch.equal(v, epoch2[k])
    assert (tmp_path / "ck" / "last.pt").exists() and (tmp_path / "ck" / "history.json").exists()


def test_teacher_cache_gives_the_same_training(monkeypatch):
    teacher = Res().eval()
    x = _data(64)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-2)
    a, b = Res(), Res()
    D.distill(a, teacher, x, None, cfg, None, show=None)
    monkeypatch.setattr(D, "CACHE_BYTES", 0)
    assert D._teacher_cache(teacher, [x], ()) is None
    D.distill(b, teacher, x, None, cfg, None, show=None)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_labels_only_with_alpha_and_bad_inputs():
    teacher, student = Res().eval(), Res()
    x = _data(32)
    with pytest.raises(InputError, match="one label per sample"):
        D.distill(student, teacher, x, np.zeros(5, np.int64), TrainConfig(alpha=0.5, epochs=1), None, show=None)
    with pytest.raises(InputError, match="same number of samples"):
        D.as_inputs([x, x[:3]])
