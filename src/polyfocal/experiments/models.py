"""Models for ``polyfocal compare``: an MLP (digits, synthetic) and a ResNet-18-style CNN (image folders).

Written here because torchvision is not a dependency.  The ResNet-18 follows He et al. (2016): a stem,
four stages of two basic blocks (64, 128, 256, 512 channels at ``width=64``), global average pooling and a
linear head.  For small images the stem is a 3x3 convolution without max-pooling (the CIFAR variant);
``stem="imagenet"`` gives the 7x7 stride-2 convolution and max-pool of the original.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "ResNet18", "build_model"]


class MLP(nn.Sequential):
    """``in_features -> hidden... -> num_classes`` with ReLU between the linear layers."""

    def __init__(self, *, in_features: int, num_classes: int, hidden: Sequence[int] = (128, 128)) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (basic blocks ``[2, 2, 2, 2]``); ``width`` scales the channels (64 = the original).

    Example:
        >>> import torch
        >>> from polyfocal.experiments.models import ResNet18
        >>> ResNet18(num_classes=5, width=8)(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 5])
    """

    def __init__(self, *, num_classes: int, in_channels: int = 3, width: int = 64, stem: str = "cifar") -> None:
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        elif stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
            )
        else:
            raise ValueError(f"expected stem 'cifar' or 'imagenet', got {stem!r}")
        blocks, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for j in range(2):
                blocks.append(_BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build_model(name: str, *, input_shape: Sequence[int], num_classes: int, width: int = 64) -> nn.Module:
    """``"mlp"`` (flattened input) or ``"resnet18"`` (``(C, H, W)`` images; ImageNet stem from 96 px up)."""
    if name == "mlp":
        features = 1
        for s in input_shape:
            features *= int(s)
        return nn.Sequential(nn.Flatten(), MLP(in_features=features, num_classes=num_classes))
    if name == "resnet18":
        if len(input_shape) != 3:
            raise ValueError(f"expected image input (C, H, W) for resnet18, got shape {tuple(input_shape)}")
        stem = "imagenet" if input_shape[-1] >= 96 else "cifar"
        return ResNet18(num_classes=num_classes, in_channels=int(input_shape[0]), width=width, stem=stem)
    raise ValueError(f"expected model 'mlp' or 'resnet18', got {name!r}")
