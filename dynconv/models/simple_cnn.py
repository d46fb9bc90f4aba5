"""The seed's 5-layer network (its Part II answer to "reach 90 % of ResNet-34 in 4-6 layers").

(1) DenseBlock, 5×5 conv → `width` channels; (2) RRDB (3 dense layers, `growth` channels, 3×3, then a
fusing conv back to `width`), 2×2 max-pool; (3) SAGAN self-attention, adaptive average pool;
(4) dropout; (5) fully connected → num_classes. Every stage runs at full or half resolution, which is
why it costs ~13× ResNet-34 (docs/flops.md).

Imports only torch, `dynconv.layers` and the registry.
"""

from __future__ import annotations

import torch
from torch import nn

from dynconv.layers.attention import SAGAN_REDUCTION, SelfAttention2d
from dynconv.layers.dense import RRDB, DenseBlock
from dynconv.layers.dynamic_conv import ChannelSpec, require_full_input
from dynconv.models.registry import register_model


class SimpleCNN(nn.Module):
    """The seed's 5-layer CNN; defaults are the seed's (width 512, growth 32, 5×5 first conv).

    `dense_padding=None` pads the first conv to keep the size ("same"); the seed's FLOP count implies
    it used padding 1 (84 → 82, attention over 41×41 instead of 42×42 positions) — pass
    `dense_padding=1` to reproduce that. `dynamic=True` makes the first conv a `DynamicConv2D` over
    `in_chans` slots (`dynamic_rescale` is its `rescale_missing`).
    """

    def __init__(
        self,
        num_classes: int = 50,
        in_chans: int = 3,
        width: int = 512,
        growth: int = 32,
        dense_kernel: int = 5,
        dense_padding: int | None = None,
        rrdb_layers: int = 3,
        fuse_kernel: int = 1,
        attn_reduction: int = SAGAN_REDUCTION,
        dropout: float = 0.5,
        dynamic: bool = False,
        dynamic_rescale: bool = True,
    ) -> None:
        super().__init__()
        self.dynamic = dynamic
        self.max_in_channels = in_chans
        self.dense = DenseBlock(
            in_chans,
            width,
            dense_kernel,
            padding=dense_padding,
            dynamic=dynamic,
            rescale_missing=dynamic_rescale,
        )
        self.rrdb = RRDB(width, growth, num_layers=rrdb_layers, fuse_kernel_size=fuse_kernel)
        self.pool = nn.MaxPool2d(2)
        self.attn = SelfAttention2d(width, attn_reduction)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, channels: ChannelSpec = None) -> torch.Tensor:
        if self.dynamic:
            x = self.dense(x, channels)
        else:
            require_full_input(
                x, channels, self.max_in_channels, getattr(self, "model_args", {}).get("name", "SimpleCNN")
            )
            x = self.dense(x)
        x = self.pool(self.rrdb(x))
        x = self.avgpool(self.attn(x))
        return self.fc(self.dropout(torch.flatten(x, 1)))


@register_model
def simple_cnn(**kwargs) -> SimpleCNN:
    """The seed's 5-layer CNN (dense block, RRDB, self-attention, dropout, linear)."""
    return SimpleCNN(**kwargs)


@register_model
def simple_cnn_dynamic(**kwargs) -> SimpleCNN:
    """The 5-layer CNN with a DynamicConv2D as its first conv."""
    return SimpleCNN(dynamic=True, **kwargs)
