"""The embedded default dataset: deterministic synthetic images in the seed's ImageNet-mini layout.

Each class is a (shape, colour) pair. Shapes: circle, square, triangle, cross (and ring, bar when more
than 24 classes are asked for). Colours: red, green, blue, yellow, cyan, magenta - each an on/off
pattern over the R, G and B channels ("on" = a random intensity in 170-255, "off" = 0-70). Class ``k``
gets shape ``k mod S`` and colour ``(k // S + k) mod 6`` (S = number of shapes), which gives distinct
pairs in which every shape comes in several colours and most colours in several shapes: neither shape
nor colour alone identifies a class. With the default 10 classes:

====  ==============  ========
label class           channels
====  ==============  ========
0     red circle      R
1     green square    G
2     blue triangle   B
3     yellow cross    R+G
4     magenta circle  R+B
5     red square      R
6     green triangle  G
7     blue cross      B
8     cyan circle     G+B
9     magenta square  R+B
====  ==============  ========

So a model that sees only R (or only R and G) cannot tell a red circle from a magenta circle, while
R+B or G+B still separate every pair: dropping channels costs accuracy in a measurable, subset-dependent
way. Each image draws the shape's position, size (radius 18-32 % of the side) and rotation, the colour
intensities, a smooth random-colour background and pixel noise from its own generator seeded by
``(seed, class, index)``, so the same arguments always give byte-identical files (with the same Pillow).
A small CNN learns it to high accuracy in a few minutes on a CPU at 32-84 px.

Output: ``OUT/images/<NN_colour_shape>/<NN_colour_shape>_<i>.jpg``, ``OUT/{train,val,test}.txt``
(``RELATIVE/PATH LABEL``), ``OUT/classes.txt`` (line k names label k), ``OUT/README.md`` (the table
above for this dataset) and ``OUT/synthetic.json`` (the arguments; written last, marks completeness).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dynconv.data.sources import SPLITS, DataError

GENERATOR_VERSION = 1
MARKER = "synthetic.json"
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "bar")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (1, 0, 0),
    "green": (0, 1, 0),
    "blue": (0, 0, 1),
    "yellow": (1, 1, 0),
    "cyan": (0, 1, 1),
    "magenta": (1, 0, 1),
}
MAX_CLASSES = len(SHAPES) * len(COLOURS)
_JPEG_QUALITY = 90


def class_table(classes: int) -> list[tuple[str, str]]:
    """The (shape, colour) of every label, in label order."""
    if not 2 <= classes <= MAX_CLASSES:
        raise DataError(f"synthetic dataset: classes must be between 2 and {MAX_CLASSES}, got {classes}")
    n_shapes = 4 if classes <= 4 * len(COLOURS) else len(SHAPES)
    colours = list(COLOURS)
    return [(SHAPES[k % n_shapes], colours[(k // n_shapes + k) % len(colours)]) for k in range(classes)]


def class_dir_names(classes: int) -> list[str]:
    """Directory (and class) names: ``NN_colour_shape``, which sort in label order."""
    return [f"{k:02d}_{colour}_{shape}" for k, (shape, colour) in enumerate(class_table(classes))]


def write_synthetic(
    out: Path,
    classes: int = 10,
    per_class: int = 200,
    size: int = 84,
    seed: int = 0,
    splits: Sequence[float] | Sequence[int] = (0.7, 0.15, 0.15),
) -> Path:
    """Write the synthetic dataset to ``out`` (replacing an earlier synthetic dataset there); return ``out``.

    ``splits``: train/val/test fractions of each class's images, or exact per-class counts (ints summing
    to ``per_class``). The dataset is written to a temporary sibling directory and renamed into place.
    """
    out = Path(out)
    table = class_table(classes)
    counts = _split_counts(per_class, splits)
    if size < 16:
        raise DataError(f"synthetic dataset: size must be at least 16 pixels, got {size}")
    if out.exists() and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not a synthetic dataset; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.synth-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        _write_into(tmp, table, counts, size, seed)
        params = _params(classes, per_class, size, seed, counts)
        (tmp / MARKER).write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def synthetic_dir_name(classes: int, per_class: int, size: int, seed: int) -> str:
    """Subdirectory name for one setting of the synthetic set (settings that differ never share files)."""
    return f"classes{classes}-per{per_class}-size{size}-seed{seed}-v{GENERATOR_VERSION}"


def ensure_synthetic(out: Path, **kwargs) -> Path:
    """Write the synthetic dataset to ``out`` unless a complete one with the same arguments is there.

    Idempotent and safe to call from several processes at once (an flock next to ``out`` serialises
    writers; readers of a complete dataset never wait). Takes the arguments of :func:`write_synthetic`.
    """
    out = Path(out)
    defaults = {"classes": 10, "per_class": 200, "size": 84, "seed": 0, "splits": (0.7, 0.15, 0.15)}
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"ensure_synthetic() got unexpected arguments: {', '.join(sorted(unknown))}")
    args = {**defaults, **kwargs}
    counts = _split_counts(args["per_class"], args["splits"])
    wanted = _params(args["classes"], args["per_class"], args["size"], args["seed"], counts)
    if _is_complete(out, wanted):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _flock(out.with_name(f".{out.name}.lock")):
        if not _is_complete(out, wanted):
            write_synthetic(out, **args)
    return out


# -------------------------------------------------------------------------------- render


def render_image(shape: str, colour: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image of a ``colour`` ``shape`` on a textured background."""
    small = rng.uniform(30, 160, size=(4, 4, 3)).astype(np.uint8)
    background = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC), np.float32)
    pattern = np.asarray(COLOURS[colour], dtype=bool)
    fill = np.where(pattern, rng.uniform(170, 255, 3), rng.uniform(0, 70, 3)).astype(np.float32)
    radius = rng.uniform(0.18, 0.32) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    angle = rng.uniform(0, 2 * np.pi)
    alpha = _shape_alpha(shape, size, cx, cy, radius, angle)[..., None]
    noise = rng.normal(0, 10, size=(size, size, 3)).astype(np.float32)
    image = background * (1 - alpha) + fill * alpha + noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _shape_alpha(shape: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Coverage in [0, 1] of each pixel by the shape, from 2x2 supersampling (antialiased edges)."""
    coords = (np.arange(2 * size, dtype=np.float32) + 0.5) / 2
    y, x = np.meshgrid(coords - cy, coords - cx, indexing="ij")
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * x + s * y) / radius, (-s * x + c * y) / radius
    if shape == "circle":
        inside = u * u + v * v <= 1
    elif shape == "square":
        inside = np.maximum(abs(u), abs(v)) <= 0.8
    elif shape == "triangle":
        inside = (v >= -0.5) & (v <= 1 - np.sqrt(3) * abs(u))
    elif shape == "cross":
        inside = ((abs(u) <= 0.3) & (abs(v) <= 1)) | ((abs(v) <= 0.3) & (abs(u) <= 1))
    elif shape == "ring":
        r2 = u * u + v * v
        inside = (r2 <= 1) & (r2 >= 0.55**2)
    elif shape == "bar":
        inside = (abs(u) <= 1) & (abs(v) <= 0.35)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(size, 2, size, 2).mean(axis=(1, 3), dtype=np.float32)


# --------------------------------------------------------------------------------- write


def _write_into(
    root: Path, table: list[tuple[str, str]], counts: tuple[int, int, int], size: int, seed: int
) -> None:
    names = class_dir_names(len(table))
    lines: dict[str, list[str]] = {split: [] for split in SPLITS}
    bounds = np.cumsum(counts)
    for label, ((shape, colour), name) in enumerate(zip(table, names, strict=True)):
        folder = root / "images" / name
        folder.mkdir(parents=True)
        for i in range(bounds[-1]):
            rng = np.random.default_rng([seed, label, i])
            rel = f"images/{name}/{name}_{i:04d}.jpg"
            Image.fromarray(render_image(shape, colour, size, rng)).save(
                root / rel, "JPEG", quality=_JPEG_QUALITY
            )
            split = SPLITS[int(np.searchsorted(bounds, i, side="right"))]
            lines[split].append(f"{rel} {label}\n")
    for split in SPLITS:
        (root / f"{split}.txt").write_text("".join(lines[split]), encoding="utf-8")
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    (root / "README.md").write_text(_readme(table, names, counts, size, seed), encoding="utf-8")


def _channels_on(colour: str) -> str:
    return "+".join(c for c, on in zip("RGB", COLOURS[colour], strict=True) if on)


def _readme(
    table: list[tuple[str, str]], names: list[str], counts: tuple[int, int, int], size: int, seed: int
) -> str:
    rows = "\n".join(
        f"| {k} | `{name}` | {shape} | {colour} | {_channels_on(colour)} |"
        for k, ((shape, colour), name) in enumerate(zip(table, names, strict=True))
    )
    return (
        "# dynconv synthetic dataset\n\n"
        f"Written by `dynconv data synth` (generator version {GENERATOR_VERSION}, seed {seed}): {len(table)} "
        f"classes, {size}x{size} px JPEGs, per class {counts[0]} train / {counts[1]} val / "
        f"{counts[2]} test.\n\n"
        "A class is a (shape, colour) pair; a colour is an on/off pattern over R, G, B\n"
        "(on: 170-255, off: 0-70), "
        "so models that see only some channels confuse classes whose colours agree on those channels.\n"
        "Shape position, size and rotation, the background texture and pixel noise are random per image.\n\n"
        "| label | class | shape | colour | channels on |\n|---|---|---|---|---|\n" + rows + "\n"
    )


def _split_counts(per_class: int, splits: Sequence[float] | Sequence[int]) -> tuple[int, int, int]:
    if len(splits) != 3:
        raise DataError(f"synthetic dataset: splits needs 3 values (train, val, test), got {list(splits)}")
    if all(isinstance(v, int) for v in splits):
        counts = tuple(int(v) for v in splits)
        if sum(counts) != per_class:
            raise DataError(f"synthetic dataset: split counts {list(counts)} do not sum to {per_class}")
    else:
        if any(v < 0 for v in splits) or abs(sum(splits) - 1) > 1e-6:
            raise DataError(f"synthetic dataset: split fractions {list(splits)} must be >= 0 and sum to 1")
        val = max(1, round(splits[1] * per_class))
        test = max(1, round(splits[2] * per_class))
        counts = (per_class - val - test, val, test)
    if min(counts) < 1:
        raise DataError(
            f"synthetic dataset: every split needs at least one image per class; per_class={per_class} "
            f"with splits {list(splits)} gives {list(counts)}"
        )
    return counts  # type: ignore[return-value]


def _params(classes: int, per_class: int, size: int, seed: int, counts: tuple[int, int, int]) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "classes": classes,
        "per_class": per_class,
        "size": size,
        "seed": seed,
        "split_counts": list(counts),
    }


def _is_complete(out: Path, wanted: dict) -> bool:
    try:
        found = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if found != wanted:
        return False
    for split in SPLITS:
        try:
            lines = (out / f"{split}.txt").read_text(encoding="utf-8").splitlines()
        except OSError:
            return False
        if len(lines) != wanted["classes"] * wanted["split_counts"][SPLITS.index(split)]:
            return False
        if not all((out / line.rsplit(maxsplit=1)[0]).is_file() for line in lines):
            return False
    return True


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
