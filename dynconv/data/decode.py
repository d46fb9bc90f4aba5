"""Image decoding for the decode-once cache: one file in, a ``(3, SIZE, SIZE)`` uint8 RGB array out.

:func:`decode_image` and :func:`decode_and_hash` (the array and a digest of the decoded pixels, which
:mod:`dynconv.data.leakage` compares across splits), :func:`image_suffixes` (the file extensions of the
formats it reads, which the folder layout takes), and :func:`decoder`, which maps decode tasks over a
process pool. Anything that changes the decoded bytes needs a ``FORMAT_VERSION`` bump in
:mod:`dynconv.data.cache_files`, so old caches are rebuilt. The pixel budget (``max_pixels``,
:class:`ImageTooLarge`) only refuses images before decoding; the bytes of an accepted image stay the same.

Pool workers start from a forkserver that preloads this module, so it stays light: numpy, PIL and
:mod:`dynconv.data.sources` only; never torch, Ray, MLflow or the rest of the cache.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import multiprocessing
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from dynconv.errors import one_line

# Formats Pillow registers for opening whose files it cannot decode into pixels on its own: MPEG video
# (it reads the header only), PostScript (needs Ghostscript), IPTC (metadata). Stub formats (HDF5, GRIB,
# BUFR, WMF: they need a handler installed) are recognised by their class in `image_suffixes`.
_NOT_DECODED = frozenset({"MPEG", "EPS", "IPTC"})
# Peak memory of `decode_and_hash` per decoded pixel, measured (peak RSS): 10 bytes for an RGB PNG (the
# image, 4 bytes a pixel in Pillow, and the copy that is hashed), 20 for RGBA (the compositing copies).
_DECODE_BYTES_PER_PIXEL = 10


class ImageTooLarge(ValueError):
    """An image with more pixels than the decode budget (`data.max_pixels`, `--max-pixels`); found from
    its header, before anything is decoded. The message is one line: its size and the memory it needs."""


@functools.cache
def image_suffixes() -> frozenset[str]:
    """The file extensions (lower case, with the dot) of the image formats :func:`decode_image` reads.

    Pillow's registered extensions of every format it can open, less those it cannot decode alone
    (`_NOT_DECODED`, stubs): .jpg/.jpeg, .png, .bmp, .gif, .tif/.tiff, .webp, .ppm/.pgm/.pbm, .tga,
    .jp2, .avif, .qoi, .ico, .psd and others. The folder layout takes the files with these extensions
    (in any case); a split list names its files, which are decoded whatever their extension. Computed
    once per process (it loads every Pillow plugin, about 50 ms), not at import: pool workers never need it.
    """
    Image.init()
    return frozenset(
        ext.lower()
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and fmt not in _NOT_DECODED and not _is_stub(Image.OPEN[fmt][0])
    )


def _is_stub(factory: object) -> bool:
    return isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)


def decode_image(path: str | Path, size: int, max_pixels: int | None = None) -> np.ndarray:
    """Decode one image file to a ``(3, size, size)`` uint8 RGB array (see :func:`decode_and_hash`)."""
    return decode_and_hash(path, size, max_pixels)[0]


def decode_and_hash(path: str | Path, size: int, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """Decode one image file to a ``(3, size, size)`` uint8 RGB array, and a digest of its decoded pixels.

    EXIF orientation is applied first (a phone photo stored sideways is decoded upright).
    Grayscale, CMYK, palette and 16-bit images are converted; images with transparency (RGBA, LA,
    palette with a transparent colour) are composited onto white. JPEGs are decoded at a reduced DCT
    scale when they are at least twice the target size (``Image.draft``), which makes large photos
    several times cheaper to decode. The resize is bilinear with antialiasing (PIL's default filter
    support), to exactly ``size x size`` as the seed does (aspect ratio is not kept).
    The digest (blake2b of the upright RGB pixels and their dimensions, before the resize) is equal
    for two files exactly when their decoded pixels are: :func:`find_leakage` compares it across splits.
    ``max_pixels``: the decode budget; an image of more pixels (after the JPEG draft) raises
    :class:`ImageTooLarge` before it is decoded (None: no budget). Raises whatever PIL raises for
    unreadable files; the caller turns that into a DataError.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Palette images with Transparency expressed in bytes"
        with Image.open(path) as img:  # reads the header only: the pixels are decoded by `load`
            img.draft(img.mode, (size, size))
            if max_pixels is not None:
                _check_budget(img.size, max_pixels)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            rgb = _to_rgb(img)
            digest = hashlib.blake2b(rgb.tobytes(), digest_size=16)
            digest.update(f"{rgb.size}".encode())
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(rgb, dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)), digest.hexdigest()


def _check_budget(dims: tuple[int, int], max_pixels: int) -> None:
    """Raise :class:`ImageTooLarge` when an image of ``dims`` (width, height) exceeds ``max_pixels``."""
    width, height = dims
    if width * height > max_pixels:
        need = width * height * _DECODE_BYTES_PER_PIXEL
        raise ImageTooLarge(
            f"too large to decode: {width}x{height} ({_pixels(width * height)}) would take about "
            f"{_bytes(need)} of memory, above the budget of {_pixels(max_pixels)} "
            "(data.max_pixels, or --max-pixels)"
        )


def _pixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n} pixels"


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB: transparency composited onto white, 16/32-bit and float grayscale scaled."""
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


def _decode_task(task: tuple[str, int, int | None]) -> tuple[np.ndarray | None, str]:
    """Pool worker: decode one file (path, size, max_pixels); never raises, returns (array, pixel
    digest) or (None, reason)."""
    path, size, max_pixels = task
    try:
        return decode_and_hash(path, size, max_pixels)
    except ImageTooLarge as exc:
        return None, str(exc)
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # `ln -s x x`, or links pointing at each other
            return None, "a symlink loop (the path never leads to a file)"
        return None, f"{type(exc).__name__}: {one_line(exc)}"
    except Exception as exc:  # any failure to decode is a bad image, reported with its reason
        return None, f"{type(exc).__name__}: {one_line(exc)}"


# --------------------------------------------------------------------------------- pool


@contextlib.contextmanager
def decoder(workers: int) -> Iterator:
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
    """Tasks per pool round trip: about 8 chunks per worker (balance), at most 64 (a steady progress bar)."""
    return max(1, min(64, tasks // (8 * workers)))


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or Ray worker's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
