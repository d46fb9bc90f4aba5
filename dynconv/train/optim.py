"""Optimizer and learning-rate schedule built from the spec's `train` section.

Imports only torch and `dynconv.spec`; never Ray or MLflow.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dynconv.spec import TrainSpec


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


def lr_factor(step: int, total_steps: int, warmup_steps: int, name: str, min_ratio: float) -> float:
    """Multiplier of the base LR at `step`: linear warm-up, then cosine decay to `min_ratio` (or constant)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(
    train: TrainSpec, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule over the whole run, so that a resumed run continues the same curve."""
    total = train.epochs * steps_per_epoch
    warmup = round(train.schedule.warmup_epochs * steps_per_epoch)
    sched = train.schedule
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, sched.name, sched.min_lr_ratio)
    )
