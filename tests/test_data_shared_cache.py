"""A cache that cannot serve the wrong data: studies sharing one `data.cache_dir` (and one synthetic `dir`)
with different datasets or sizes each get their own data, and a worker refuses a cache other than the
one its driver prepared. No Ray: `train_worker` checks the cache before it touches Ray Train."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dynconv.data.cache import prepare
from dynconv.data.cache_files import PreparedData
from dynconv.data.loader import ShardedBatches
from dynconv.data.sources import DataError
from dynconv.data.synth import write_synthetic
from dynconv.spec import JobSpec
from dynconv.spec.data import prepare_for_spec
from dynconv.train.ray_session import train_worker
from tests.conftest import TINY_SPEC


def _spec(tmp_path: Path, study: str, image_size: int, classes: int) -> JobSpec:
    """A tiny spec; every study shares one cache_dir and one synthetic dir (as cluster specs do). Batches
    of 8 on 2 workers, so the 21 training images of 3 classes × 10 hold a full batch per worker."""
    data = {
        **TINY_SPEC,
        "study": study,
        "train": {**TINY_SPEC["train"], "batch_size": 8},
        "data": {
            "image_size": image_size,
            "cache_dir": str(tmp_path / "shared_cache"),
            "synthetic": {"dir": str(tmp_path / "syn"), "classes": classes, "per_class": 10, "size": 16},
        },
    }
    return JobSpec.model_validate(data)


def _batch_shape(data: PreparedData, split: str = "train") -> tuple[int, ...]:
    arrays = data.split(split)
    x, _ = next(iter(ShardedBatches(arrays.images, arrays.labels, batch_size=4, shuffle=False)))
    return tuple(x.shape)


def test_two_studies_interleaved_in_one_cache_dir_each_get_their_own_data(tmp_path: Path) -> None:
    a, b = _spec(tmp_path, "a", 16, 3), _spec(tmp_path, "b", 12, 4)
    first_a = prepare_for_spec(a, progress=False)
    first_b = prepare_for_spec(b, progress=False)  # used to rebuild a's cache (and a's synthetic set)
    again_a = prepare_for_spec(a, progress=False)
    assert again_a.cache_dir == first_a.cache_dir and again_a.fingerprint == first_a.fingerprint
    assert first_a.cache_dir != first_b.cache_dir and first_a.cache_dir.parent == first_b.cache_dir.parent
    # What each study's workers open, by the fingerprint its driver prepared, after the other prepared:
    worker_a = PreparedData.open(first_a.cache_dir, fingerprint=first_a.fingerprint)
    worker_b = PreparedData.open(first_b.cache_dir, fingerprint=first_b.fingerprint)
    assert _batch_shape(worker_a) == (4, 3, 16, 16) and worker_a.num_classes == 3
    assert _batch_shape(worker_b) == (4, 3, 12, 12) and worker_b.num_classes == 4
    assert set(worker_a.split("train").labels.tolist()) == {0, 1, 2}
    assert set(worker_b.split("train").labels.tolist()) == {0, 1, 2, 3}


def test_two_datasets_and_sizes_interleaved_in_one_cache_dir(tmp_path: Path) -> None:
    one = write_synthetic(tmp_path / "one", classes=2, per_class=10, size=16, seed=1, splits=(6, 2, 2))
    two = write_synthetic(tmp_path / "two", classes=3, per_class=10, size=16, seed=2, splits=(6, 2, 2))
    shared = tmp_path / "cache"
    prepared = {}
    for root, size in [(one, 16), (two, 16), (one, 8), (two, 8), (one, 16)]:
        data = prepare(root, size=size, cache_dir=shared, workers=1, progress=False)
        prepared.setdefault((root.name, size), data)
        assert data.fingerprint == prepared[(root.name, size)].fingerprint  # never rebuilt by another
    assert len({d.cache_dir for d in prepared.values()}) == 4
    for (name, size), data in prepared.items():
        opened = PreparedData.open(data.cache_dir, fingerprint=data.fingerprint)
        assert _batch_shape(opened) == (4, 3, size, size)
        assert opened.num_classes == (2 if name == "one" else 3)


def test_worker_refuses_a_cache_other_than_the_prepared_one(tmp_path: Path, monkeypatch) -> None:
    from dynconv.spec.metrics import ended_by_error
    from dynconv.train import ray_session

    a, b = _spec(tmp_path, "a", 16, 3), _spec(tmp_path, "b", 12, 3)
    data_a, data_b = prepare_for_spec(a, progress=False), prepare_for_spec(b, progress=False)
    config = {
        "spec": a.to_json_dict(),
        "cache_dir": str(data_a.cache_dir),
        "cache_fingerprint": data_b.fingerprint,
    }
    reports = []

    class Session:  # stands in for the Ray Train worker's session: records what the worker reports
        world_size = 1

        def __init__(self, resume_globs=()) -> None:
            pass

        def report(self, metrics, state) -> None:
            reports.append((metrics, state))

    monkeypatch.setattr(ray_session, "RaySession", Session)
    train_worker(config)  # ends the trial with its line instead of raising: a retry would fail the same way
    [(result, state)] = reports
    message = ended_by_error(result)
    assert "\n" not in message and "holds other data" in message and data_b.fingerprint[:12] in message
    assert state is None and math.isnan(result["val_acc"]), "no checkpoint, and no value to rank"

    Session.world_size = 2  # a DDP worker raises: its peers must fail with it, not wait for it
    with pytest.raises(DataError, match="holds other data"):
        train_worker(config)
    assert len(reports) == 1


def test_worker_refuses_a_cache_rebuilt_after_the_driver_prepared_it(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "a", 16, 3)
    prepared = prepare_for_spec(spec, progress=False)
    root = Path(spec.data.synthetic.dir)
    (listing,) = [p for p in root.iterdir() if p.is_dir()]
    lines = (listing / "test.txt").read_text().splitlines()
    (listing / "test.txt").write_text("\n".join(lines[:-1]) + "\n")  # the dataset changes on disk
    prepare(listing, size=16, cache_dir=tmp_path / "shared_cache", workers=1, progress=False)
    with pytest.raises(DataError, match="holds other data"):
        PreparedData.open(prepared.cache_dir, fingerprint=prepared.fingerprint)
