"""Normalisation and batched augmentation with one searchable ``strength``, on the training device.

Recommended order in a training step: ``x = normalize(x_uint8, device)``, then ``x = aug(x)``, then
channel drop (:func:`dynconv.data.channels.channel_drop`). Pixels that the geometric transform brings
in from outside the image are 0 in the input of ``aug``; after ``normalize`` that is the dataset mean
colour.

Magnitudes at ``strength`` s in [0, 1] (each scales linearly with s, drawn per sample):

=====================  ==========================================================  ================
transform              per-sample draw                                             at s = 1
=====================  ==========================================================  ================
horizontal flip        with probability 0.5·s                                      p = 0.5
vertical flip          with probability 0.5·s                                      p = 0.5
rotation               angle uniform in [-30·s, +30·s] degrees                     ±30°
perspective            each of the 4 corners of the sampled quadrilateral moves    ±0.3 of the
                       uniformly and independently by up to ±0.3·s of the          half-side
                       half-side, in x and in y
=====================  ==========================================================  ================

s = 0 is the identity (the input tensor itself is returned). All transforms of a sample are composed
into one 3x3 homography, so a whole batch is warped by a single ``grid_sample`` call (bilinear), with
no Python loop over samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

MAX_FLIP_PROBABILITY = 0.5
MAX_ROTATION_DEGREES = 30.0
MAX_PERSPECTIVE = 0.3


def normalize(
    x_uint8: torch.Tensor, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Move a uint8 batch (B, 3, H, W) to ``device`` (non-blocking) and normalise it with ImageNet stats."""
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize expects a uint8 batch, got {x_uint8.dtype}")
    x = x_uint8.to(device, non_blocking=True) if device is not None else x_uint8
    x = x.to(dtype).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize` (floats in [0, 1]); for looking at augmented batches."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x * std + mean


class BatchAugment:
    """Per-sample random flips, rotation and perspective, scaled by one ``strength`` in [0, 1]."""

    def __init__(self, strength: float) -> None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise ValueError(f"augmentation strength must be a number in [0, 1], got {strength!r}")
        self.strength = float(strength)
        self.flip_probability = MAX_FLIP_PROBABILITY * self.strength
        self.max_rotation_degrees = MAX_ROTATION_DEGREES * self.strength
        self.perspective = MAX_PERSPECTIVE * self.strength

    def magnitudes(self) -> dict[str, float]:
        """The magnitudes in effect (e.g. to log next to the hyperparameters)."""
        return {
            "flip_probability": self.flip_probability,
            "max_rotation_degrees": self.max_rotation_degrees,
            "perspective": self.perspective,
        }

    def __repr__(self) -> str:
        return f"BatchAugment(strength={self.strength})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a float batch (B, C, H, W) on its own device; ``generator`` makes it reproducible."""
        if self.strength == 0:
            return x
        if x.ndim != 4 or not x.is_floating_point():
            raise TypeError(f"BatchAugment needs a float (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        b, _, h, w = x.shape
        if b == 0:
            return x
        matrices = self.sample_homographies(b, h, w, generator=generator, device=x.device)
        grid = _homography_grid(matrices, h, w).to(x.dtype)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def sample_homographies(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """(B, 3, 3) maps from output to input coordinates (normalised to [-1, 1]), one per sample."""
        draw_device = generator.device if generator is not None else device
        r = torch.rand(batch, 11, generator=generator, device=draw_device).to(device)
        one = torch.ones(batch, device=device)
        sx = torch.where(r[:, 0] < self.flip_probability, -one, one)
        sy = torch.where(r[:, 1] < self.flip_probability, -one, one)
        flip = torch.diag_embed(torch.stack([sx, sy, one], dim=1))

        angle = (2 * r[:, 2] - 1) * math.radians(self.max_rotation_degrees)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(cos)
        # Rotate in pixel units (normalised x and y have different pixel scales when H != W).
        aspect = width / height
        rotation = torch.stack(
            [
                torch.stack([cos, -sin / aspect, zero], 1),
                torch.stack([sin * aspect, cos, zero], 1),
                torch.stack([zero, zero, one], 1),
            ],
            dim=1,
        )

        square = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=device)
        corners = square + (2 * r[:, 3:].view(batch, 4, 2) - 1) * self.perspective
        perspective = _square_to_quad(corners)
        return flip @ rotation @ perspective


def _square_to_quad(corners: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) homographies taking the corners of [-1, 1]^2 to ``corners`` (B, 4, 2)."""
    b = corners.shape[0]
    src = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=corners.device)
    x, y = src[:, 0].expand(b, 4), src[:, 1].expand(b, 4)
    u, v = corners[..., 0], corners[..., 1]
    o, z = torch.ones_like(u), torch.zeros_like(u)
    rows_u = torch.stack([x, y, o, z, z, z, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([z, z, z, x, y, o, -v * x, -v * y], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)  # (B, 8, 8)
    rhs = torch.cat([u, v], dim=1).unsqueeze(-1)  # (B, 8, 1)
    h = torch.linalg.solve(a, rhs).squeeze(-1)
    return torch.cat([h, torch.ones(b, 1, device=corners.device)], dim=1).view(b, 3, 3)


def _homography_grid(matrices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sampling grid (B, H, W, 2) for ``grid_sample`` (align_corners=False) from output->input maps."""
    device = matrices.device
    ys = (torch.arange(height, device=device, dtype=torch.float32) * 2 + 1) / height - 1
    xs = (torch.arange(width, device=device, dtype=torch.float32) * 2 + 1) / width - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).view(1, -1, 3)  # (1, HW, 3)
    pts = base @ matrices.transpose(1, 2)  # (B, HW, 3)
    grid = pts[..., :2] / pts[..., 2:].clamp_min(1e-6)
    return grid.view(matrices.shape[0], height, width, 2)
