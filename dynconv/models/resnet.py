"""torchvision-style ResNet-18/34 with a choice of stem and an optional `DynamicConv2D` stem conv.

One `ResNet` class; the registered variants differ only in arguments. The stem and the dynamic conv
are independent switches so their effects (on accuracy and on FLOPs) can be measured separately:
the seed changed both at once (see docs/flops.md).

Reference: He et al., "Deep Residual Learning for Image Recognition", 2016.

Imports only torch, `dynconv.layers` and the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from dynconv.layers.dense import DenseBlock
from dynconv.layers.dynamic_conv import ChannelSpec, DynamicConv2D, require_full_input
from dynconv.models.registry import register_model


class Stem(NamedTuple):
    """The first conv (→ BN → ReLU) and whether a 3×3 stride-2 max-pool follows it."""

    kernel_size: int
    stride: int
    padding: int
    max_pool: bool


STEMS: dict[str, Stem] = {
    # torchvision/ImageNet: 84×84 → 42×42 → 21×21 after the pool; layer4 runs at 3×3.
    "imagenet": Stem(7, 2, 3, True),
    # CIFAR-style (He et al. §4.2) for small images: no downsampling, 84×84 reaches layer1 intact.
    "small": Stem(3, 1, 1, False),
    # The seed's dynamic ResNet-18, inferred from its FLOP count (reproduced exactly, docs/flops.md):
    # its DynamicConv2D kept stride 1 and padding 1 with the 7×7 kernel, so 84×84 → 80×80 → 40×40.
    "seed": Stem(7, 1, 1, True),
}
DEFAULT_STEM = "imagenet"
"""The stem a ResNet gets when its spec names none (torchvision's 7x7 stride-2 conv and max-pool)."""


class BasicBlock(nn.Module):
    """Two 3×3 convs with a shortcut (1×1 conv + BN when the shape changes), as in torchvision."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNet(nn.Module):
    """ResNet with BasicBlocks; `layers` gives the blocks per stage ((2,2,2,2) is ResNet-18).

    `stem` is a key of `STEMS`. `dynamic=True` replaces the stem conv with a `DynamicConv2D` over
    `in_chans` slots (`dynamic_rescale` is its `rescale_missing`); `forward(x, channels)` then
    accepts any channel subset. A plain model needs all `in_chans` channels.
    `zero_init_residual` zeroes each block's last BN scale (Goyal et al., 2017), as torchvision offers.
    `width` is the first stage's channel count (64 in the paper; stages double it); narrow widths give
    laptop-sized models for the quickstart and tests.
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_classes: int = 50,
        in_chans: int = 3,
        stem: str = DEFAULT_STEM,
        dynamic: bool = False,
        dynamic_rescale: bool = True,
        zero_init_residual: bool = False,
        width: int = 64,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
        spec = STEMS[stem]
        self.dynamic = dynamic
        self.max_in_channels = in_chans
        self.stem = DenseBlock(
            in_chans,
            width,
            spec.kernel_size,
            spec.stride,
            spec.padding,
            dynamic=dynamic,
            rescale_missing=dynamic_rescale,
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1) if spec.max_pool else nn.Identity()
        widths = (width, 2 * width, 4 * width, 8 * width)
        stages, in_planes = [], width
        for i, (planes, blocks) in enumerate(zip(widths, layers, strict=True)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(in_planes, planes, stride)]
            stage += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d | DynamicConv2D):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor, channels: ChannelSpec = None) -> torch.Tensor:
        if self.dynamic:
            x = self.stem(x, channels)
        else:
            require_full_input(
                x, channels, self.max_in_channels, getattr(self, "model_args", {}).get("name", "ResNet")
            )
            x = self.stem(x)
        x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def resnet18(**kwargs) -> ResNet:
    """ResNet-18; `stem="imagenet"|"small"|"seed"`."""
    return ResNet((2, 2, 2, 2), **kwargs)


@register_model
def resnet34(**kwargs) -> ResNet:
    """ResNet-34; `stem="imagenet"|"small"|"seed"`."""
    return ResNet((3, 4, 6, 3), **kwargs)


@register_model
def resnet18_dynamic(**kwargs) -> ResNet:
    """ResNet-18 whose stem conv is a DynamicConv2D over 3 slots (the seed's Part I model)."""
    return ResNet((2, 2, 2, 2), dynamic=True, **kwargs)


@register_model
def resnet34_dynamic(**kwargs) -> ResNet:
    """ResNet-34 whose stem conv is a DynamicConv2D over 3 slots."""
    return ResNet((3, 4, 6, 3), dynamic=True, **kwargs)
