"""`ServedClassifier`: a trained model wrapped so that its users need nothing of dynconv.

Outside dynconv an image is a float tensor in [0, 1] holding some of the R, G, B channels. The wrapper
does what dynconv's evaluation does before calling the model (`dynconv.data.augment.normalize`, then
`dynconv.data.channels.model_inputs`): it normalises each present channel with its slot's mean and
standard deviation, then feeds a dynamic model only those channels with their slot indices, and a plain
model all three slots with the missing ones zero-filled after normalisation (= the mean colour).

The statistics are constructor arguments (kept as buffers, so they travel with the weights) rather than
constants here: they are the data layer's (`dynconv.data.augment`), and a served model's package copy
holds only what `dynconv.tracking.registry.CODE_COPY` lists. Build one from a checkpoint with
`dynconv.evaluation.model.served_from_checkpoint`. Requests that name their channels (`"RB"`), encoded
image files and answers that name classes are `dynconv.models.serving.ServedPredictor`'s, which wraps
this module for `mlflow.pyfunc` and `mlflow models serve`.

What it cannot take is refused in one line (a ValueError), never guessed at: a channel slot that is
not an integer (`channels=[0.9]` was truncated to slot 0), and values outside [0, 1] (0-255 floats gave
confident garbage).

Imports only torch and the standard library (a served model's package copy is loaded without dynconv).
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Sequence

import torch
from torch import nn

SLOTS = 3
"""Channel slots of an image: 0 = R, 1 = G, 2 = B."""


class ServedClassifier(nn.Module):
    """`forward(x, channels=None)`: logits (N, num_classes) for float images x (N, C, H, W) in [0, 1].

    `channels` names the slot of each channel of x (0 = R, 1 = G, 2 = B), in x's order: `[0, 2]` says
    x is (R, B). Default: the first C slots (R; R, G; R, G, B). `mean` and `std` are the per-slot
    normalisation statistics the model was trained with.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != SLOTS or len(std) != SLOTS:
            raise ValueError(f"mean and std need one value per slot, got {len(mean)} and {len(std)}")
        self.model = model
        self.dynamic = bool(getattr(model, "dynamic", False))
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]))
        self.register_buffer("std", torch.tensor([float(s) for s in std]))

    def forward(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        slots = self._slots(x, channels)
        _check_unit_range(x)
        index = torch.tensor(slots, device=x.device)
        shape = (1, len(slots), 1, 1)
        x = (x.to(self.mean.dtype) - self.mean[index].view(shape)) / self.std[index].view(shape)
        if self.dynamic:
            return self.model(x, channels=slots)
        full = x.new_zeros((x.shape[0], SLOTS, *x.shape[2:]))
        full[:, index] = x
        return self.model(full)

    def _slots(self, x: torch.Tensor, channels: Sequence[int] | None) -> tuple[int, ...]:
        """The slot of each channel of x, checked: x must be a float NCHW batch of 1..3 channels, and
        `channels` distinct slots, one per channel."""
        if x.dim() != 4 or not 1 <= x.shape[1] <= SLOTS or not x.is_floating_point():
            raise ValueError(
                f"expected float images (N, C, H, W) in [0, 1] with C in 1..{SLOTS}, got dtype {x.dtype} "
                f"shape {tuple(x.shape)}"
            )
        slots = tuple(range(x.shape[1])) if channels is None else tuple(_slot(c, channels) for c in channels)
        distinct = len(set(slots)) == len(slots) and all(0 <= s < SLOTS for s in slots)
        if len(slots) != x.shape[1] or not distinct:
            raise ValueError(
                f"channels={list(slots)} must name one distinct slot (0=R, 1=G, 2=B) per channel of x "
                f"({x.shape[1]})"
            )
        return slots


def _slot(value: object, channels: Sequence[object]) -> int:
    """One entry of `channels` as a slot index: an int (a Python, numpy or integer-tensor one); a float,
    bool or string is refused, since `int()` would truncate `0.9` to slot 0 without a word."""
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError):
            return operator.index(value)  # type: ignore[arg-type]
    raise ValueError(f"channels={list(channels)} holds {value!r}, not an integer slot (0=R, 1=G, 2=B)")


def _check_unit_range(x: torch.Tensor) -> None:
    """Refuse images with values outside [0, 1] (or NaN): 0-255 pixels given as floats would be
    normalised as if they were in [0, 1] and give confident nonsense."""
    if not bool(((x >= 0) & (x <= 1)).all()):
        low, high = float(x.min()), float(x.max())
        raise ValueError(
            f"x holds values outside [0, 1] (min {low:.4g}, max {high:.4g}): the model takes float images "
            "in [0, 1], e.g. uint8 pixels divided by 255"
        )
