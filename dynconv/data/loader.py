"""Sharded, per-epoch shuffled uint8 batches straight from the memory-mapped cache.

No worker processes and no per-sample Python work: a batch is one fancy-index into the memmap (the
page cache serves repeated epochs), turned into a tensor. Normalisation and augmentation happen on
the training device (:mod:`dynconv.data.augment`).

Sharding: in epoch ``e`` the sample order is a permutation drawn from ``(seed, e)`` (identity when
``shuffle=False``), and rank ``r`` of ``world_size`` takes positions ``r, r + world_size, ...`` of it,
so the shards are disjoint and together cover the split. Every rank yields the same number of batches,
so DDP ranks never wait on one another:

* ``drop_last=True`` (training): each rank takes ``N // world_size`` samples (the at most
  ``world_size - 1`` left over change every epoch) and yields only full batches (a split too small
  for one full batch per rank is a DynconvError, not a silent epoch without steps).
* ``drop_last=False`` (evaluation): nothing is dropped or repeated; each rank splits its shard into
  ``ceil(ceil(N / world_size) / batch_size)`` nearly equal batches (each at most ``batch_size``; a rank
  gets an empty batch only when N < world_size). Each rank sees different samples, so evaluation
  metrics must be summed across ranks (e.g. ``all_reduce`` of correct and total counts).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from dynconv.errors import DynconvError

Batch = tuple[torch.Tensor, torch.Tensor]


class ShardedBatches:
    """Iterable of ``(x_uint8 (B, 3, H, W), y int64 (B,))`` CPU tensors for one rank; see module doc."""

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.images = images
        self.labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.epoch = 0
        if drop_last and len(labels) > 0 and len(self) == 0:
            raise DynconvError(
                f"batch size {batch_size} x {world_size} worker(s) exceeds the {len(labels)} samples of the "
                "split, so an epoch would have no full batch; lower the batch size or the number of workers"
            )

    @classmethod
    def from_split(cls, split, batch_size: int, **kwargs) -> ShardedBatches:
        """Batches over a :class:`dynconv.data.cache_files.SplitArrays`."""
        return cls(split.images, split.labels, batch_size, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next iteration uses (call it every epoch, as in DDP)."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before dropping an incomplete last batch)."""
        n = len(self.labels)
        if self.drop_last:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = len(self.labels)
        if self.drop_last:
            return (n // self.world_size) // self.batch_size
        return math.ceil(math.ceil(n / self.world_size) / self.batch_size)

    def shard(self, epoch: int | None = None) -> np.ndarray:
        """Indices (into the split) this rank visits in ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.labels)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        if self.drop_last:
            order = order[: (n // self.world_size) * self.world_size]
        return order[self.rank :: self.world_size]

    def batch_indices(self, epoch: int | None = None) -> list[np.ndarray]:
        """The index array of every batch this rank yields in ``epoch``."""
        shard = self.shard(epoch)
        if self.drop_last:
            count = len(self)
            return [shard[i * self.batch_size : (i + 1) * self.batch_size] for i in range(count)]
        return list(np.array_split(shard, len(self))) if len(self) else []

    def __iter__(self) -> Iterator[Batch]:
        for idx in self.batch_indices():
            yield self._gather(idx)

    def _gather(self, idx: np.ndarray) -> Batch:
        # Sorted reads are sequential in the memmap; the set of samples (and so the batch) is the same.
        idx = np.sort(idx)
        if isinstance(self.images, torch.Tensor):
            x = self.images[torch.from_numpy(idx)]
        else:
            x = torch.from_numpy(np.ascontiguousarray(self.images[idx]))
        y = torch.from_numpy(self.labels[idx].astype(np.int64, copy=False))
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y
