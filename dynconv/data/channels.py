"""Channel subsets: the seven names, selecting a subset, zero-filling the rest, and channel-drop training.

Batches are NCHW with channels in R, G, B order. Dynamic (channel-flexible) models get the selected
channels plus their indices, or the full-width batch with a per-sample (B, 3) bool mask; plain models
get a full-width batch in which absent channels are zero.

Zero-filling is meant for the *normalised* batch (after :func:`dynconv.data.augment.normalize`): a
zeroed channel then equals the dataset mean of that channel, i.e. "no information", rather than
"black", which a model could mistake for a dark image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from dynconv.errors import DynconvError

SUBSETS: dict[str, tuple[int, ...]] = {
    "RGB": (0, 1, 2),
    "RG": (0, 1),
    "RB": (0, 2),
    "GB": (1, 2),
    "R": (0,),
    "G": (1,),
    "B": (2,),
}
SUBSET_NAMES: tuple[str, ...] = tuple(SUBSETS)

Subset = str | Sequence[int]


def parse_subsets(text: str | Iterable[str]) -> list[str]:
    """``"RGB,RG"`` (or a list of names) -> ``["RGB", "RG"]``; case-insensitive, duplicates dropped."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        name = str(item).strip().upper()
        if name not in SUBSETS:
            raise DynconvError(
                f"unknown channel subset {str(item).strip()!r}; valid subsets: {', '.join(SUBSET_NAMES)}"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise DynconvError(f"no channel subsets given; valid subsets: {', '.join(SUBSET_NAMES)}")
    return names


def subset_indices(subset: Subset) -> tuple[int, ...]:
    """The channel indices of a subset name (``"RB"`` -> ``(0, 2)``) or of an index sequence (validated)."""
    if isinstance(subset, str):
        return SUBSETS[parse_subsets([subset])[0]]
    indices = tuple(int(i) for i in subset)
    if not indices or sorted(set(indices)) != list(indices) or not all(0 <= i <= 2 for i in indices):
        raise DynconvError(f"channel indices must be a increasing subset of (0, 1, 2), got {indices}")
    return indices


def subset_mask(subset: Subset, device: torch.device | str | None = None) -> torch.Tensor:
    """(3,) bool mask of the channels in ``subset``."""
    mask = torch.zeros(3, dtype=torch.bool, device=device)
    mask[list(subset_indices(subset))] = True
    return mask


def select_channels(x: torch.Tensor, subset: Subset) -> tuple[torch.Tensor, tuple[int, ...]]:
    """For dynamic models: the batch narrowed to the subset's channels, and the indices for ``channels``."""
    indices = subset_indices(subset)
    return x[:, list(indices)], indices


def zero_fill(x: torch.Tensor, subset: Subset) -> torch.Tensor:
    """For plain models: a copy of the (B, 3, H, W) batch with the channels outside ``subset`` set to 0."""
    mask = subset_mask(subset, device=x.device)
    return x * mask.view(1, 3, 1, 1).to(x.dtype)


def subset_table(device: torch.device | str | None = None) -> torch.Tensor:
    """(7, 3) bool masks of the seven subsets, in :data:`SUBSET_NAMES` order."""
    return torch.stack([subset_mask(name, device) for name in SUBSET_NAMES])


def channel_drop(
    x: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-drop training: each sample, with probability ``p``, keeps a random subset of its channels.

    The subset is drawn uniformly from the seven (so RGB is among the draws); other samples keep all
    channels. Returns the zero-filled batch and the (B, 3) bool mask of kept channels. Dynamic models
    take both (``model(x, channels=mask)``), plain models only the batch. ``p = 0`` returns ``x`` itself.
    """
    if isinstance(p, bool) or not 0 <= p <= 1:
        raise ValueError(f"channel-drop probability must be in [0, 1], got {p!r}")
    b = x.shape[0]
    full = torch.ones(b, 3, dtype=torch.bool, device=x.device)
    if p == 0 or b == 0:
        return x, full
    draw_device = generator.device if generator is not None else x.device
    drop = torch.rand(b, generator=generator, device=draw_device).to(x.device) < p
    choice = torch.randint(len(SUBSETS), (b,), generator=generator, device=draw_device).to(x.device)
    mask = torch.where(drop.unsqueeze(1), subset_table(x.device)[choice], full)
    return x * mask.view(b, 3, 1, 1).to(x.dtype), mask


def model_inputs(
    x: torch.Tensor, subset: Subset, dynamic: bool
) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """(input, channels) for a normalised full (B, 3, H, W) batch shown as ``subset``.

    The one rule of evaluation and of per-subset validation during training. Dynamic: the subset's
    channels only, and their indices for ``forward(x, channels=...)``. Plain: the full-width batch with
    the other channels zero-filled, and None.
    """
    if dynamic:
        return select_channels(x, subset)
    return zero_fill(x, subset), None
