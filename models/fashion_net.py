"""FashionNet: a small CNN for Fashion-MNIST (1x28x28 -> 10 classes) with the structure real deployment
models have: residual basic blocks (with a 1x1 downsample shortcut), BatchNorm, and MobileNetV2-style
inverted residual blocks (1x1 expand -> 3x3 depthwise -> 1x1 project, residual). Pure torch, no torchvision.

Input: float32 NCHW, normalized as (pixel / 255 - 0.2860) / 0.3530.
"""
from __future__ import annotations

import torch
from torch import nn

MEAN, STD = 0.2860, 0.3530


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn + shortcut (1x1 conv-bn when the shape changes), relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, 1, relu=False)
        self.shortcut = conv_bn(cin, cout, 1, stride, relu=False) if (stride != 1 or cin != cout) else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 project (linear), residual add."""

    def __init__(self, channels: int, expand: int):
        super().__init__()
        hidden = channels * expand
        self.expand = conv_bn(channels, hidden, 1)
        self.depthwise = conv_bn(hidden, hidden, 3, groups=hidden)
        self.project = conv_bn(hidden, channels, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


class FashionNet(nn.Module):
    def __init__(self, width: int = 24, num_classes: int = 10):
        super().__init__()
        w = width
        self.stem = conv_bn(1, w, 3)                      # 28x28
        self.stage1 = BasicBlock(w, 2 * w, stride=2)      # 14x14
        self.stage2 = InvertedResidual(2 * w, expand=4)   # 14x14, depthwise
        self.stage3 = BasicBlock(2 * w, 4 * w, stride=2)  # 7x7
        self.stage4 = InvertedResidual(4 * w, expand=2)   # 7x7, depthwise
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stem(x)))))
        return self.fc(self.flatten(self.pool(x)))


def build(width: int = 24) -> FashionNet:
    """Factory used by `onnxcompress export models/fashion_net.py:build`."""
    return FashionNet(width=width)
