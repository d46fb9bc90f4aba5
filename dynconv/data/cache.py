"""The decode-once cache: every image decoded, converted to RGB and resized once, then memory-mapped.

Where a cache lives: ``ROOT/.dynconv_cache/size{SIZE}`` by default; under a given ``cache_dir`` (shared by
several datasets and studies, e.g. ``/mnt/shared/dynconv_cache``) each dataset and image size gets its own
subdirectory ``{ROOT NAME}-{KEY}-size{SIZE}`` (KEY: a digest of the resolved root path, the size and the
decode format version), so two studies at different sizes or on different datasets never rebuild each
other's cache. Workers open a cache with the fingerprint the driver prepared (:meth:`PreparedData.open`)
and fail in one line if it holds anything else.

The layout of a cache directory, reading it (:class:`PreparedData`) and the file-system primitives
(durable writes, rename into place, locks) are in :mod:`dynconv.data.cache_files`; image decoding is in
:mod:`dynconv.data.decode`. This module decides where a cache lives, whether it is current, and builds
it; every public name of the three is importable from here.

The cache is reused while its manifest's fingerprint matches the dataset: the split lists (or folder
listing), the class list, the size and mtime of every image, the image size and the format version.
Anything else triggers a rebuild. A cache whose own files were damaged since it was built (missing,
truncated, or changed in place: its labels or sampled images no longer match the digests the manifest
recorded, see :func:`dynconv.data.cache_files.content_digests`), or of an older format, is rebuilt too,
with one logged warning saying why: it is only derived data, and ``prepare`` can always remake it.

Concurrency: a cache is built in a temporary sibling directory and renamed into place only when it is
complete, under an exclusive ``fcntl.flock`` on ``.{name}.lock`` next to it; readers hold a shared lock
while they check the manifest and map the arrays. So when several trials or workers on one node ask for
the same cache at once, one builds it, the others wait and then reuse it, and nobody ever reads a torn
or half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dynconv.data.cache_files import (
    FORMAT_VERSION,
    MANIFEST,
    CacheDamaged,
    PreparedData,
    cache_lock,
    content_digests,
    lock_path,
    read_manifest,
    remove_leftovers,
    swap_into_place,
    unusable_reason,
    write_durable,
)
from dynconv.data.decode import decoder, usable_cores
from dynconv.data.leakage import find_leakage, leakage_line
from dynconv.data.sources import (
    SPLITS,
    DataError,
    DatasetSource,
    load_source,
    not_images_line,
    require_train_classes,
)
from dynconv.errors import one_line

__all__ = ["cache_location", "default_cache_dir", "fingerprint", "prepare", "print_summary"]

PROGRESS_EVERY_S = 30.0  # off a terminal, a decoding split says how far it is this often
_AUTO_IMAGES_PER_WORKER = 256  # with workers=None, small datasets are decoded in-process
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ prepare


def default_cache_dir(root: Path, size: int) -> Path:
    """Where :func:`prepare` keeps a cache unless told otherwise: ``ROOT/.dynconv_cache/size{SIZE}``."""
    return Path(root) / ".dynconv_cache" / f"size{size}"


def cache_location(root: Path, size: int, cache_dir: Path | None = None) -> Path:
    """The cache of dataset ``root`` at ``size``: the default, or a keyed subdirectory of ``cache_dir``.

    The key covers what changes the decoded bytes apart from the files themselves (the resolved root,
    the size, the decode format version), so datasets and sizes sharing one ``cache_dir`` never collide;
    changes to the files are caught by the full fingerprint in the manifest.
    """
    if cache_dir is None:
        return default_cache_dir(root, size)
    resolved = Path(root).resolve()
    ident = {"root": str(resolved), "size": size, "format_version": FORMAT_VERSION}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in resolved.name).lstrip(".") or "data"
    return Path(cache_dir) / f"{name}-{key}-size{size}"


def prepare(
    root: Path,
    size: int = 84,
    cache_dir: Path | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    num_classes: int | None = None,
    strict: bool = False,
    max_pixels: int | None = None,
) -> PreparedData:
    """Return the decode-once cache of the dataset at ``root``, building it only when needed.

    ``cache_dir``: a directory shared by caches (each dataset and size in its own subdirectory, see
    :func:`cache_location`); default ``ROOT/.dynconv_cache``.
    ``workers``: decoding processes (default: the usable cores, fewer for small datasets).
    ``skip_bad``: skip unreadable images and count them; without it the first one raises a DataError
    naming the file (and its list line). ``progress``: a line counting the files of the folder layout
    that are not images (by extension), a progress bar while decoding, and a per-split summary at the end.
    ``num_classes``: when given, checked against the dataset. ``strict``: images
    with identical pixels in two splits (always counted and reported) are an error.
    ``max_pixels``: the decode budget (`data.max_pixels`, `--max-pixels`; None: none): an image of more
    pixels is unreadable (:class:`dynconv.data.decode.ImageTooLarge`), refused before it is decoded. It
    guards decoding only, so it is not part of the fingerprint: a cache is reused whatever the budget,
    unless it skipped images under a smaller budget than this one (they may decode now: it is rebuilt).
    """
    if not isinstance(size, int) or size < 1:
        raise DataError(f"image size must be a positive integer, got {size!r}")
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
        raise DataError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if workers is not None and workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    source = load_source(Path(root), num_classes)
    skipped_line = not_images_line(source)
    if progress and skipped_line:
        print(skipped_line)
    fp = fingerprint(source, size)
    cache_dir = cache_location(Path(root), size, Path(cache_dir) if cache_dir is not None else None)
    lock = lock_path(cache_dir)

    with cache_lock(lock, shared=True):
        data, _ = _open_if_current(cache_dir, fp, skip_bad, max_pixels)
    if data is None:
        try:
            cache_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"{cache_dir}: cannot create the cache directory ({one_line(exc)}); use --cache-dir"
            ) from None
        with cache_lock(lock, shared=False):
            # another process may have built it meanwhile
            data, unusable = _open_if_current(cache_dir, fp, skip_bad, max_pixels)
            if data is None:
                if unusable:
                    log.warning("%s: %s; rebuilding the cache", cache_dir, unusable)
                _build(source, size, fp, cache_dir, workers, skip_bad, progress, max_pixels)
                data, unusable = _open_if_current(cache_dir, fp, True, max_pixels)
                if data is None:
                    raise DataError(f"{cache_dir}: the cache just built cannot be opened ({unusable})")
                if progress:
                    print_summary(data.manifest(), cache_dir, reused=False)
                return _check_leakage(data, source.root, strict)
    if progress:
        print_summary(data.manifest(), cache_dir, reused=True)
    return _check_leakage(data, source.root, strict)


def _check_leakage(data: PreparedData, root: Path, strict: bool) -> PreparedData:
    line = leakage_line(data.manifest().get("leakage", {}))
    if strict and line:
        raise DataError(f"{root}: {line}; remove the duplicates, or run without --strict to only report them")
    return data


def fingerprint(source: DatasetSource, size: int) -> str:
    """A digest of everything a cache depends on: lists, classes, each file's size and mtime, size."""
    h = hashlib.sha256()
    head = {
        "format_version": FORMAT_VERSION,
        "size": size,
        "layout": source.layout,
        "lists": source.list_digests,
        "num_classes": source.num_classes,
        "class_names": source.class_names,
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for split in SPLITS:
        h.update(f"\n[{split}]\n".encode())
        for e in source.splits[split]:
            try:
                st = os.stat(source.path(e))
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"{e.rel}\0{e.label}\0{stamp}\n".encode())
    return h.hexdigest()


