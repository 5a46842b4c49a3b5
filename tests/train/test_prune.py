import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train_nets import InvRes, Res  # noqa: E402

from onnxcompress.errors import ExportError  # noqa: E402
from onnxcompress.train.prune import Masks, structured_masks, unstructured_masks, weight_sparsity  # noqa: E402

torch.set_num_threads(2)


def zero_rows(w):
    return {i for i in range(w.shape[0]) if not w[i].abs().sum()}


def test_depthwise_block_pruned_consistently_and_output_exactly_zero():
    net = InvRes().eval()
    masks, summary = structured_masks(net, (torch.randn(1, 1, 6, 6),), 0.5, align=4, min_channels=4)
    masks.apply(net)
    hidden = zero_rows(net.expand[0].weight)
    assert hidden and hidden == zero_rows(net.dw[0].weight)  # expand and depthwise channels are one group
    for bn in (net.expand[1], net.dw[1]):
        assert all(bn.weight[i] == 0 and bn.bias[i] == 0 for i in hidden)
        assert all(bn.weight[i] != 0 for i in set(range(32)) - hidden)  # kept channels untouched
    # the residual stream: stem (conv with bias, no BN) and project write it; pruned in both, bias too
    stream = zero_rows(net.stem[0].weight)
    assert stream == zero_rows(net.project[0].weight)
    assert all(net.stem[0].bias[i] == 0 and net.project[1].bias[i] == 0 for i in stream)
    # the pruned channels are exactly zero inside the network
    acts = {}
    net.dw.register_forward_hook(lambda m, i, o: acts.setdefault("dw", o))
    net(torch.randn(3, 1, 6, 6))
    assert torch.count_nonzero(acts["dw"][:, sorted(hidden)]) == 0
    assert torch.count_nonzero(acts["dw"][:, sorted(set(range(32)) - hidden)]) > 0


def test_coupled_residual_channels_exact_zero_pattern():
    net = Res()
    with torch.no_grad():  # make channels 0..7 of the residual stream clearly weakest in both writers
        net.stem[0].weight[:8] *= 0.01
        net.c2[0].weight[:8] *= 0.01
    masks, _ = structured_masks(net, (torch.randn(1, 1, 6, 6),), 0.5, scope="layer", align=4, min_channels=4)
    masks.apply(net)
    assert zero_rows(net.stem[0].weight) == zero_rows(net.c2[0].weight) == set(range(8))
    assert zero_rows(net.fc.weight) == set()
    assert masks.keep["stem.1.weight"].tolist() == [False] * 8 + [True] * 8


def test_iterative_masks_never_revive():
    net = Res()
    a, _ = structured_masks(net, (torch.randn(1, 1, 6, 6),), 0.25, align=4, min_channels=4)
    a.apply(net)
    with torch.no_grad():  # a pruned channel regrowing large must stay pruned after merging
        for p in net.parameters():
            p.add_(0.5)
    b, _ = structured_masks(net, (torch.randn(1, 1, 6, 6),), 0.5, align=4, min_channels=4)
    m = a.merge(b)
    for name in a.keep:
        assert not (m.keep[name] & ~a.keep[name]).any()
    assert m.sparsity() >= max(a.sparsity(), b.sparsity())


def test_unmappable_producer_keeps_its_group_whole():
    class FixedPlusLearned(torch.nn.Module):  # a fixed filter (a buffer, not a parameter) shares a stream
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.register_buffer("fixed", torch.randn(8, 1, 3, 3))
            self.a = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.b = torch.nn.Conv2d(1, 16, 3, padding=1)
            self.fc = torch.nn.Linear(24, 2)

        def forward(self, x):
            s = torch.nn.functional.conv2d(x, self.fixed, padding=1) + self.a(x)
            return self.fc(torch.cat([torch.relu(s), torch.relu(self.b(x))], 1).mean((2, 3)))

    net = FixedPlusLearned()
    with torch.no_grad():
        net.a.weight.mul_(0.001)  # the learned writer of the shared stream looks weakest
    masks, summary = structured_masks(net, (torch.randn(1, 1, 5, 5),), 0.5, align=1, min_channels=1)
    masks.apply(net)
    assert summary["kept_unmapped"]["groups"] == 8
    assert zero_rows(net.a.weight) == set()  # never half-pruned: the buffer cannot be masked
    assert len(zero_rows(net.b.weight)) >= 4  # the ordinary conv is pruned


def test_model_that_cannot_export_gives_one_line_error():
    class Bad(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no")

    with pytest.raises(ExportError, match="--unstructured"):
        structured_masks(Bad(), (torch.randn(1, 2),), 0.5)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_sparsity_hits_the_target(scope):
    net = Res()
    original = {n: p.detach().abs().clone() for n, p in net.named_parameters()}
    masks = unstructured_masks(net, 0.6, scope)
    masks.apply(net)
    assert masks.sparsity() == pytest.approx(0.6, abs=1e-3)
    assert weight_sparsity(net) == pytest.approx(0.6, abs=1e-3)
    per_layer = [float((p == 0).float().mean()) for n, p in net.named_parameters() if n in masks.keep]
    if scope == "layer":
        assert all(s == pytest.approx(0.6, abs=0.02) for s in per_layer)
    else:
        assert max(per_layer) - min(per_layer) > 0.05  # one threshold: layers end up different
        # what is pruned is the smallest |w| over all layers
        pruned = torch.cat([original[n][~m].flatten() for n, m in masks.keep.items()])
        kept = torch.cat([original[n][m].flatten() for n, m in masks.keep.items()])
        assert float(pruned.max()) <= float(kept.min())


def test_masks_apply_multiplies_only_masked():
    net = torch.nn.Linear(3, 2)
    m = Masks({"weight": torch.tensor([[True, False, True], [False, True, True]])})
    before = net.weight.detach().clone()
    bias = net.bias.detach().clone()
    m.apply(net)
    np.testing.assert_array_equal(net.weight.detach().numpy(), (before * m.keep["weight"]).numpy())
    assert torch.equal(net.bias, bias)
