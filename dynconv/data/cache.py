"""The decode-once cache: every image decoded, converted to RGB and resized once, then memory-mapped.

Where a cache lives: ``ROOT/.dynconv_cache/size{SIZE}`` by default; under a given ``cache_dir`` (shared by
several datasets and studies, e.g. ``/mnt/shared/dynconv_cache``) each dataset and image size gets its own
subdirectory ``{ROOT NAME}-{KEY}-size{SIZE}`` (KEY: a digest of the resolved root path, the size and the
decode format version), so two studies at different sizes or on different datasets never rebuild each
other's cache. Workers open a cache with the fingerprint the driver prepared (:meth:`PreparedData.open`)
and fail in one line if it holds anything else.

Layout of a cache directory::

    manifest.json          what it was built from, size, counts, skipped files (written last)
    {split}_images.u8      raw uint8 array, shape (N, 3, SIZE, SIZE) - NCHW, so batches need no transpose
    {split}_labels.npy     int64 labels, shape (N,)
    {split}_files.txt      the relative path of image i on line i (to trace a sample back to its file)

The cache is reused while its manifest's fingerprint matches the dataset: the split lists (or folder
listing), the class list, the size and mtime of every image, the image size and the format version.
Anything else triggers a rebuild.

Concurrency: a cache is built in a temporary sibling directory and renamed into place only when it is
complete, under an exclusive ``fcntl.flock`` on ``.{name}.lock`` next to it; readers hold a shared lock
while they check the manifest and map the arrays. So when several trials or workers on one node ask for
the same cache at once, one builds it, the others wait and then reuse it, and nobody ever reads a torn
or half-written cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dynconv.data.leakage import find_leakage, leakage_line
from dynconv.data.sources import (
    SPLITS,
    DataError,
    DatasetSource,
    load_source,
    one_line,
    require_train_classes,
)

FORMAT_VERSION = 2  # 2: EXIF orientation applied when decoding
MANIFEST = "manifest.json"
_AUTO_IMAGES_PER_WORKER = 256  # with workers=None, small datasets are decoded in-process


# ------------------------------------------------------------------------------- decode


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """Decode one image file to a ``(3, size, size)`` uint8 RGB array (see :func:`decode_and_hash`)."""
    return decode_and_hash(path, size)[0]


def decode_and_hash(path: str | Path, size: int) -> tuple[np.ndarray, str]:
    """Decode one image file to a ``(3, size, size)`` uint8 RGB array, and a digest of its decoded pixels.

    EXIF orientation is applied first (a phone photo stored sideways is decoded upright).
    Grayscale, CMYK, palette and 16-bit images are converted; images with transparency (RGBA, LA,
    palette with a transparent colour) are composited onto white. JPEGs are decoded at a reduced DCT
    scale when they are at least twice the target size (``Image.draft``), which makes large photos
    several times cheaper to decode. The resize is bilinear with antialiasing (PIL's default filter
    support), to exactly ``size x size`` as the seed does (aspect ratio is not kept).
    The digest (blake2b of the upright RGB pixels and their dimensions, before the resize) is equal
    for two files exactly when their decoded pixels are: :func:`find_leakage` compares it across splits.
    Raises whatever PIL raises for unreadable files; the caller turns that into a DataError.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Palette images with Transparency expressed in bytes"
        with Image.open(path) as img:
            img.draft(img.mode, (size, size))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            rgb = _to_rgb(img)
            digest = hashlib.blake2b(rgb.tobytes(), digest_size=16)
            digest.update(f"{rgb.size}".encode())
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(rgb, dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)), digest.hexdigest()


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode.startswith("I"):  # 16/32-bit grayscale: scale to 8 bits instead of clipping
        arr = np.asarray(img).astype(np.int64)
        if arr.max(initial=0) > 255:
            arr = arr // 257
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img)
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def _decode_task(task: tuple[str, int]) -> tuple[np.ndarray | None, str]:
    """Pool worker: decode one file; never raises, returns (array, pixel digest) or (None, reason)."""
    path, size = task
    try:
        return decode_and_hash(path, size)
    except FileNotFoundError:
        return None, "file not found"
    except Exception as exc:  # any failure to decode is a bad image, reported with its reason
        return None, f"{type(exc).__name__}: {one_line(exc)}"


# ------------------------------------------------------------------------ prepared data


