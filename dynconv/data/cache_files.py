"""One cache directory on disk: its format, reading it, and the primitives that write it safely.

Layout of a cache directory (``FORMAT_VERSION``; written by :mod:`dynconv.data.cache`)::

    manifest.json          what it was built from, size, counts, skipped files, content digests (last)
    {split}_images.u8      raw uint8 array, shape (N, 3, SIZE, SIZE) - NCHW, so batches need no transpose
    {split}_labels.npy     int64 labels, shape (N,)
    {split}_files.txt      the relative path of image i on line i (to trace a sample back to its file)

Content digests (:func:`content_digests`): the manifest records, per split, a digest of the whole label
array and of each of up to ``SAMPLED_IMAGES`` evenly spaced images (first and last included; every image
of a smaller split). A split is checked against them whenever it is mapped, so a cache damaged in place at
the same size (labels zeroed, image bytes overwritten) is found at the cost of reading those few images,
not the whole array; damage confined to images outside the sample is not found (a full re-hash of a
large cache on every open would cost seconds).

Here: :func:`read_manifest`, :class:`PreparedData` (a built cache, its splits memory-mapped as
:class:`SplitArrays` and checked against their digests), durable writes, the rename of a finished build
into place, the removal of leftovers of an interrupted one, and the ``fcntl.flock`` on ``.{name}.lock``
next to a cache.
Deciding when to build and building is :mod:`dynconv.data.cache`'s job; import the public names from
there. Imports numpy and :mod:`dynconv.data.sources` only; never torch, Ray or MLflow.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
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

FORMAT_VERSION = 3  # 2: EXIF orientation applied when decoding; 3: content digests per split
MANIFEST = "manifest.json"
SAMPLED_IMAGES = 64  # images per split whose digest the manifest records (all of a smaller split)


class CacheDamaged(DataError):
    """A cache whose files no longer hold what its manifest recorded when it was built.

    ``what`` names the split and what differs; :func:`dynconv.data.cache.prepare` rebuilds such a cache,
    a training worker (which must not rebuild the data its driver prepared) stops with the message.
    """

    def __init__(self, cache_dir: Path, what: str) -> None:
        self.what = what
        super().__init__(
            f"{cache_dir}: {what}; the cache is damaged: delete {cache_dir}, or prepare the data again "
            "(dynconv data prepare, or start the study again), which rebuilds it"
        )


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
        silently other data. Each split is checked against its content digests when it is first mapped
        (:meth:`split`): a damaged split is a one-line :class:`CacheDamaged`, since a worker must not
        rebuild the data its driver prepared.
        """
        cache_dir = Path(cache_dir)
        with cache_lock(lock_path(cache_dir), shared=True):
            manifest = read_manifest(cache_dir)
            if manifest is None:
                raise DataError(f"{cache_dir}: no dynconv cache here ({unusable_reason(cache_dir)})")
            if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
                found = f"fingerprint {str(manifest.get('fingerprint'))[:12]}, {manifest.get('size')} px"
                raise DataError(
                    f"{cache_dir}: the cache holds other data ({found}) "
                    f"than was prepared (fingerprint {fingerprint[:12]}); "
                    "the dataset changed or the cache was rebuilt since - start the study again"
                )
            return cls._from_manifest(cache_dir, manifest)

    @classmethod
    def mapped(cls, cache_dir: Path, manifest: dict) -> PreparedData:
        """The cache of ``manifest`` with every split mapped and checked against its content digests.

        For :func:`dynconv.data.cache.prepare`, which rebuilds the cache when this raises
        :class:`CacheDamaged` (a file missing, of the wrong length or with other content). The caller
        holds the cache's lock.
        """
        data = cls._from_manifest(Path(cache_dir), manifest)
        for split in SPLITS:
            data._arrays[split] = data._map(split, manifest["splits"][split]["digests"])
        return data

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
                self._arrays[name] = self._map(name, manifest["splits"][name]["digests"])
        return self._arrays[name]

    def _map(self, name: str, recorded: dict) -> SplitArrays:
        """Map split ``name`` and check it against the digests its manifest ``recorded``; CacheDamaged
        when it differs (or a file is missing, truncated or unreadable)."""
        n, s = self.counts[name], self.size
        try:
            images = np.memmap(
                self.cache_dir / f"{name}_images.u8", dtype=np.uint8, mode="r", shape=(n, 3, s, s)
            )
            labels = np.load(self.cache_dir / f"{name}_labels.npy").astype(np.int64, copy=False)
        except (OSError, ValueError) as exc:
            raise CacheDamaged(self.cache_dir, f"cannot map the {name} split ({one_line(exc)})") from None
        found = content_digests(images, labels)
        if found["labels"] != recorded["labels"]:
            what = f"{len(labels)} labels where {n} were" if len(labels) != n else "other labels than were"
            raise CacheDamaged(
                self.cache_dir, f"{name}_labels.npy holds {what} recorded when the cache was built"
            )
        for (index, digest), (_, want) in zip(found["images"], recorded["images"], strict=True):
            if digest != want:
                raise CacheDamaged(
                    self.cache_dir,
                    f"image {index}{self._file_note(name, index)} in {name}_images.u8 differs from the one "
                    "decoded when the cache was built",
                )
        return SplitArrays(name, images, labels)

    def _file_note(self, name: str, index: int) -> str:
        """`` (its relative path)`` of image ``index`` of a split, for messages; empty when unknown."""
        try:
            files = self.files(name)
        except (OSError, UnicodeDecodeError):
            return ""
        return f" ({files[index]})" if index < len(files) else ""

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


def content_digests(images: np.ndarray, labels: np.ndarray) -> dict:
    """The digests a manifest records for one split: ``labels`` (all of them) and ``images``, a list of
    ``[index, digest]`` for up to ``SAMPLED_IMAGES`` evenly spaced images (the first and last included).

    Reads those images only (about 1.3 MB per split at 84 px), so checking a split costs milliseconds
    however large it is.
    """
    n = len(images)
    picks = np.unique(np.linspace(0, n - 1, min(n, SAMPLED_IMAGES)).round().astype(np.int64)) if n else []
    return {
        "labels": _digest(np.ascontiguousarray(labels, dtype="<i8")),
        "images": [[int(i), _digest(np.ascontiguousarray(images[i]))] for i in picks],
    }


def _digest(arr: np.ndarray) -> str:
    return hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest()


def read_manifest(cache_dir: Path) -> dict | None:
    """The manifest of a cache, or None when there is none (or it is unreadable or of another format)."""
    manifest = _load_manifest(cache_dir)
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return None
    return manifest


def unusable_reason(cache_dir: Path) -> str:
    """Why :func:`read_manifest` finds no usable manifest in ``cache_dir``, in a few words."""
    path = Path(cache_dir) / MANIFEST
    if not path.exists():
        return f"no {MANIFEST}"
    manifest = _load_manifest(cache_dir)
    if not isinstance(manifest, dict):
        return f"unreadable {MANIFEST}"
    return f"cache format {manifest.get('format_version')!r}, but this dynconv reads format {FORMAT_VERSION}"


def _load_manifest(cache_dir: Path) -> object:
    try:
        return json.loads((Path(cache_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
