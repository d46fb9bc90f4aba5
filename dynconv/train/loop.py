"""The per-worker training loop: data shard → model → optimizer → one report (metrics + checkpoint) per epoch.

Ray-free on purpose: it runs the same under a Ray Train worker, in a plain process and in tests.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynconv.data.augment import BatchAugment, normalize
from dynconv.data.cache_files import PreparedData
from dynconv.data.channels import channel_drop
from dynconv.data.loader import ShardedBatches
from dynconv.models import create_model
from dynconv.spec import JobSpec
from dynconv.train.device_stats import peak_device_memory
from dynconv.train.optim import build_optimizer, build_scheduler
from dynconv.train.session import Session
from dynconv.train.subset_val import (
    carried_subset_metrics,
    subset_accuracies,
    subset_metrics,
    subset_val_due,
    weighted_objective,
)

CHECKPOINT_FORMAT = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def build_model(spec: JobSpec, num_classes: int) -> nn.Module:
    """The spec's model for a dataset with `num_classes` classes."""
    return create_model(spec.model.name, num_classes=num_classes, **spec.model.args)


@dataclass(frozen=True)
class Precision:
    """How the loop computes: bf16 autocast or fp32, and whether activations are channels_last.

    `train.precision: auto` means bf16 + channels_last on CUDA and fp32 NCHW on the CPU. Measured on this
    project's 2-core dev CPU (docs/benchmarks.md, "speed options"): bf16 + channels_last trains ResNet-18
    1.50x faster than fp32 there (the CPU has AMX), but channels_last alone is 0.86x and CPUs without bf16
    units get slower, so the CPU default stays fp32 and `precision: bf16` opts in.
    """

    bf16: bool
    channels_last: bool

    @classmethod
    def resolve(cls, precision: str, device: torch.device) -> Precision:
        bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        return cls(bf16=bf16, channels_last=bf16)

    def autocast(self, device: torch.device):
        if self.bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class _Sums:
    """Per-rank running sums (loss, top-1, top-5, count) kept on the device, all-reduced into epoch metrics.

    Summing into a device tensor instead of calling `float()` per step keeps the GPU from waiting for the
    host at every step; the only sync is the all-reduce at the end of the epoch.
    """

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        k = min(5, logits.shape[1])
        hit = logits.topk(k, dim=1).indices.eq(y[:, None])
        n = y.numel()
        step = torch.stack([loss.double() * n, hit[:, 0].sum().double(), hit.any(dim=1).sum().double()])
        self.sums[:3] += step
        self.sums[3] += n

    def reduce(self, session: Session) -> dict[str, float]:
        loss, top1, top5, count = session.all_reduce_sum(self.sums.clone()).cpu().tolist()
        count = max(count, 1.0)
        return {"loss": loss / count, "acc": top1 / count, "top5": top5 / count, "count": count}


def _seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def train_epoch(
    model: nn.Module,
    batches: ShardedBatches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    spec: JobSpec,
    session: Session,
    generator: torch.Generator,
    dynamic: bool,
    precision: Precision,
) -> dict[str, float]:
    """One pass over this rank's training shard; returns metrics summed over ranks."""
    model.train()
    augment = BatchAugment(spec.train.augment_strength)
    sums = _Sums(session.device)
    for x_u8, y in batches:
        x = augment(normalize(x_u8, session.device), generator=generator)
        y = y.to(session.device, non_blocking=True)
        mask = None
        if spec.train.channel_drop > 0:
            x, mask = channel_drop(x, spec.train.channel_drop, generator=generator)
        x = precision.layout(x)
        with precision.autocast(session.device):
            logits = model(x, channels=mask) if (dynamic and mask is not None) else model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=spec.train.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        sums.add(logits.detach().float(), y, loss.detach())
    return sums.reduce(session)


@torch.no_grad()
def evaluate_epoch(
    model: nn.Module, batches: ShardedBatches, session: Session, precision: Precision
) -> dict[str, float]:
    """Loss, top-1 and top-5 over this rank's shard of an evaluation split, summed over ranks."""
    model.eval()
    sums = _Sums(session.device)
    for x_u8, y in batches:
        x = normalize(x_u8, session.device)
        y = y.to(session.device, non_blocking=True)
        with precision.autocast(session.device):
            logits = model(precision.layout(x)).float()
        sums.add(logits, y, F.cross_entropy(logits, y))
    return sums.reduce(session)


def _subset_epoch_metrics(
    spec: JobSpec,
    model: nn.Module,
    val_batches: ShardedBatches,
    session: Session,
    precision: Precision,
    dynamic: bool,
    previous: dict[str, float],
    epoch: int,
    val_acc: float,
) -> dict[str, float]:
    """`val_acc_<S>`, `val_acc_worst`, `val_subsets_epoch` for 0-based `epoch`: measured when due
    (`train.subset_val_every`), else the last measured values carried forward. RGB reuses `val_acc`."""
    t = spec.train
    if not subset_val_due(epoch + 1, t.epochs, t.subset_val_every, previous):
        return carried_subset_metrics(previous, t.val_subsets) if t.subset_val_every > 0 else {}
    others = [s for s in t.val_subsets if s != "RGB"]
    accs = subset_accuracies(unwrap(model), val_batches, session, precision, others, dynamic)
    return subset_metrics(accs, val_acc, t.val_subsets, epoch + 1)


