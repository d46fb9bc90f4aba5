"""A cache damaged in place (same sizes, other content) is found: `prepare` rebuilds it with one warning,
a training worker (`PreparedData.open`) refuses it in one line; an intact cache opens as before."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from dynconv.data import cache
from dynconv.data.cache import prepare
from dynconv.data.cache_files import FORMAT_VERSION, SAMPLED_IMAGES, PreparedData, content_digests
from dynconv.data.sources import DataError
from dynconv.data.synth import write_synthetic


@pytest.fixture
def synth(tmp_path: Path) -> Path:
    return write_synthetic(tmp_path / "synth", classes=3, per_class=5, size=16, splits=(3, 1, 1))


def _zero_labels(cache_dir: Path) -> None:
    path = cache_dir / "train_labels.npy"
    size = path.stat().st_size
    labels = np.load(path)
    labels[:] = 0
    np.save(path, labels)
    assert path.stat().st_size == size  # same size: only the content tells


def _overwrite_image_bytes(cache_dir: Path) -> None:
    path = cache_dir / "train_images.u8"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(4 * 3 * 12 * 12 + 100)  # inside image 4
        f.write(b"\x00" * 64)
    assert path.stat().st_size == size


DAMAGE = {
    "labels zeroed": (_zero_labels, r"train_labels\.npy holds other labels than were recorded"),
    "image bytes overwritten": (
        _overwrite_image_bytes,
        r"image 4 \(images/01_green_square/01_green_square_0001\.jpg\) in train_images\.u8 differs",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_worker_refuses_a_cache_damaged_in_place(synth: Path, damage: str) -> None:
    data = prepare(synth, size=12, workers=1, progress=False)
    corrupt, what = DAMAGE[damage]
    corrupt(data.cache_dir)
    opened = PreparedData.open(data.cache_dir, fingerprint=data.fingerprint)  # the manifest still matches
    with pytest.raises(DataError) as info:
        opened.split("train")
    message = str(info.value)
    assert message.startswith(f"{data.cache_dir}: ") and "\n" not in message
    assert re.search(what, message)
    assert f"delete {data.cache_dir}" in message and "dynconv data prepare" in message
    assert opened.split("val").images.shape == (3, 3, 12, 12)  # the intact splits still open


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_prepare_rebuilds_a_cache_damaged_in_place_with_one_warning(synth: Path, damage: str, caplog) -> None:
    first = prepare(synth, size=12, workers=1, progress=False)
    labels = first.split("train").labels.copy()
    images = np.array(first.split("train").images)
    corrupt, what = DAMAGE[damage]
    corrupt(first.cache_dir)
    with caplog.at_level(logging.WARNING, logger="dynconv.data.cache"):
        again = prepare(synth, size=12, workers=1, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{first.cache_dir}: ") and warnings[0].endswith("; rebuilding the cache")
    assert re.search(what, warnings[0])
    np.testing.assert_array_equal(again.split("train").labels, labels)
    np.testing.assert_array_equal(again.split("train").images, images)
    PreparedData.open(again.cache_dir, fingerprint=first.fingerprint).split("train")  # workers open it again


def test_a_truncated_cache_is_rebuilt_with_a_warning_and_refused_by_a_worker(synth: Path, caplog) -> None:
    data = prepare(synth, size=12, workers=1, progress=False)
    with open(data.cache_dir / "test_images.u8", "r+b") as f:
        f.truncate(100)
    truncated = "cannot map the test split (mmap length is greater than file size)"
    with pytest.raises(DataError, match=re.escape(truncated)):
        PreparedData.open(data.cache_dir, fingerprint=data.fingerprint).split("test")
    with caplog.at_level(logging.WARNING, logger="dynconv.data.cache"):
        again = prepare(synth, size=12, workers=1, progress=False)
    assert [r.getMessage() for r in caplog.records] == [
        f"{data.cache_dir}: {truncated}; rebuilding the cache"
    ]
    assert again.split("test").images.shape == (3, 3, 12, 12)


def test_an_untouched_cache_opens_without_rebuilding_or_warning(synth: Path, monkeypatch, caplog) -> None:
    first = prepare(synth, size=12, workers=1, progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(cache, "_build", fail)
    with caplog.at_level(logging.DEBUG, logger="dynconv.data"):
        again = prepare(synth, size=12, workers=1, progress=False)
        opened = PreparedData.open(first.cache_dir, fingerprint=first.fingerprint)
        for split in ("train", "val", "test"):
            np.testing.assert_array_equal(opened.split(split).labels, first.split(split).labels)
    assert again.fingerprint == first.fingerprint
    assert not caplog.records


def test_an_old_format_cache_is_rebuilt_and_refused_by_a_worker(synth: Path, caplog) -> None:
    data = prepare(synth, size=12, workers=1, progress=False)
    manifest_path = data.cache_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 2  # as dynconv wrote it before content digests: no "digests" per split
    for split in manifest["splits"].values():
        del split["digests"]
    manifest_path.write_text(json.dumps(manifest))
    old = f"cache format 2, but this dynconv reads format {FORMAT_VERSION}"
    with pytest.raises(DataError, match=re.escape(f"no dynconv cache here ({old})")):
        PreparedData.open(data.cache_dir, fingerprint=data.fingerprint)
    with caplog.at_level(logging.WARNING, logger="dynconv.data.cache"):
        again = prepare(synth, size=12, workers=1, progress=False)
    assert [r.getMessage() for r in caplog.records] == [f"{data.cache_dir}: {old}; rebuilding the cache"]
    assert again.manifest()["format_version"] == FORMAT_VERSION
    assert again.manifest()["splits"]["train"]["digests"]["images"]


def test_digests_cover_all_labels_and_evenly_spaced_images() -> None:
    images = np.arange(1000 * 3 * 2 * 2, dtype=np.uint64).astype(np.uint8).reshape(1000, 3, 2, 2)
    labels = np.arange(1000) % 7
    digests = content_digests(images, labels)
    picked = [i for i, _ in digests["images"]]
    assert len(picked) == SAMPLED_IMAGES and picked[0] == 0 and picked[-1] == 999
    assert max(np.diff(picked)) <= 1000 // (SAMPLED_IMAGES - 1) + 1
    assert [i for i, _ in content_digests(images[:10], labels[:10])["images"]] == list(range(10))
    changed = labels.copy()
    changed[500] = 0  # one label anywhere changes the labels digest
    assert content_digests(images, changed)["labels"] != digests["labels"]
    assert content_digests(images, changed)["images"] == digests["images"]