@dataclass
class SplitArrays:
    """One split of a cache: ``images`` (memmap uint8, N x 3 x H x W) and ``labels`` (int64, N)."""

    name: str
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class PreparedData:
    """A built cache. Cheap to pickle (arrays are re-mapped lazily in the receiving process)."""

    cache_dir: Path
    size: int
    num_classes: int
    class_names: list[str] | None
    counts: dict[str, int]
    fingerprint: str
    _arrays: dict[str, SplitArrays] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def open(cls, cache_dir: Path, fingerprint: str | None = None) -> PreparedData:
        """Open an existing cache directory (as written by :func:`prepare`).

        ``fingerprint``: the one the caller prepared (a training worker gets the driver's); a cache that
        holds anything else (rebuilt since, other data, other size) is a one-line DataError, never
        silently other data.
        """
        cache_dir = Path(cache_dir)
        with _lock(_lock_path(cache_dir), shared=True):
            manifest = read_manifest(cache_dir)
            if manifest is None:
                raise DataError(f"{cache_dir}: no dynconv cache here (missing or unreadable {MANIFEST})")
            if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
                found = f"fingerprint {str(manifest.get('fingerprint'))[:12]}, {manifest.get('size')} px"
                raise DataError(
                    f"{cache_dir}: the cache holds other data ({found}) "
                    f"than was prepared (fingerprint {fingerprint[:12]}); "
                    "the dataset changed or the cache was rebuilt since - start the study again"
                )
            return cls._from_manifest(cache_dir, manifest)

    @classmethod
    def _from_manifest(cls, cache_dir: Path, manifest: dict) -> PreparedData:
        counts = {s: int(manifest["splits"][s]["count"]) for s in SPLITS}
        return cls(
            cache_dir,
            int(manifest["size"]),
            int(manifest["num_classes"]),
            manifest["class_names"],
            counts,
            manifest["fingerprint"],
        )

    def split(self, name: str) -> SplitArrays:
        """The arrays of split ``name`` (``train``, ``val`` or ``test``), mapped on first use."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        if name not in self._arrays:
            with _lock(_lock_path(self.cache_dir), shared=True):
                manifest = read_manifest(self.cache_dir)
                if manifest is None or manifest["fingerprint"] != self.fingerprint:
                    raise DataError(
                        f"{self.cache_dir}: the cache was removed or rebuilt after it was opened; "
                        "call dynconv.data.cache.prepare again"
                    )
                self._arrays[name] = self._map(name)
        return self._arrays[name]

    def _map(self, name: str) -> SplitArrays:
        n, s = self.counts[name], self.size
        images = np.memmap(self.cache_dir / f"{name}_images.u8", dtype=np.uint8, mode="r", shape=(n, 3, s, s))
        labels = np.load(self.cache_dir / f"{name}_labels.npy")
        return SplitArrays(name, images, labels.astype(np.int64, copy=False))

    def files(self, name: str) -> list[str]:
        """Relative path of every image of a split, in cache order."""
        return (self.cache_dir / f"{name}_files.txt").read_text(encoding="utf-8").splitlines()

    def manifest(self) -> dict:
        """The cache's manifest (what it was built from, counts, skipped files, timings)."""
        manifest = read_manifest(self.cache_dir)
        if manifest is None:
            raise DataError(f"{self.cache_dir}: missing or unreadable {MANIFEST}")
        return manifest

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # never ship the arrays; the receiver maps the files itself
        return state


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
) -> PreparedData:
    """Return the decode-once cache of the dataset at ``root``, building it only when needed.

    ``cache_dir``: a directory shared by caches (each dataset and size in its own subdirectory, see
    :func:`cache_location`); default ``ROOT/.dynconv_cache``.
    ``workers``: decoding processes (default: the usable cores, fewer for small datasets).
    ``skip_bad``: skip unreadable images and count them; without it the first one raises a DataError
    naming the file (and its list line). ``progress``: a progress bar while decoding, and a per-split
    summary at the end. ``num_classes``: when given, checked against the dataset. ``strict``: images
    with identical pixels in two splits (always counted and reported) are an error.
    """
    if not isinstance(size, int) or size < 1:
        raise DataError(f"image size must be a positive integer, got {size!r}")
    if workers is not None and workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    source = load_source(Path(root), num_classes)
    fp = fingerprint(source, size)
    cache_dir = cache_location(Path(root), size, Path(cache_dir) if cache_dir is not None else None)
    lock = _lock_path(cache_dir)

    with _lock(lock, shared=True):
        data = _open_if_current(cache_dir, fp, skip_bad)
    if data is None:
        try:
            cache_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"{cache_dir}: cannot create the cache directory ({one_line(exc)}); use --cache-dir"
            ) from None
        with _lock(lock, shared=False):
            data = _open_if_current(cache_dir, fp, skip_bad)  # another process may have built it meanwhile
            if data is None:
                _build(source, size, fp, cache_dir, workers, skip_bad, progress)
                data = _open_if_current(cache_dir, fp, skip_bad=True)
                if data is None:
                    raise DataError(f"{cache_dir}: the cache just built cannot be opened")
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


