"""The decode-once cache: contents, reuse and invalidation, bad images, concurrency, pickling."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynconv.cli import main
from dynconv.data import cache
from dynconv.data.cache import prepare
from dynconv.data.cache_files import PreparedData
from dynconv.data.decode import decode_image
from dynconv.data.sources import DataError
from dynconv.data.synth import write_synthetic


@pytest.fixture
def synth(tmp_path: Path) -> Path:
    return write_synthetic(tmp_path / "synth", classes=3, per_class=5, size=16, splits=(3, 1, 1))


def _no_rebuild(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(cache, "_build", fail)


def test_prepare_builds_nchw_uint8_arrays_and_manifest(synth: Path, capsys) -> None:
    data = prepare(synth, size=12, workers=1)
    assert data.cache_dir == synth / ".dynconv_cache" / "size12"
    assert (data.num_classes, data.size, data.counts) == (3, 12, {"train": 9, "val": 3, "test": 3})
    assert data.class_names == ["00_red_circle", "01_green_square", "02_blue_triangle"]
    train = data.split("train")
    assert isinstance(train.images, np.memmap) and train.images.dtype == np.uint8
    assert train.images.shape == (9, 3, 12, 12)
    assert train.labels.dtype == np.int64 and train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    first = data.files("train")[4]
    np.testing.assert_array_equal(train.images[4], decode_image(synth / first, 12))
    manifest = data.manifest()
    assert manifest["splits"]["val"]["count"] == 3 and manifest["size"] == 12
    assert manifest["built_from"]["layout"] == "txt"
    out = capsys.readouterr().out
    assert "train" in out and "cache built" in out


def test_decoding_off_a_terminal_says_how_far_it_is_in_lines(synth: Path, monkeypatch, capsys) -> None:
    """A log file or a pipe (capsys: not a terminal) gets periodic lines, never tqdm's carriage returns."""
    monkeypatch.setattr(cache, "PROGRESS_EVERY_S", 0.0)
    prepare(synth, size=12, workers=1)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "decode train: 1/9 images" in err and "decode train: 9/9 images" in err, err
    assert "decode test: 3/3 images" in err


def test_cache_is_reused_while_nothing_changes(synth: Path, monkeypatch, capsys) -> None:
    first = prepare(synth, size=12, workers=1, progress=False)
    _no_rebuild(monkeypatch)
    again = prepare(synth, size=12, workers=1)
    assert again.fingerprint == first.fingerprint
    assert "cache reused" in capsys.readouterr().out


@pytest.mark.parametrize("change", ["list", "mtime", "content", "classes"])
def test_cache_is_rebuilt_when_its_inputs_change(synth: Path, change: str) -> None:
    first = prepare(synth, size=12, workers=1, progress=False)
    image = synth / first.files("train")[0]
    if change == "list":
        lines = (synth / "train.txt").read_text().splitlines()
        (synth / "train.txt").write_text("\n".join(lines[1:]) + "\n")
    elif change == "mtime":
        os.utime(image, ns=(time.time_ns(), image.stat().st_mtime_ns + 10**9))
    elif change == "content":
        Image.new("RGB", (16, 16), (1, 2, 3)).save(image, "JPEG")
    else:
        names = (synth / "classes.txt").read_text().replace("red_circle", "scarlet_circle")
        (synth / "classes.txt").write_text(names)
    second = prepare(synth, size=12, workers=1, progress=False)
    assert second.fingerprint != first.fingerprint
    assert second.cache_dir == first.cache_dir
    if change == "list":
        assert second.counts["train"] == 8


def test_sizes_sharing_a_cache_dir_each_keep_their_own(synth: Path, tmp_path: Path, monkeypatch) -> None:
    where = tmp_path / "cache"
    first = {size: prepare(synth, size=size, cache_dir=where, workers=1, progress=False) for size in (12, 8)}
    assert first[12].cache_dir != first[8].cache_dir
    assert all(d.cache_dir.parent == where for d in first.values())
    _no_rebuild(monkeypatch)  # asking again for either size reuses it: neither replaced the other
    for size in (12, 8, 12):
        data = prepare(synth, size=size, cache_dir=where, workers=1, progress=False)
        assert data.cache_dir == first[size].cache_dir
        assert data.split("val").images.shape[-1] == size


def test_worker_pool_gives_the_same_cache(synth: Path, tmp_path: Path) -> None:
    one = prepare(synth, size=12, cache_dir=tmp_path / "a", workers=1, progress=False)
    two = prepare(synth, size=12, cache_dir=tmp_path / "b", workers=2, progress=False)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(one.split(split).images, two.split(split).images)
        np.testing.assert_array_equal(one.split(split).labels, two.split(split).labels)