def checkpoint_state(
    spec: JobSpec,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    num_classes: int,
    history: list[dict[str, float]],
) -> dict[str, Any]:
    """Everything needed to resume training or rebuild the model alone (weights_only-loadable), and the
    metrics of every epoch so far (`history`, the last one being this epoch's): whoever records the run
    can fill in epochs it never received from the newest checkpoint."""
    plain = unwrap(model)
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": plain.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "spec": spec.to_json_dict(),
        "model_name": spec.model.name,
        "model_args": dict(spec.model.args),
        "num_classes": num_classes,
        "metrics": dict(history[-1]) if history else {},
        "history": [dict(m) for m in history],
    }


def fit(spec: JobSpec, session: Session, data: PreparedData) -> dict[str, float]:
    """Train `spec` on `data` through `session`; returns the last epoch's metrics.

    Resumes from `session.load_checkpoint()` when there is one. Seeds are derived from
    `spec.train.seed`, the rank and the epoch, so a resumed run draws the same augmentations
    as an uninterrupted one from the resumed epoch on.
    """
    torch.set_float32_matmul_precision("high")
    seed = spec.train.seed
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = build_model(spec, data.num_classes)
    dynamic = bool(getattr(model, "dynamic", False))
    precision = Precision.resolve(spec.train.precision, session.device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = session.prepare_model(model)
    if spec.train.compile:
        model = torch.compile(model)

    train_batches, val_batches = _shard_batches(spec, data, session)
    optimizer = build_optimizer(spec.train, model)
    scheduler = build_scheduler(spec.train, optimizer, len(train_batches))
    start_epoch, history = _resume(session, model, optimizer, scheduler)
    metrics = history[-1] if history else {}
    if history and start_epoch >= spec.train.epochs:  # resumed from the final checkpoint: whoever drives
        # the session may have been interrupted before it received that epoch, so it hears it again
        state = checkpoint_state(spec, model, optimizer, scheduler, start_epoch, data.num_classes, history)
        session.report(metrics, state)

    for epoch in range(start_epoch, spec.train.epochs):
        t0 = time.perf_counter()
        train_batches.set_epoch(epoch)
        gen = _seeded_generator(session.device, seed * 1_000_003 + epoch * 1009 + session.rank)
        tr = train_epoch(model, train_batches, optimizer, scheduler, spec, session, gen, dynamic, precision)
        train_seconds = time.perf_counter() - t0
        va = evaluate_epoch(model, val_batches, session, precision)
        subsets = _subset_epoch_metrics(
            spec, model, val_batches, session, precision, dynamic, metrics, epoch, va["acc"]
        )
        seconds = time.perf_counter() - t0  # the whole epoch: training, validation, subset validation
        lr = optimizer.param_groups[0]["lr"]
        metrics = _epoch_metrics(spec, session, epoch, tr, va, subsets, lr, seconds, train_seconds)
        history.append(metrics)
        state = checkpoint_state(spec, model, optimizer, scheduler, epoch + 1, data.num_classes, history)
        session.report(metrics, state)
    return metrics


def _shard_batches(
    spec: JobSpec, data: PreparedData, session: Session
) -> tuple[ShardedBatches, ShardedBatches]:
    """This rank's shards: training (shuffled by `train.seed` and the epoch, whole batches only) and
    validation (in order, at twice the batch size)."""
    train_split, val_split = data.split("train"), data.split("val")
    train_batches = ShardedBatches(
        train_split.images,
        train_split.labels,
        spec.train.batch_size,
        rank=session.rank,
        world_size=session.world_size,
        shuffle=True,
        drop_last=True,
        seed=spec.train.seed,
    )
    val_batches = ShardedBatches(
        val_split.images,
        val_split.labels,
        spec.train.batch_size * 2,
        rank=session.rank,
        world_size=session.world_size,
        shuffle=False,
        drop_last=False,
    )
    return train_batches, val_batches


def _resume(
    session: Session, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[int, list[dict[str, float]]]:
    """(first epoch to train, the metrics of every epoch before it): restores model, optimizer and
    scheduler from the session's checkpoint when there is one, else (0, [])."""
    resumed = session.load_checkpoint()
    if resumed is None:
        return 0, []
    unwrap(model).load_state_dict(resumed["model"])
    optimizer.load_state_dict(resumed["optimizer"])
    scheduler.load_state_dict(resumed["scheduler"])
    history = resumed.get("history") or [resumed["metrics"]]  # older checkpoints kept the last epoch only
    return int(resumed["epoch"]), [dict(m) for m in history]


def _epoch_metrics(
    spec: JobSpec,
    session: Session,
    epoch: int,
    tr: dict[str, float],
    va: dict[str, float],
    subsets: dict[str, float],
    lr: float,
    seconds: float,
    train_seconds: float,
) -> dict[str, float]:
    """The metrics one epoch reports (0-based `epoch`), in this order; `objective` when the spec ranks
    trials on a weighted mix of metrics."""
    metrics = {
        "epoch": epoch + 1,
        "train_loss": tr["loss"],
        "train_acc": tr["acc"],
        "val_loss": va["loss"],
        "val_acc": va["acc"],
        "val_top5": va["top5"],
        "lr": lr,
        "epoch_seconds": seconds,
        "train_images_per_second": tr["count"] / train_seconds,
        "world_size": session.world_size,
        **subsets,
        **peak_device_memory(session.device),
    }
    if isinstance(spec.search.metric, dict):
        metrics["objective"] = weighted_objective(spec.search.metric, metrics)
    return metrics
