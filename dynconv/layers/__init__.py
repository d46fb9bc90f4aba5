"""Building blocks: the channel-flexible conv, the seed's dense blocks, SAGAN self-attention.

Layers import only torch (and each other); never Ray, MLflow or the rest of dynconv.
"""

from dynconv.layers.attention import SelfAttention2d
from dynconv.layers.dense import RRDB, DenseBlock
from dynconv.layers.dynamic_conv import DynamicConv2D

__all__ = ["RRDB", "DenseBlock", "DynamicConv2D", "SelfAttention2d"]