def test_concurrent_prepares_build_once_and_all_reuse(synth: Path, monkeypatch) -> None:
    builds: list[int] = []
    real_build = cache._build

    def slow_build(*args, **kwargs):
        builds.append(1)
        time.sleep(0.3)  # widen the window in which the others arrive
        return real_build(*args, **kwargs)

    monkeypatch.setattr(cache, "_build", slow_build)
    results: list[PreparedData] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(prepare(synth, size=12, workers=1, progress=False))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(builds) == 1
    assert len({r.fingerprint for r in results}) == 1
    assert all(r.split("train").images.shape == (9, 3, 12, 12) for r in results)


def test_pickles_cheaply_and_remaps_lazily(synth: Path) -> None:
    data = prepare(synth, size=12, workers=1, progress=False)
    data.split("train")
    blob = pickle.dumps(data)
    assert len(blob) < 2000
    copy = pickle.loads(blob)
    np.testing.assert_array_equal(copy.split("train").images, data.split("train").images)
    reopened = PreparedData.open(data.cache_dir)
    assert reopened.fingerprint == data.fingerprint
    os.utime(synth / "val.txt")  # content unchanged: still the same cache
    lines = (synth / "test.txt").read_text().splitlines()
    (synth / "test.txt").write_text("\n".join(lines[:-1]) + "\n")
    prepare(synth, size=12, workers=1, progress=False)  # rebuilt
    with pytest.raises(DataError, match="rebuilt after it was opened"):
        pickle.loads(blob).split("val")


