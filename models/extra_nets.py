"""Two more Fashion-MNIST models for the quantization benchmark (pure torch, no torchvision).

MobileNetV2Fashion: depthwise-heavy (every block is 1x1 expand -> 3x3 depthwise -> 1x1 project,
ReLU6), the structure where per-tensor int8 weights fail (BatchNorm folding spreads depthwise
channel ranges). ViTFashion: a small vision transformer built from torch.nn.TransformerEncoder
(4x4 patches -> 49 tokens), the structure where static int8 on every op hurts.
Both take the bundled data as is: float32 [N, 1, 28, 28].
"""
from __future__ import annotations

import torch
from torch import nn


def _inverted_residual(cin: int, cout: int, stride: int, expand: int) -> nn.Sequential:
    mid = cin * expand
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
        nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
        nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
    )


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 6):
        super().__init__()
        self.body = _inverted_residual(cin, cout, stride, expand)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2Fashion(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        cfg = [(16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 32, 2), (32, 32, 1), (32, 32, 1)]
        self.blocks = nn.Sequential(*[_Block(a, b, s) for a, b, s in cfg])
        self.head = nn.Sequential(nn.Conv2d(32, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6())
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))


class ViTFashion(nn.Module):
    def __init__(self, num_classes: int = 10, dim: int = 96, depth: int = 4, heads: int = 4, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.tokens = (28 // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, p = x.shape[0], self.patch
        t = x.reshape(n, 28 // p, p, 28 // p, p).permute(0, 1, 3, 2, 4).reshape(n, self.tokens, p * p)
        h = self.encoder(self.embed(t) + self.pos)
        return self.fc(self.norm(h).mean(1))


BUILDERS = {"mbv2": MobileNetV2Fashion, "vit": ViTFashion}
