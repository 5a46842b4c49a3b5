"""Tiny torch models for the torch-side tests (also importable as factories: train_nets.py:res)."""
import torch

nn = torch.nn


class Res(nn.Module):
    """stem -> residual block (c1, c2) -> GAP -> fc: stem and c2 write the same residual stream."""

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


class InvRes(nn.Module):
    """MobileNetV2 block: 1x1 expand -> BN -> ReLU -> 3x3 depthwise -> BN -> ReLU -> 1x1 project -> BN, + x."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())  # conv with bias, no BN
        self.expand = nn.Sequential(nn.Conv2d(8, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(32, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 3)
        for m in self.modules():  # non-trivial BN so that a forgotten beta would show
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.bias, 0.1, 0.5)
                nn.init.uniform_(m.weight, 0.5, 1.5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.fc(x.mean((2, 3)))


class TwoHeads(nn.Module):
    """Two inputs, two outputs (a regression map and a vector): for MSE distillation."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.a = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.b = nn.Linear(5, 16)
        self.map = nn.Conv2d(16, 2, 1)
        self.vec = nn.Linear(16, 4)

    def forward(self, img, feats):
        h = self.a(img) + self.b(feats)[:, :, None, None]
        return self.map(h), self.vec(h.mean((2, 3)))


def res():
    return Res()


def invres():
    return InvRes()
