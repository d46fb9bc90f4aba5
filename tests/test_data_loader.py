"""ShardedBatches: disjoint and complete shards, equal batch counts across ranks, per-epoch reshuffling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynconv.data.loader import ShardedBatches
from dynconv.errors import DynconvError


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixels hold their own index (mod 256) and labels equal to the index."""
    images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, 3, 4, 4)).copy()
    return images, np.arange(n, dtype=np.int64)


def _epoch(n: int, world: int, batch: int, epoch: int, **kwargs) -> list[list[int]]:
    images, labels = _data(n)
    per_rank = []
    for rank in range(world):
        loader = ShardedBatches(images, labels, batch, rank=rank, world_size=world, **kwargs)
        loader.set_epoch(epoch)
        seen = []
        for x, y in loader:
            assert x.dtype == torch.uint8 and y.dtype == torch.int64
            assert x.shape[1:] == (3, 4, 4) and len(x) == len(y)
            assert torch.equal(x[:, 0, 0, 0].long(), y % 256)  # images and labels stay paired
            seen.extend(y.tolist())
        assert len(loader) == len(loader.batch_indices())
        per_rank.append(seen)
    return per_rank


@pytest.mark.parametrize(("n", "world", "batch"), [(10, 1, 3), (10, 3, 4), (9, 2, 4), (23, 4, 5), (3, 4, 2)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_eval_mode_shards_are_disjoint_complete_and_equal_in_count(n, world, batch, shuffle) -> None:
    images, labels = _data(n)
    loaders = [
        ShardedBatches(images, labels, batch, rank=r, world_size=world, shuffle=shuffle, drop_last=False)
        for r in range(world)
    ]
    assert len({len(loader) for loader in loaders}) == 1
    seen = _epoch(n, world, batch, epoch=1, shuffle=shuffle, drop_last=False)
    flat = [i for rank in seen for i in rank]
    assert sorted(flat) == list(range(n))  # complete, no duplicates
    for loader in loaders:
        assert all(len(b) <= batch for b in loader.batch_indices())


@pytest.mark.parametrize(("n", "world", "batch"), [(10, 1, 3), (10, 3, 2), (23, 4, 2), (100, 3, 7)])
def test_training_mode_gives_full_equal_batches_on_disjoint_shards(n, world, batch) -> None:
    seen = _epoch(n, world, batch, epoch=0)
    expected = (n // world) // batch * batch
    assert all(len(rank) == expected for rank in seen)
    flat = [i for rank in seen for i in rank]
    assert len(set(flat)) == len(flat)
    shards = [set(ShardedBatches(*_data(n), batch, rank=r, world_size=world).shard(0)) for r in range(world)]
    assert sum(len(s) for s in shards) == n - n % world  # only the remainder of N / world is left out
    assert len(set().union(*shards)) == n - n % world


def test_reshuffled_every_epoch_and_reproducible_from_the_seed() -> None:
    first = _epoch(50, 2, 5, epoch=0, seed=7)
    assert first == _epoch(50, 2, 5, epoch=0, seed=7)
    assert first != _epoch(50, 2, 5, epoch=1, seed=7)
    assert first != _epoch(50, 2, 5, epoch=0, seed=8)
    ordered = _epoch(50, 1, 5, epoch=3, shuffle=False, drop_last=False)
    assert ordered == [list(range(50))]


def test_tensor_input_and_argument_checks() -> None:
    images, labels = _data(6)
    loader = ShardedBatches(torch.from_numpy(images), torch.from_numpy(labels), 2, shuffle=False)
    assert [y.tolist() for _, y in loader] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="rank"):
        ShardedBatches(images, labels, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        ShardedBatches(images, labels, 0)
    with pytest.raises(ValueError, match="differ in length"):
        ShardedBatches(images, labels[:3], 2)
    with pytest.raises(DynconvError, match="batch size 4 x 2 worker"):
        ShardedBatches(images, labels, 4, world_size=2)
    assert len(ShardedBatches(images, labels, 4, world_size=2, drop_last=False)) == 1
