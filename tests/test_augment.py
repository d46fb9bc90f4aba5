"""Normalisation and BatchAugment: identity at strength 0, per-sample randomness, exact geometry."""

from __future__ import annotations

import pytest
import torch

from dynconv.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchAugment,
    _homography_grid,
    denormalize,
    normalize,
)


def _batch(b: int = 8, size: int = 16) -> torch.Tensor:
    torch.manual_seed(0)
    one = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    return normalize(one.expand(b, -1, -1, -1).contiguous())


def test_normalize_uses_imagenet_statistics() -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 3, 1, 2).contiguous()
    out = normalize(x, device="cpu")
    assert out.dtype == torch.float32 and out.shape == x.shape
    for c in range(3):
        assert out[0, c, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c], rel=1e-5)
        assert out[0, c, 0, 1].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], rel=1e-5)
    assert torch.allclose(denormalize(out), x.float() / 255, atol=1e-6)
    with pytest.raises(TypeError):
        normalize(out)


def test_strength_zero_is_the_identity() -> None:
    x = _batch()
    assert BatchAugment(0)(x) is x
    assert BatchAugment(0.0).magnitudes() == {
        "flip_probability": 0,
        "max_rotation_degrees": 0,
        "perspective": 0,
    }


@pytest.mark.parametrize("strength", [0.2, 1.0])
def test_positive_strength_differs_per_sample(strength: float) -> None:
    x = _batch(b=8)
    out = BatchAugment(strength)(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    for i in range(len(out)):  # every sample got its own transform
        for j in range(i):
            assert not torch.equal(out[i], out[j])


def test_generator_makes_it_reproducible() -> None:
    x = _batch()
    aug = BatchAugment(0.7)
    a = aug(x, generator=torch.Generator().manual_seed(3))
    b = aug(x, generator=torch.Generator().manual_seed(3))
    c = aug(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_magnitudes_scale_with_strength() -> None:
    aug = BatchAugment(0.5)
    assert aug.magnitudes() == {"flip_probability": 0.25, "max_rotation_degrees": 15.0, "perspective": 0.15}
    mats = aug.sample_homographies(2000, 8, 8, generator=torch.Generator().manual_seed(0))
    flips = (mats[:, 0, 0] < 0).float().mean().item()  # no rotation makes m00 negative within ±15°
    assert flips == pytest.approx(0.25, abs=0.04)


def test_pure_flips_are_exact_pixel_flips() -> None:
    x = _batch(b=4, size=10)
    aug = BatchAugment(1.0)
    aug.flip_probability, aug.max_rotation_degrees, aug.perspective = 1.0, 0.0, 0.0
    assert torch.allclose(aug(x), x.flip(-1).flip(-2), atol=1e-5)


def test_rotation_angles_stay_within_the_documented_range() -> None:
    aug = BatchAugment(0.5)
    aug.flip_probability, aug.perspective = 0.0, 0.0
    mats = aug.sample_homographies(500, 8, 8, generator=torch.Generator().manual_seed(0))
    angles = torch.rad2deg(torch.atan2(mats[:, 1, 0], mats[:, 0, 0]))
    assert angles.abs().max() <= 15.0 + 1e-4 and angles.abs().max() > 14.0


def test_homography_grid_matches_exact_pixel_rotation() -> None:
    x = _batch(b=2, size=6)
    quarter_turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    out = torch.nn.functional.grid_sample(x, _homography_grid(quarter_turn, 6, 6), align_corners=False)
    assert torch.allclose(out, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5)


@pytest.mark.parametrize("bad", [-0.1, 1.01, float("nan"), "1", True])
def test_strength_outside_unit_interval_is_rejected(bad) -> None:
    with pytest.raises(ValueError, match="strength"):
        BatchAugment(bad)


def test_rejects_integer_batches() -> None:
    with pytest.raises(TypeError, match="float"):
        BatchAugment(0.5)(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