def _open_if_current(
    cache_dir: Path, fp: str, skip_bad: bool, max_pixels: int | None
) -> tuple[PreparedData | None, str | None]:
    """The cache at ``cache_dir`` when it holds the data of fingerprint ``fp``, intact; else None and,
    when the cache is unusable rather than merely of other data, why (for the rebuild's warning)."""
    manifest = read_manifest(cache_dir)
    if manifest is None:
        exists = (cache_dir / MANIFEST).exists()
        return None, unusable_reason(cache_dir) if exists else None
    if manifest.get("fingerprint") != fp:
        return None, None  # the dataset, size or class list changed: an ordinary rebuild
    skipped = any(manifest["splits"][s]["skipped"] for s in SPLITS)
    if not skip_bad and skipped:
        return None, None  # built with --skip-bad; without it the bad image must stop the build
    if skipped and _budget_raised(manifest.get("max_pixels"), max_pixels):
        return None, None  # an image skipped as too large may fit the larger budget
    try:
        return PreparedData.mapped(cache_dir, manifest), None
    except CacheDamaged as exc:
        return None, exc.what


def _budget_raised(built_with: int | None, now: int | None) -> bool:
    """Whether the decode budget ``now`` admits images that ``built_with`` refused (None: no budget)."""
    return built_with is not None and (now is None or now > built_with)


# -------------------------------------------------------------------------------- build


