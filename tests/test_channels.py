"""Channel subsets: names, parsing, selection for dynamic models, zero-filling, channel drop."""

from __future__ import annotations

import pytest
import torch

from dynconv.data.channels import (
    SUBSET_NAMES,
    SUBSETS,
    channel_drop,
    parse_subsets,
    select_channels,
    subset_indices,
    subset_table,
    zero_fill,
)
from dynconv.errors import DynconvError


def test_the_seven_subsets() -> None:
    assert SUBSETS == {
        "RGB": (0, 1, 2),
        "RG": (0, 1),
        "RB": (0, 2),
        "GB": (1, 2),
        "R": (0,),
        "G": (1,),
        "B": (2,),
    }
    assert SUBSET_NAMES == ("RGB", "RG", "RB", "GB", "R", "G", "B")
    assert subset_table().sum(1).tolist() == [3, 2, 2, 2, 1, 1, 1]


def test_parse_subsets() -> None:
    assert parse_subsets("RGB,RG") == ["RGB", "RG"]
    assert parse_subsets(" rb , B,RB ") == ["RB", "B"]
    assert parse_subsets(["G", "GB"]) == ["G", "GB"]


@pytest.mark.parametrize(("text", "bad"), [("RX", "'RX'"), ("RGB,RR", "'RR'"), ("", "''"), ("RG,,B", "''")])
def test_parse_subsets_names_the_bad_one_and_lists_valid_names(text: str, bad: str) -> None:
    with pytest.raises(DynconvError) as info:
        parse_subsets(text)
    assert bad in str(info.value) and "RGB, RG, RB, GB, R, G, B" in str(info.value)


def test_select_channels_and_zero_fill() -> None:
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2) + 1
    sub, idx = select_channels(x, "RB")
    assert idx == (0, 2) and torch.equal(sub, x[:, [0, 2]])
    assert select_channels(x, (1,))[1] == (1,)
    filled = zero_fill(x, "GB")
    assert torch.equal(filled[:, 1:], x[:, 1:]) and (filled[:, 0] == 0).all()
    assert (x != 0).all()  # not in place
    with pytest.raises(DynconvError):
        subset_indices((2, 1))


def test_channel_drop_probability_zero_keeps_everything() -> None:
    x = torch.randn(5, 3, 4, 4)
    out, mask = channel_drop(x, 0.0)
    assert out is x and mask.dtype == torch.bool and mask.all() and mask.shape == (5, 3)


def test_channel_drop_draws_per_sample_subsets_and_zero_fills() -> None:
    x = torch.randn(700, 3, 2, 2).abs() + 0.1
    out, mask = channel_drop(x, 1.0, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (700, 3) and mask.any(1).all()  # never empty
    assert torch.equal(out, x * mask[:, :, None, None])
    kinds = {tuple(m) for m in mask.tolist()}
    assert len(kinds) == 7  # all seven subsets occur, RGB included
    _, half_mask = channel_drop(x, 0.5, generator=torch.Generator().manual_seed(1))
    dropped = (~half_mask.all(1)).float().mean().item()
    assert dropped == pytest.approx(0.5 * 6 / 7, abs=0.06)
    with pytest.raises(ValueError):
        channel_drop(x, 1.5)
