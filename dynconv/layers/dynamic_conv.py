"""`DynamicConv2D`: a 2-D convolution that accepts any subset of its input channel slots.

The layer owns a weight for `max_in_channels` input *slots* (for images: R, G, B). An input carrying
only some of them is convolved with the matching weight columns, so one trained stem serves RGB, RG,
RB, GB, R, G and B inputs. The seed always used the *first* C columns, so an "RB" image went through
the R and G weights; here the caller says which slots the input carries.

Imports only torch.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

ChannelSpec = Sequence[int] | torch.Tensor | None


class DynamicConv2D(nn.Module):
    """Conv2d over a variable subset of `max_in_channels` input slots.

    `forward(x, channels=None)` takes `channels` in one of three forms:

    * `None`: x carries the first C slots (the seed's behaviour), C = x.shape[1].
    * a sequence of slot indices, one per channel of x, in x's order: `channels=(0, 2)` says x is
      (R, B) and uses weight columns 0 and 2. A 1-D integer tensor is accepted too.
    * a boolean mask of shape (B, max_in_channels): per-sample subsets for channel-drop training.
      x then has all slots, absent ones zero-filled (the layer multiplies by the mask, so stale values
      in absent slots are ignored), and each sample's output equals what the index form gives for that
      sample's subset, rescaling included. Validating the mask costs nothing when it lives on the CPU;
      a CUDA mask costs one device sync per call (the check is skipped under `torch.compile`).

    Rescaling (`rescale_missing`, default True): with C of the `max_in_channels` slots present, the
    bias-free part of the output is multiplied by `max_in_channels / C`, as inverted dropout does, so
    activations keep their scale when channels are missing. We default to True because the stem is
    followed by BatchNorm, whose running statistics are shared by every subset; without rescaling a
    one-channel input reaches BatchNorm at roughly a third of the scale the statistics were built on.
    A full input is never rescaled, so with every slot present the layer equals `nn.Conv2d` with the
    same weights either way. Set False to reproduce the seed (no rescaling).
    """

    def __init__(
        self,
        max_in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        bias: bool = True,
        rescale_missing: bool = True,
    ) -> None:
        super().__init__()
        if max_in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"DynamicConv2D needs max_in_channels >= 1 and out_channels >= 1, "
                f"got {max_in_channels} and {out_channels}"
            )
        self.max_in_channels = max_in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.rescale_missing = rescale_missing
        self.weight = nn.Parameter(torch.empty(out_channels, max_in_channels, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The same initialisation as `nn.Conv2d`, so swapping the layer in changes nothing at init."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.max_in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
            f"rescale_missing={self.rescale_missing}"
        )

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding)

    def forward(self, x: torch.Tensor, channels: ChannelSpec = None) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"DynamicConv2D expects a 4-D input (B, C, H, W), got shape {tuple(x.shape)}")
        if isinstance(channels, torch.Tensor) and channels.dtype == torch.bool:
            return self._forward_mask(x, channels)
        indices = self._check_indices(x.shape[1], channels)
        n = len(indices)
        # A leading run of slots is a view (all of them: exactly nn.Conv2d); other subsets gather columns.
        weight = self.weight[:, :n] if indices == tuple(range(n)) else self.weight[:, list(indices)]
        if n == self.max_in_channels or not self.rescale_missing:
            return self._conv(x, weight, self.bias)
        out = self._conv(x, weight, None) * (self.max_in_channels / n)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def _check_indices(self, num_channels: int, channels: ChannelSpec) -> tuple[int, ...]:
        """Validate the index form; return the slot index of each channel of x."""
        if num_channels == 0:
            raise ValueError("DynamicConv2D got an input with zero channels; at least one is needed")
        if num_channels > self.max_in_channels:
            raise ValueError(
                f"DynamicConv2D got {num_channels} input channels but has only "
                f"max_in_channels={self.max_in_channels} slots"
            )
        if channels is None:
            return tuple(range(num_channels))
        if isinstance(channels, torch.Tensor):
            if channels.dim() != 1 or channels.is_floating_point() or channels.is_complex():
                raise ValueError(
                    "channels as a tensor must be a 1-D integer tensor of slot indices or a boolean mask "
                    f"of shape (B, {self.max_in_channels}); got dtype {channels.dtype}, "
                    f"shape {tuple(channels.shape)}"
                )
            channels = channels.tolist()
        try:
            indices = tuple(operator.index(c) for c in channels if not isinstance(c, bool))
        except TypeError as exc:
            raise ValueError(
                f"channels must be a sequence of integer slot indices, got {channels!r}"
            ) from exc
        if len(indices) != len(channels):
            raise ValueError(f"channels must be integer slot indices, not booleans: {channels!r}")
        if len(indices) != num_channels:
            raise ValueError(
                f"channels={indices} names {len(indices)} slots but the input has {num_channels} channels; "
                "give exactly one slot index per input channel"
            )
        bad = [i for i in indices if not 0 <= i < self.max_in_channels]
        if bad:
            raise ValueError(
                f"channels={indices} has out-of-range slot indices {bad}; "
                f"valid slots are 0..{self.max_in_channels - 1}"
            )
        if len(set(indices)) != len(indices):
            raise ValueError(f"channels={indices} has duplicate slot indices; each slot may appear once")
        return indices

    def _forward_mask(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-sample subsets: a conv on the zero-filled input equals the conv on the present slots."""
        batch = x.shape[0]
        if mask.shape != (batch, self.max_in_channels):
            raise ValueError(
                f"a channel mask must have shape (B, max_in_channels) = ({batch}, {self.max_in_channels}), "
                f"got {tuple(mask.shape)}"
            )
        if x.shape[1] != self.max_in_channels:
            raise ValueError(
                f"with a channel mask x must carry all {self.max_in_channels} slots (absent ones "
                f"zero-filled), got {x.shape[1]} channels"
            )
        if not torch.compiler.is_compiling() and not bool(mask.any(dim=1).all()):
            empty = torch.nonzero(~mask.any(dim=1)).flatten().tolist()
            raise ValueError(
                f"channel mask rows {empty} select zero channels; every sample needs at least one"
            )
        weights = mask.to(device=x.device, dtype=x.dtype, non_blocking=True)
        x = x * weights[:, :, None, None]
        if not self.rescale_missing:
            return self._conv(x, self.weight, self.bias)
        scale = self.max_in_channels / weights.sum(dim=1)
        out = self._conv(x, self.weight, None) * scale.view(-1, 1, 1, 1)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def require_full_input(x: torch.Tensor, channels: ChannelSpec, in_chans: int, model: str) -> None:
    """The input check of a plain (non-dynamic) model: all `in_chans` channels, in slot order.

    Plain models cannot skip channels; evaluation zero-fills the missing ones instead.
    """
    if x.dim() != 4 or x.shape[1] != in_chans:
        got = f"shape {tuple(x.shape)}" if x.dim() != 4 else f"{x.shape[1]} channels"
        raise ValueError(
            f"{model} is a plain (non-dynamic) model and expects exactly {in_chans} input channels "
            f"(B, {in_chans}, H, W), got {got}; zero-fill the missing channels or use a dynamic model"
        )
    if channels is None:
        return
    if isinstance(channels, torch.Tensor):
        if channels.dtype == torch.bool:
            raise ValueError(
                f"{model} is a plain model and takes no channel mask; zero-fill the missing channels "
                "and pass channels=None"
            )
        channels = channels.tolist()
    if tuple(channels) != tuple(range(in_chans)):
        raise ValueError(
            f"{model} is a plain model and cannot use channel subset {tuple(channels)}; it needs all "
            f"{in_chans} channels: zero-fill the missing ones and pass channels=None"
        )
