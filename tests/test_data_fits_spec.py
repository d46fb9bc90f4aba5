"""Data that cannot train or score a spec's study is one line when it is prepared, before Ray starts
(issue 23): a train split smaller than one full batch per worker, a split of one class, a val/test class
without training images. Small synthetic sets and hand-made folders; no Ray. (~10 s.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dynconv import cli
from dynconv.data.cache import prepare
from dynconv.data.cache_files import MANIFEST, content_digests
from dynconv.data.loader import ShardedBatches
from dynconv.data.sources import DataError
from dynconv.data.synth import write_synthetic
from dynconv.errors import DynconvError
from dynconv.spec import JobSpec, parse_spec
from dynconv.spec.data import prepare_for_spec
from tests.conftest import tiny_spec_dict

SEARCHED_SPACE = {
    "lr": {"type": "loguniform", "low": 0.01, "high": 0.2},
    "augment_strength": {"type": "uniform", "low": 0.0, "high": 0.5},
}


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """3 classes x 10 images, 6/2/2 per class: 18 train, 6 val, 6 test images."""
    return write_synthetic(tmp_path / "small", classes=3, per_class=10, size=16, splits=(6, 2, 2))


def _spec(tmp_path: Path, root: Path, **sections) -> JobSpec:
    return parse_spec(tiny_spec_dict(tmp_path, root, **sections))


def _refusal(spec: JobSpec) -> str:
    with pytest.raises(DataError) as err:
        prepare_for_spec(spec, progress=False)
    message = str(err.value)
    assert "\n" not in message
    return message


def _one_class_folder(root: Path) -> Path:
    """Folder layout with one class, 'cat': 4 train, 2 val, 2 test images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        (root / split / "cat").mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / "cat" / f"{i}.png")
    return root


# ------------------------------------------------------------------------------ batch size


def test_a_train_split_smaller_than_a_batch_per_worker_is_refused(tmp_path: Path, small: Path) -> None:
    spec = _spec(tmp_path, small, train={"batch_size": 16}, resources={"workers_per_trial": 2})
    message = _refusal(spec)
    assert message == (
        f"train.batch_size 16 × 2 workers exceeds the 18 images of the train split of {small}, so an "
        "epoch would have no full batch; lower train.batch_size or resources.workers_per_trial"
    )


def test_the_batch_check_matches_what_training_batches(tmp_path: Path, small: Path) -> None:
    """9 x 2 = 18 fits (one full batch per rank, as `fit` shards it); 10 x 2 does not, in either place."""
    data = prepare_for_spec(_spec(tmp_path, small, train={"batch_size": 9}), progress=False)
    labels = data.split("train").labels
    assert [len(ShardedBatches(labels, labels, 9, rank=r, world_size=2)) for r in (0, 1)] == [1, 1]
    with pytest.raises(DataError, match=r"train\.batch_size 10 × 2 workers exceeds the 18 images"):
        prepare_for_spec(_spec(tmp_path, small, train={"batch_size": 10}), progress=False)
    with pytest.raises(DynconvError, match="exceeds the 18 samples"):
        ShardedBatches(labels, labels, 10, rank=0, world_size=2)


def test_the_largest_searched_batch_size_must_fit(tmp_path: Path, small: Path) -> None:
    space = {**SEARCHED_SPACE, "batch_size": {"type": "choice", "values": [8, 32]}}
    spec = _spec(tmp_path, small, search={"space": space}, resources={"workers_per_trial": 1})
    message = _refusal(spec)
    assert message.startswith(
        "search.space.batch_size 32 × 1 worker exceeds the 18 images of the train split"
    )
    assert message.endswith("lower search.space.batch_size or resources.workers_per_trial")
    space["batch_size"]["values"] = [8, 18]
    prepare_for_spec(_spec(tmp_path, small, search={"space": space}, resources={"workers_per_trial": 1}))


# ----------------------------------------------------------------------------------- classes


def test_a_one_class_dataset_is_refused(tmp_path: Path) -> None:
    """It used to train and report 100 % on every metric."""
    root = _one_class_folder(tmp_path / "one")
    spec = _spec(tmp_path, root, train={"batch_size": 2}, resources={"workers_per_trial": 1})
    assert _refusal(spec) == (
        f"{root}: the train split holds images of only one class (0 ('cat')), so every metric would read "
        "100 %; a study needs at least 2 classes in each split it uses (train, val, test)"
    )


@pytest.mark.parametrize(("split", "evaluate_split"), [("val", "test"), ("test", "test"), ("test", "val")])
def test_a_used_split_of_one_class_is_refused(tmp_path: Path, small: Path, split, evaluate_split) -> None:
    """val is used by training, `evaluate.split` by the evaluation; a split used by neither may hold one."""
    listing = small / f"{split}.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join(line for line in lines if line.endswith(" 1")) + "\n")
    spec = _spec(tmp_path, small, train={"batch_size": 8}, evaluate={"split": evaluate_split})
    if split == "test" and evaluate_split == "val":
        prepare_for_spec(spec, progress=False)
        return
    message = _refusal(spec)
    assert f"the {split} split holds images of only one class (1 ('01_green_square'))" in message
    assert message.endswith(f"each split it uses (train, val{', test' if evaluate_split == 'test' else ''})")


def test_a_val_class_missing_from_train_is_refused(tmp_path: Path, small: Path) -> None:
    """The dataset checks refuse such lists, so the cache's training labels are edited afterwards, with
    the manifest's digests to match (as in a cache built by other means; without them `prepare` would
    rebuild the edited cache): the check reads the prepared labels, not the lists."""
    spec = _spec(tmp_path, small, train={"batch_size": 8})
    data = prepare_for_spec(spec, progress=False)
    labels = np.load(data.cache_dir / "train_labels.npy")
    edited = np.where(labels == 2, 1, labels)
    np.save(data.cache_dir / "train_labels.npy", edited)
    manifest = json.loads((data.cache_dir / MANIFEST).read_text())
    manifest["splits"]["train"]["digests"] = content_digests(data.split("train").images, edited)
    (data.cache_dir / MANIFEST).write_text(json.dumps(manifest))
    assert _refusal(spec) == (
        f"{small}: class 2 ('02_blue_triangle') of the val split has no images in the train split, so the "
        "model cannot learn it; add training images or drop the class"
    )


def test_dynconv_tune_on_a_one_class_dataset_is_one_line_before_ray(tmp_path: Path, capsys) -> None:
    root = _one_class_folder(tmp_path / "one")
    path = tmp_path / "one.yaml"
    data = tiny_spec_dict(tmp_path, root, train={"batch_size": 2}, resources={"workers_per_trial": 1})
    path.write_text(yaml.safe_dump(data))
    prepare(root, size=16, cache_dir=tmp_path / "cache", progress=False)  # no progress bars on stderr
    code = cli.main(["tune", str(path)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"dynconv: error: {root}: the train split holds images of only one class")
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
