"""One cache directory on disk: its format, reading it, and the primitives that write it safely.

Layout of a cache directory (``FORMAT_VERSION``; written by :mod:`dynconv.data.cache`)::

    manifest.json          what it was built from, size, counts, skipped files (written last)
    {split}_images.u8      raw uint8 array, shape (N, 3, SIZE, SIZE) - NCHW, so batches need no transpose
    {split}_labels.npy     int64 labels, shape (N,)
    {split}_files.txt      the relative path of image i on line i (to trace a sample back to its file)

Here: :func:`read_manifest`, :class:`PreparedData` (a built cache, its splits memory-mapped as
:class:`SplitArrays`), durable writes, the rename of a finished build into place, the removal of
leftovers of an interrupted one, and the ``fcntl.flock`` on ``.{name}.lock`` next to a cache.
Deciding when to build and building is :mod:`dynconv.data.cache`'s job; import the public names from
there. Imports numpy and :mod:`dynconv.data.sources` only; never torch, Ray or MLflow.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dynconv.data.sources import SPLITS, DataError
from dynconv.errors import one_line

FORMAT_VERSION = 2  # 2: EXIF orientation applied when decoding
MANIFEST = "manifest.json"


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
        with cache_lock(lock_path(cache_dir), shared=True):
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
            with cache_lock(lock_path(self.cache_dir), shared=True):
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


def read_manifest(cache_dir: Path) -> dict | None:
    """The manifest of a cache, or None when there is none (or it is unreadable or of another format)."""
    try:
        manifest = json.loads((Path(cache_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return None
    return manifest


# ------------------------------------------------------------------------------ writing


def write_durable(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it, so a cache renamed into place is complete on disk."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def swap_into_place(tmp: Path, cache_dir: Path) -> None:
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


def remove_leftovers(cache_dir: Path) -> None:
    """Delete temporary/old directories that an interrupted build left next to ``cache_dir``."""
    for pattern in (f".{cache_dir.name}.build-*", f".{cache_dir.name}.old-*"):
        for path in cache_dir.parent.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


# -------------------------------------------------------------------------------- locks


def lock_path(cache_dir: Path) -> Path:
    """The lock file of a cache: a hidden sibling, so it survives the swap of the cache directory."""
    return cache_dir.with_name(f".{cache_dir.name}.lock")


@contextlib.contextmanager
def cache_lock(path: Path, shared: bool) -> Iterator[None]:
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