def read_manifest(cache_dir: Path) -> dict | None:
    """The manifest of a cache, or None when there is none (or it is unreadable or of another format)."""
    try:
        manifest = json.loads((Path(cache_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return None
    return manifest


def _open_if_current(cache_dir: Path, fp: str, skip_bad: bool) -> PreparedData | None:
    manifest = read_manifest(cache_dir)
    if manifest is None or manifest.get("fingerprint") != fp:
        return None
    if not skip_bad and any(manifest["splits"][s]["skipped"] for s in SPLITS):
        return None  # built with --skip-bad; without it the bad image must stop the build
    data = PreparedData._from_manifest(cache_dir, manifest)
    try:
        for split in SPLITS:
            data._arrays[split] = data._map(split)
    except (OSError, ValueError):
        return None  # files missing or of the wrong length: rebuild
    return data


# -------------------------------------------------------------------------------- build


def _build(
    source: DatasetSource,
    size: int,
    fp: str,
    cache_dir: Path,
    workers: int | None,
    skip_bad: bool,
    progress: bool,
) -> None:
    """Decode everything into a temporary directory, then move it into place (caller holds the lock)."""
    foreign = cache_dir.exists() and not (cache_dir / MANIFEST).is_file()
    if foreign and (not cache_dir.is_dir() or any(cache_dir.iterdir())):
        raise DataError(f"{cache_dir}: exists and is not a dynconv cache; refusing to replace it")
    _remove_leftovers(cache_dir)
    total = sum(len(v) for v in source.splits.values())
    if workers is None:
        workers = min(_usable_cores(), max(1, total // _AUTO_IMAGES_PER_WORKER))
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.build-", dir=cache_dir.parent))
    try:
        os.chmod(tmp, 0o755)
        digests: dict[str, list[tuple[str, str]]] = {}
        with _decoder(workers) as decode:
            splits = {
                s: _build_split(source, s, size, tmp, decode, skip_bad, progress, digests) for s in SPLITS
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
            "array_layout": "NCHW uint8 RGB",
            "num_classes": source.num_classes,
            "class_names": source.class_names,
            "splits": splits,
            "leakage": find_leakage(digests),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "workers": workers,
            "pillow": Image.__version__,
        }
        _write_durable(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        _swap_into_place(tmp, cache_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_split(
    source: DatasetSource,
    split: str,
    size: int,
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
    tasks = [(str(source.path(e)), size) for e in entries]
    with (
        open(out / f"{split}_images.u8", "wb") as f,
        tqdm(total=len(tasks), desc=f"decode {split}", unit="img", disable=not progress, leave=False) as bar,
    ):
        for e, (arr, digest_or_err) in zip(entries, decode(tasks), strict=True):
            bar.update(1)
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
    _write_durable(out / f"{split}_files.txt", ("\n".join(files) + "\n").encode())
    return {
        "count": len(labels),
        "skipped": len(skipped),
        "skipped_files": skipped[:1000],
        "classes": len(np.unique(label_arr)),
        "bytes": len(labels) * 3 * size * size,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _check_train_classes_after_skips(source: DatasetSource, tmp: Path) -> None:
    present = set(np.load(tmp / "train_labels.npy").tolist())
    require_train_classes(source, present, "has no readable training images (all were skipped)")


@contextlib.contextmanager
def _decoder(workers: int) -> Iterator:
    """A function mapping decode tasks to results in order: in-process, or over a process pool.

    The pool starts its workers from a forkserver, not by forking this process: a process that already
    runs other threads (Ray's and gRPC's, torch's pools) can hold a lock at the moment of a fork, and
    the forked child then waits on it forever (seen in the test suite after a Ray test module). Like
    spawn, this re-imports the caller's main module, so scripts calling `prepare` need the usual
    `if __name__ == "__main__":` guard.
    """
    if workers <= 1:
        yield lambda tasks: map(_decode_task, tasks)
        return
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload([__name__])
    pool = ctx.Pool(workers)
    try:
        yield lambda tasks: pool.imap(_decode_task, tasks, chunksize=_chunksize(len(tasks), workers))
    finally:
        pool.terminate()
        pool.join()


def _chunksize(tasks: int, workers: int) -> int:
    return max(1, min(64, tasks // (8 * workers)))


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _swap_into_place(tmp: Path, cache_dir: Path) -> None:
    """Rename the finished build onto ``cache_dir``; an old cache is moved aside first, then deleted."""
    old = None
    if cache_dir.exists():
        old = cache_dir.with_name(f".{cache_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(cache_dir, old)
    os.rename(tmp, cache_dir)
    with contextlib.suppress(OSError):
        fd = os.open(cache_dir.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(cache_dir: Path) -> None:
    """Delete temporary/old directories that an interrupted build left next to ``cache_dir``."""
    for pattern in (f".{cache_dir.name}.build-*", f".{cache_dir.name}.old-*"):
        for path in cache_dir.parent.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


# -------------------------------------------------------------------------------- locks


def _lock_path(cache_dir: Path) -> Path:
    return cache_dir.with_name(f".{cache_dir.name}.lock")


@contextlib.contextmanager
def _lock(path: Path, shared: bool) -> Iterator[None]:
    """Hold an flock on ``path``. A shared lock on an unwritable location is skipped (read-only cache)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if shared and exc.errno in (errno.EACCES, errno.EROFS, errno.ENOENT, errno.EPERM):
            yield
            return
        raise DataError(f"{path}: cannot create the cache lock ({one_line(exc)})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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
