"""The seed's `DenseBlock` (conv → BatchNorm → ReLU) and its residual dense block `RRDB`.

Naming follows the seed, not DenseNet/ESRGAN: the seed's "DenseBlock" is a single conv unit, and its
"RRDB" is one residual *dense* block (ESRGAN's RDB) — ESRGAN's RRDB nests three such blocks inside a
further residual. The differences from ESRGAN are constructor arguments, see `RRDB`.

Reference: Wang et al., "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks", 2018.

Imports only torch and `dynconv.layers.dynamic_conv`.
"""

from __future__ import annotations

import torch
from torch import nn

from dynconv.layers.dynamic_conv import ChannelSpec, DynamicConv2D

ESRGAN_RESIDUAL_SCALE = 0.2
"""ESRGAN scales each dense block's residual by 0.2 before adding it (residual scaling, §3.2)."""

ESRGAN_LEAKY_SLOPE = 0.2
"""Negative slope of the LeakyReLU used throughout ESRGAN."""

ACTIVATIONS = ("relu", "leaky_relu")


def make_activation(name: str) -> nn.Module:
    """`"relu"` (the seed) or `"leaky_relu"` with ESRGAN's slope 0.2."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(ESRGAN_LEAKY_SLOPE, inplace=True)
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


class DenseBlock(nn.Module):
    """conv → BatchNorm → activation: the seed's basic unit (its name, despite DenseNet's usage).

    `padding=None` keeps the spatial size ("same" padding, kernel_size // 2). The conv has no bias when
    BatchNorm follows (BatchNorm's shift makes it redundant). `dynamic=True` makes the conv a
    `DynamicConv2D` over `in_channels` slots, so the block can be a model's first layer and
    `forward(x, channels)` accepts any channel subset; `rescale_missing` is passed to it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        norm: bool = True,
        activation: str = "relu",
        dynamic: bool = False,
        rescale_missing: bool = True,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.dynamic = dynamic
        if dynamic:
            self.conv: nn.Module = DynamicConv2D(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                bias=not norm,
                rescale_missing=rescale_missing,
            )
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor, channels: ChannelSpec = None) -> torch.Tensor:
        if self.dynamic:
            x = self.conv(x, channels)
        elif channels is not None:
            raise ValueError("channels can only be given to a DenseBlock built with dynamic=True")
        else:
            x = self.conv(x)
        return self.act(self.bn(x))


class RRDB(nn.Module):
    """The seed's residual-in-residual dense block: dense layers, a fusing conv, a residual add.

    Layer i (a `DenseBlock`, `kernel_size`, `growth` output channels) sees the concatenation of the
    input and every earlier layer's output; a `fuse_kernel_size` conv maps the whole concatenation
    (channels + num_layers·growth) back to `channels`, followed by the activation when
    `fuse_activation`; the result, times `residual_scale`, is added to the input.

    Defaults are the seed's; ESRGAN's RDB differs in each explicit argument (see `RRDB.esrgan`):

    ==================  ============  ==============================
    argument            seed          ESRGAN RDB
    ==================  ============  ==============================
    num_layers          3             4 (+ the fusing conv = 5 convs)
    norm                True (BN)     False (BN removed, §3.1)
    activation          "relu"        "leaky_relu" (slope 0.2)
    fuse_kernel_size    1             3
    fuse_activation     True          False
    residual_scale      1.0           0.2
    ==================  ============  ==============================

    The seed does not state the fusing conv's kernel; its FLOP count (docs/flops.md) implies 1×1.
    """

    def __init__(
        self,
        channels: int,
        growth: int = 32,
        num_layers: int = 3,
        kernel_size: int = 3,
        fuse_kernel_size: int = 1,
        norm: bool = True,
        activation: str = "relu",
        fuse_activation: bool = True,
        residual_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.residual_scale = residual_scale
        self.layers = nn.ModuleList(
            DenseBlock(channels + i * growth, growth, kernel_size, norm=norm, activation=activation)
            for i in range(num_layers)
        )
        width = channels + num_layers * growth
        self.fuse = nn.Conv2d(width, channels, fuse_kernel_size, padding=fuse_kernel_size // 2)
        self.fuse_act = make_activation(activation) if fuse_activation else nn.Identity()

    @classmethod
    def esrgan(cls, channels: int, growth: int = 32) -> RRDB:
        """ESRGAN's residual dense block (RDB): 5 convs, no BN, LeakyReLU 0.2, residual × 0.2."""
        return cls(
            channels,
            growth,
            num_layers=4,
            fuse_kernel_size=3,
            norm=False,
            activation="leaky_relu",
            fuse_activation=False,
            residual_scale=ESRGAN_RESIDUAL_SCALE,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        residual = self.fuse_act(self.fuse(torch.cat(features, dim=1)))
        return x + self.residual_scale * residual
