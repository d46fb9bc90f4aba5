"""Optimizer and learning-rate schedule built from the spec's `train` section.

Imports only torch and `dynconv.spec`; never Ray or MLflow.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dynconv.spec.sections import TrainSpec


def build_optimizer(train: TrainSpec, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW; biases and norm parameters get no weight decay (standard)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=train.momentum > 0)
    return torch.optim.AdamW(groups, lr=train.lr)


ONECYCLE_DIV_FACTOR = 25.0  # torch's OneCycleLR default: a onecycle run starts at lr / 25


def _cos_between(start: float, end: float, pct: float) -> float:
    """Cosine interpolation from `start` (pct 0) to `end` (pct 1), as torch's OneCycleLR anneals."""
    return end + (start - end) / 2 * (math.cos(math.pi * min(1.0, max(0.0, pct))) + 1)


def _onecycle_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """torch's two-phase cosine OneCycleLR as a factor of the peak LR (`train.lr`).

    Rises from 1/25 to 1 over the first `warmup_steps` steps (peak at step warmup_steps - 1, i.e.
    `pct_start = warmup_epochs / epochs`), then anneals to `min_ratio` at the last step. With
    `min_ratio = 1 / (25 * 1e4)` it is exactly torch's default (div_factor 25, final_div_factor 1e4);
    momentum is not cycled (`train.momentum` stays what the spec says).
    """
    peak = max(warmup_steps - 1, 0)
    if step <= peak:
        return _cos_between(1 / ONECYCLE_DIV_FACTOR, 1.0, step / peak if peak > 0 else 1.0)
    return _cos_between(1.0, min_ratio, (step - peak) / max(1, total_steps - 1 - peak))


def lr_factor(step: int, total_steps: int, warmup_steps: int, name: str, min_ratio: float) -> float:
    """Multiplier of the base LR at `step`.

    cosine: linear warm-up, then cosine decay to `min_ratio`; constant: linear warm-up, then 1;
    onecycle: torch's OneCycleLR shape (see `_onecycle_factor`), peaking after the warm-up.
    """
    if name == "onecycle":
        return _onecycle_factor(step, total_steps, warmup_steps, min_ratio)
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(
    train: TrainSpec, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule over the whole run (stepped after every batch): a resumed run continues the curve."""
    total = train.epochs * steps_per_epoch
    warmup = round(train.schedule.warmup_epochs * steps_per_epoch)
    sched = train.schedule
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, sched.name, sched.min_lr_ratio)
    )