def test_leftovers_are_cleaned_and_foreign_dirs_refused(synth: Path, tmp_path: Path) -> None:
    where = tmp_path / "c"
    keyed = cache.cache_location(synth, 8, where)
    dead = keyed.with_name(f".{keyed.name}.build-dead")
    dead.mkdir(parents=True)
    (dead / "train_images.u8").write_bytes(b"torn")
    prepare(synth, size=8, cache_dir=where, workers=1, progress=False)
    assert not dead.exists()
    foreign = cache.cache_location(synth, 8, tmp_path / "mine")
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="is not a dynconv cache; refusing to replace it"):
        prepare(synth, size=8, cache_dir=tmp_path / "mine", workers=1, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- bad images


def _jpeg_bytes(colour=(10, 200, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _dataset_with(root: Path, bad: dict[str, bytes | None]) -> Path:
    """Two good images per class plus ``bad`` (name -> bytes, None = listed but missing) in train."""
    lines = []
    for k in range(2):
        for i in range(2):
            rel = f"images/c{k}/{i}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(_jpeg_bytes())
            lines.append(f"{rel} {k}")
    for name, blob in bad.items():
        if blob is not None:
            (root / "images" / name).write_bytes(blob)
        lines.append(f"images/{name} 1")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").write_text("images/c0/0.jpg 0\n")
    (root / "test.txt").write_text("images/c1/0.jpg 1\n")
    return root


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (_jpeg_bytes()[:300], "truncated file"),
        (b"just some text, not an image\n", "cannot identify image file"),
        (b"", "cannot identify image file"),
        (None, "file not found"),
    ],
    ids=["truncated", "text-as-jpg", "empty", "missing"],
)
def test_bad_image_stops_the_build_naming_file_and_line(tmp_path: Path, blob, reason: str) -> None:
    root = _dataset_with(tmp_path, {"bad.jpg": blob})
    with pytest.raises(DataError) as info:
        prepare(root, size=8, workers=1, progress=False)
    message = str(info.value)
    assert f"cannot read image {root}/images/bad.jpg (train.txt:5)" in message
    assert reason in message.lower() and "--skip-bad" in message and "\n" not in message
    assert not (root / ".dynconv_cache" / "size8").exists()


def test_skip_bad_counts_and_reports_skipped_images(tmp_path: Path, capsys) -> None:
    root = _dataset_with(tmp_path, {"a.jpg": _jpeg_bytes()[:200], "b.jpg": b"text", "c.jpg": None})
    data = prepare(root, size=8, workers=1, skip_bad=True)
    assert data.counts["train"] == 4
    manifest = data.manifest()
    assert manifest["splits"]["train"]["skipped"] == 3
    assert [line.split(":")[0] for line in manifest["splits"]["train"]["skipped_files"]] == [
        "images/a.jpg",
        "images/b.jpg",
        "images/c.jpg",
    ]
    out = capsys.readouterr().out
    assert "skipped images/a.jpg" in out
    # Without --skip-bad the skipping cache is not good enough: rebuilding stops at the first bad image.
    with pytest.raises(DataError, match=r"images/a\.jpg \(train\.txt:5\)"):
        prepare(root, size=8, workers=1, progress=False)


def test_skipping_every_image_of_a_class_is_an_error(tmp_path: Path) -> None:
    root = _dataset_with(tmp_path, {})
    (root / "images" / "c1" / "0.jpg").write_bytes(b"broken")
    (root / "images" / "c1" / "1.jpg").write_bytes(b"broken")
    (root / "test.txt").write_text("images/c0/1.jpg 0\n")
    with pytest.raises(DataError, match=r"train\.txt: class 1 \('c1'\) has no readable training images"):
        prepare(root, size=8, workers=1, skip_bad=True, progress=False)


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_unusual_modes_are_converted_to_rgb(tmp_path: Path) -> None:
    palette = Image.new("P", (20, 10), 3)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 9, 99, 199] * 64)
    transparent = palette.copy()
    transparent.info["transparency"] = 3
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 10, 10))  # left half fully transparent
    files = {
        "gray.jpg": _save(Image.new("L", (30, 20), 77), "JPEG"),
        "cmyk.jpg": _save(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG"),
        "rgba.png": _save(rgba, "PNG"),
        "palette.png": _save(palette, "PNG"),
        "palette_t.png": _save(transparent, "PNG", transparency=3),
        "la.png": _save(Image.new("LA", (8, 8), (100, 255)), "PNG"),
        "gray16.png": _save(Image.fromarray(np.full((9, 9), 40000, np.uint16)), "PNG"),
        "big.jpg": _jpeg_bytes(size=(400, 300)),
    }
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
        arr = decode_image(tmp_path / name, 8)
        assert arr.shape == (3, 8, 8) and arr.dtype == np.uint8, name
    assert (decode_image(tmp_path / "gray.jpg", 8) == 77).all()
    assert decode_image(tmp_path / "palette.png", 8)[:, 0, 0].tolist() == [9, 99, 199]
    assert (decode_image(tmp_path / "palette_t.png", 8) == 255).all()  # transparent -> white
    rgba_out = decode_image(tmp_path / "rgba.png", 8)
    assert rgba_out[:, 4, 0].tolist() == [255, 255, 255] and rgba_out[:, 4, 7].tolist() == [255, 0, 0]
    assert (decode_image(tmp_path / "gray16.png", 8) == 40000 // 257).all()
    cmyk = decode_image(tmp_path / "cmyk.jpg", 8)[:, 4, 4].astype(int)
    assert cmyk.max() - cmyk.min() > 100  # a saturated colour, not gray or black
    # And through the whole build:
    root = _dataset_with(tmp_path / "ds", {name: blob for name, blob in files.items()})
    assert prepare(root, size=8, workers=1, progress=False).counts["train"] == 4 + len(files)


def _prepare_in_child(root: str, queue) -> None:
    data = prepare(Path(root), size=12, workers=1, progress=False)
    queue.put((data.fingerprint, int(data.split("train").images.sum())))


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_concurrent_processes_all_read_a_complete_cache(synth: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(str(synth), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(set(results)) == 1
    data = prepare(synth, size=12, workers=1, progress=False)
    assert results[0] == (data.fingerprint, int(data.split("train").images.sum()))


def test_open_without_a_cache_and_cli_prepare(synth: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(DataError, match="no dynconv cache here"):
        PreparedData.open(tmp_path / "nothing")
    assert main(["data", "prepare", str(synth), "--size", "8", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "cache built" in out and "train" in out and "skipped" in out
    keyed = cache.cache_location(synth, 8, tmp_path / "c")  # one subdirectory per dataset and size
    assert PreparedData.open(keyed).counts == {"train": 9, "val": 3, "test": 3}


def test_folder_layout_builds_and_names_a_bad_image(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        for k, cls in enumerate(("bee", "ant")):
            (tmp_path / split / cls).mkdir(parents=True)
            (tmp_path / split / cls / "a.JPG").write_bytes(_jpeg_bytes(colour=(50 + 100 * k, 0, 0)))
    data = prepare(tmp_path, size=8, workers=1, progress=False)
    assert data.class_names == ["ant", "bee"] and data.counts == {"train": 2, "val": 2, "test": 2}
    assert data.split("test").labels.tolist() == [0, 1]
    assert data.split("test").images[0, 0].mean() > data.split("test").images[1, 0].mean()  # ant is redder
    (tmp_path / "val" / "ant" / "b.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=rf"cannot read image {tmp_path}/val/ant/b\.png: "):
        prepare(tmp_path, size=8, workers=1, progress=False)