def _build(
    source: DatasetSource,
    size: int,
    fp: str,
    cache_dir: Path,
    workers: int | None,
    skip_bad: bool,
    progress: bool,
    max_pixels: int | None,
) -> None:
    """Decode everything into a temporary directory, then move it into place (caller holds the lock)."""
    foreign = cache_dir.exists() and not (cache_dir / MANIFEST).is_file()
    if foreign and (not cache_dir.is_dir() or any(cache_dir.iterdir())):
        raise DataError(f"{cache_dir}: exists and is not a dynconv cache; refusing to replace it")
    remove_leftovers(cache_dir)
    total = sum(len(v) for v in source.splits.values())
    if workers is None:
        workers = min(usable_cores(), max(1, total // _AUTO_IMAGES_PER_WORKER))
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.build-", dir=cache_dir.parent))
    try:
        os.chmod(tmp, 0o755)
        digests: dict[str, list[tuple[str, str]]] = {}
        with decoder(workers) as decode:
            splits = {
                s: _build_split(source, s, size, max_pixels, tmp, decode, skip_bad, progress, digests)
                for s in SPLITS
            }
        _check_train_classes_after_skips(source, tmp)
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": fp,
            "built_from": {
                "root": str(source.root.resolve()),
                "layout": source.layout,
                "list_sha256": source.list_digests,
            },
            "size": size,
            "max_pixels": max_pixels,
            "array_layout": "NCHW uint8 RGB",
            "num_classes": source.num_classes,
            "class_names": source.class_names,
            "splits": splits,
            "leakage": find_leakage(digests),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "workers": workers,
            "pillow": Image.__version__,
        }
        write_durable(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        swap_into_place(tmp, cache_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_split(
    source: DatasetSource,
    split: str,
    size: int,
    max_pixels: int | None,
    out: Path,
    decode,
    skip_bad: bool,
    progress: bool,
    digests: dict[str, list[tuple[str, str]]],
) -> dict:
    """Decode one split into ``out``; its summary for the manifest. Adds its pixel digests to ``digests``."""
    from tqdm import tqdm

    entries = source.splits[split]
    start = time.perf_counter()
    labels: list[int] = []
    files: list[str] = []
    skipped: list[str] = []
    digests[split] = []
    tasks = [(str(source.path(e)), size, max_pixels) for e in entries]
    on_terminal = progress and sys.stderr.isatty()  # a log or a pipe gets lines, never carriage returns
    said = time.perf_counter()
    with (
        open(out / f"{split}_images.u8", "wb") as f,
        tqdm(
            total=len(tasks), desc=f"decode {split}", unit="img", disable=not on_terminal, leave=False
        ) as bar,
    ):
        for done, (e, (arr, digest_or_err)) in enumerate(zip(entries, decode(tasks), strict=True), start=1):
            bar.update(1)
            if progress and not on_terminal and time.perf_counter() - said >= PROGRESS_EVERY_S:
                print(f"decode {split}: {done}/{len(tasks)} images", file=sys.stderr, flush=True)
                said = time.perf_counter()
            if arr is None:
                err = digest_or_err
                where = source.path(e) if source.layout == "folder" else f"{source.path(e)} ({e.origin})"
                if not skip_bad:
                    raise DataError(f"cannot read image {where}: {err} (use --skip-bad to skip such images)")
                skipped.append(f"{e.rel}: {err}")
                continue
            f.write(arr.tobytes())
            labels.append(e.label)
            files.append(e.rel)
            digests[split].append((e.rel, digest_or_err))
        f.flush()
        os.fsync(f.fileno())
    if not labels:
        raise DataError(f"{source.root}: all {len(skipped)} images of the {split} split are unreadable")
    label_arr = np.asarray(labels, dtype=np.int64)
    np.save(out / f"{split}_labels.npy", label_arr)
    write_durable(out / f"{split}_files.txt", ("\n".join(files) + "\n").encode())
    shape = (len(labels), 3, size, size)
    written = np.memmap(out / f"{split}_images.u8", dtype=np.uint8, mode="r", shape=shape)
    return {
        "count": len(labels),
        "digests": content_digests(written, np.load(out / f"{split}_labels.npy")),
        "skipped": len(skipped),
        "skipped_files": skipped[:1000],
        "classes": len(np.unique(label_arr)),
        "bytes": len(labels) * 3 * size * size,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _check_train_classes_after_skips(source: DatasetSource, tmp: Path) -> None:
    present = set(np.load(tmp / "train_labels.npy").tolist())
    require_train_classes(source, present, "has no readable training images (all were skipped)")


# ------------------------------------------------------------------------------ summary


def print_summary(manifest: dict, cache_dir: Path, reused: bool) -> None:
    """One line per split: images, skipped, classes, size and decode time; then where the cache is."""
    print(f"{'split':<6} {'images':>8} {'skipped':>8} {'classes':>8} {'MB':>9} {'seconds':>8}")
    for split in SPLITS:
        s = manifest["splits"][split]
        mb = s["bytes"] / 2**20
        counts = f"{s['count']:>8} {s['skipped']:>8} {s['classes']:>8}"
        print(f"{split:<6} {counts} {mb:>9.1f} {s['seconds']:>8.1f}")
        for line in s["skipped_files"][:5]:
            print(f"  skipped {line}")
        if s["skipped"] > 5:
            print(f"  ... and {s['skipped'] - 5} more (see {MANIFEST})")
    line = leakage_line(manifest.get("leakage", {}))
    if line:
        print(f"warning: {line}; --strict makes this an error")
    state = "reused" if reused else "built"
    size = manifest["size"]
    print(f"cache {state}: {cache_dir} ({size}x{size} RGB, {manifest['num_classes']} classes)")
