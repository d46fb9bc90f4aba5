"""The two training loops the throughput benchmarks compare.

`ReferenceLoop`: a plain PyTorch loop over uint8 batches already in memory, with the speed options of
`LoopConfig` (threads, channels_last, bf16, torch.compile, augmentation). The dynconv side:
`throughput_spec` (the JobSpec it trains), `prepare_synthetic_cache` and `dynconv_rate` (the real
`train_worker` under a one-worker Ray Train `TorchTrainer`). Imports torch, `dynconv.data.augment`,
`dynconv.models` and `common`; Ray and the rest of dynconv lazily.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from common import sync, time_limit
from torch import nn

from dynconv.data.augment import IMAGENET_MEAN, IMAGENET_STD, BatchAugment
from dynconv.models import create_model


@dataclass(frozen=True)
class LoopConfig:
    """Speed options of the reference loop."""

    threads: int | None = None
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False
    augment: float = 0.0

    def label(self) -> str:
        parts = ["bf16" if self.bf16 else "fp32"]
        parts.append("channels_last" if self.channels_last else "NCHW")
        if self.compile:
            parts.append("compile")
        if self.augment:
            parts.append(f"aug {self.augment:g}")
        if self.threads:
            parts.append(f"{self.threads} thread{'s' if self.threads > 1 else ''}")
        return ", ".join(parts)


@dataclass
class Timing:
    images_per_second: float
    steps: int
    seconds: float


class ReferenceLoop:
    """A plain PyTorch training loop over uint8 batches already in memory (CPU, pinned when on CUDA).

    One step: copy to the device, normalise (ImageNet mean/std), optionally `BatchAugment`, optionally
    channels_last, forward (optionally under bf16 autocast), cross-entropy in fp32, backward, SGD step.
    """

    def __init__(
        self,
        name: str,
        *,
        num_classes: int,
        image_size: int,
        batch_size: int,
        device: torch.device | str = "cpu",
        config: LoopConfig = LoopConfig(),
        model_args: dict | None = None,
        pool_batches: int = 4,
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.config = config
        self.batch_size = batch_size
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(seed)
        model = create_model(name, num_classes=num_classes, **(model_args or {})).to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        self.model: nn.Module = torch.compile(model) if config.compile else model
        gen = torch.Generator().manual_seed(seed)
        shape = (pool_batches, batch_size, 3, image_size, image_size)
        self.x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
        self.y = torch.randint(0, num_classes, (pool_batches, batch_size), generator=gen)
        if self.device.type == "cuda":
            self.x, self.y = self.x.pin_memory(), self.y.pin_memory()
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self.augment = BatchAugment(config.augment) if config.augment else None
        self._i = 0
        self.last_step_seconds = math.nan

    def _autocast(self):
        if self.config.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self) -> None:
        i = self._i % len(self.x)
        self._i += 1
        x = self.x[i].to(self.device, non_blocking=True).float().div_(255.0).sub_(self.mean).div_(self.std)
        y = self.y[i].to(self.device, non_blocking=True)
        if self.augment is not None:
            x = self.augment(x)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def warmup(self, steps: int, timeout_s: float | None = None) -> float:
        """Run `steps` untimed steps (compilation happens here); returns their seconds."""
        t0 = time.perf_counter()
        with time_limit(timeout_s):
            for _ in range(max(1, steps)):
                s0 = time.perf_counter()
                self.step()
                sync(self.device)
                self.last_step_seconds = time.perf_counter() - s0
        return time.perf_counter() - t0

    def steps_for(self, seconds: float, min_steps: int = 3, max_steps: int = 10_000) -> int:
        """How many steps fill about `seconds`, from the last warm-up step's duration."""
        if not math.isfinite(self.last_step_seconds):
            return min_steps
        return int(min(max_steps, max(min_steps, math.ceil(seconds / self.last_step_seconds))))

    def measure(self, steps: int) -> Timing:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        dt = time.perf_counter() - t0
        return Timing(steps * self.batch_size / dt, steps, dt)

    @torch.no_grad()
    def measure_inference(self, steps: int, warmup: int = 2) -> Timing:
        """Forward passes only (eval mode, no autograd), same options; restores train mode."""
        self.model.eval()
        x = self.x[0].to(self.device).float().div_(255.0).sub_(self.mean).div_(self.std)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            for _ in range(warmup):
                with self._autocast():
                    self.model(x)
            sync(self.device)
            t0 = time.perf_counter()
            for _ in range(steps):
                with self._autocast():
                    self.model(x)
            sync(self.device)
            dt = time.perf_counter() - t0
        finally:
            self.model.train()
        return Timing(steps * self.batch_size / dt, steps, dt)


def prepare_synthetic_cache(directory: Path, train_images: int, image_size: int, classes: int = 10):
    """A synthetic dataset whose train split holds at least `train_images` images, and its cache."""
    from dynconv.data.cache import prepare
    from dynconv.data.synth import write_synthetic

    per_class_train = math.ceil(train_images / classes)
    root = write_synthetic(
        directory / "synthetic",
        classes=classes,
        per_class=per_class_train + 2,
        size=max(16, image_size),
        seed=0,
        splits=(per_class_train, 1, 1),
    )
    return prepare(root, size=image_size, cache_dir=directory / "cache", progress=False)


def throughput_spec(
    name: str,
    *,
    batch_size: int,
    threads: int,
    image_size: int,
    augment: float = 0.0,
    compile: bool = False,
    epochs: int = 2,
    storage: str = "ray_results",
    model_args: dict | None = None,
):
    """The JobSpec the dynconv side trains: constant LR, no channel drop, no label smoothing."""
    from dynconv.spec import parse_spec

    return parse_spec(
        {
            "study": "train-throughput",
            "model": {"name": name, "args": dict(model_args or {})},
            "data": {"image_size": image_size},
            "train": {
                "epochs": epochs,
                "batch_size": batch_size,
                "optimizer": "sgd",
                "lr": 0.01,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "schedule": {"name": "constant", "warmup_epochs": 0},
                "label_smoothing": 0.0,
                "augment_strength": augment,
                "channel_drop": 0.0,
                "seed": 0,
                "compile": compile,
            },
            "search": {
                "space": {
                    "lr": {"type": "loguniform", "low": 0.001, "high": 0.1},
                    "augment_strength": {"type": "uniform", "low": 0.0, "high": 1.0},
                },
                "num_samples": 1,
            },
            "scheduler": {"name": "none"},
            "resources": {"workers_per_trial": 1, "cpus_per_worker": float(threads)},
            "evaluate": {"enabled": False},
            "storage_path": storage,
        },
        source="benchmarks/train_throughput.py",
    )


def dynconv_rate(spec, cache_dir: Path, storage: Path) -> dict[str, float]:
    """Train `spec` through `train_worker` in a one-worker TorchTrainer; the last epoch's metrics."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from dynconv.data.cache_files import PreparedData
    from dynconv.train.ray_session import train_worker

    r = spec.resources
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "spec": spec.to_json_dict(),
            "cache_dir": str(cache_dir),
            "cache_fingerprint": PreparedData.open(cache_dir).fingerprint,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=1, use_gpu=False, resources_per_worker={"CPU": r.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=f"throughput-{spec.model.name}-{uuid.uuid4().hex[:8]}", storage_path=str(storage)
        ),
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    if int(metrics.get("epoch", 0)) != spec.train.epochs:
        raise RuntimeError(f"dynconv run ended at epoch {metrics.get('epoch')}, not {spec.train.epochs}")
    return metrics
