import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train_nets import InvRes, Res  # noqa: E402

from onnxcompress.config import TrainConfig  # noqa: E402
from onnxcompress.train.prune import structured_masks  # noqa: E402
from onnxcompress.train.run import finetune  # noqa: E402
from onnxcompress.train.shrink import shrink  # noqa: E402

torch.set_num_threads(2)
X = (torch.randn(1, 1, 6, 6),)


def _masked(net):
    masks, _ = structured_masks(net, X, 0.5, align=4, min_channels=4)
    masks.apply(net)
    return masks


@pytest.mark.parametrize("cls", [Res, InvRes])
def test_shrunk_copy_is_smaller_and_computes_the_same(cls):
    net = cls().eval()
    _masked(net)
    check = (torch.randn(8, 1, 6, 6),)
    sh, why = shrink(net, X, check)
    assert sh is not None, why
    n_small = sum(p.numel() for p in sh.module.parameters())
    assert n_small < 0.7 * sum(p.numel() for p in net.parameters())
    x = torch.randn(5, 1, 6, 6)
    torch.testing.assert_close(sh.module.eval()(x), net(x), rtol=1e-5, atol=1e-5)
    # scatter back: same state as the masked original
    back = copy.deepcopy(net)
    with torch.no_grad():
        for p in back.parameters():
            p.add_(1.0)
    sh.scatter_into(back)
    torch.testing.assert_close(back.eval()(x), net(x), rtol=1e-5, atol=1e-5)


def test_hard_coded_width_falls_back_to_masked_training():
    class Hard(Res):
        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(x + self.c2(self.c1(x)))
            return self.fc(x.mean((2, 3)).reshape(-1, 16))  # a channel count written into forward()

    net = Hard().eval()
    masks = _masked(net)
    sh, why = shrink(net, X, (torch.randn(4, 1, 6, 6),))
    assert sh is None and "does not run" in why
    x = np.random.default_rng(0).standard_normal((32, 1, 6, 6)).astype(np.float32)
    hist, how = finetune(net, Hard().eval(), [x], None, TrainConfig(epochs=1, batch_size=16), masks, [x], None)
    assert how.startswith("masked") and len(hist) == 1


def test_finetune_through_shrunk_copy_keeps_masks_and_trains():
    teacher, student = InvRes().eval(), InvRes()
    masks = _masked(student)
    before = copy.deepcopy(student.state_dict())
    x = np.random.default_rng(0).standard_normal((64, 1, 6, 6)).astype(np.float32)
    hist, how = finetune(student, teacher, [x], None, TrainConfig(epochs=2, batch_size=16, lr=1e-2, patience=3),
                         masks, [x], None)
    assert how.startswith("shrunk copy")
    params = dict(student.named_parameters())
    for name, keep in masks.keep.items():
        assert not params[name][~keep].any()
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert "expand.0.weight" in changed and "dw.1.running_mean" in changed
