"""Dataset sources: find the layout of a dataset root, read its splits, and validate every entry.

Two layouts are supported, and detected from what lies in the root:

* **txt** (the seed's ImageNet-mini layout): ``ROOT/{train,val,test}.txt``, each line
  ``RELATIVE/PATH LABEL`` with the path relative to ROOT, e.g. ``images/n01532829/n01532829_1234.JPEG 17``.
  LABEL is written in the ASCII digits 0-9 (not ``+2``, ``0_2`` or another script's digits). The
  files are UTF-8 (a leading byte-order mark is dropped); blank lines and lines starting with ``#``
  are ignored. An optional ``ROOT/classes.txt`` (one class name per line, line *i* naming label *i*)
  fixes the number of classes; without it the number of classes is ``max label + 1`` over all splits.
* **folder**: ``ROOT/{train,val,test}/<class name>/<image>``, an image being a file with an extension
  of a format the decoder reads (:func:`dynconv.data.decode.image_suffixes`: .jpg, .jpeg, .png, .bmp,
  .gif, .tif, .tiff, .webp, .ppm and more, in any case), as a split list may name. Class names are the
  sorted directory names under ``train/``, and a class's label is its index in that order (as
  torchvision's ``ImageFolder`` does). Everything else under a split folder (other files, hidden files,
  nested folders) is not taken, and counted by extension (``DatasetSource.not_images``,
  :func:`not_images_line`), so nothing is dropped unsaid.

Every check that can be made without decoding images is made here, so that a bad list fails in
well under a second, with a one-line :class:`DataError` naming the file and line, before any work.
Decoding problems (unreadable, truncated or non-image files) are found later, by the cache builder.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dynconv.data.decode import image_suffixes
from dynconv.errors import DynconvError, one_line

SPLITS: tuple[str, ...] = ("train", "val", "test")
CLASSES_FILE = "classes.txt"


class DataError(DynconvError):
    """A problem with a dataset or its cache; the message is one line and names the file (and line)."""


@dataclass(frozen=True)
class Entry:
    """One image of a split: where it is, its label, and where it was listed (for error messages)."""

    rel: str  # path relative to the root, with forward slashes
    label: int
    origin: str  # "LIST:LINE" for the txt layout, the image path for the folder layout


@dataclass
class DatasetSource:
    """A validated dataset: its layout, the entries of every split, and its classes."""

    root: Path
    layout: str  # "txt" or "folder"
    splits: dict[str, list[Entry]]
    num_classes: int
    class_names: list[str] | None
    list_digests: dict[str, str] = field(default_factory=dict)  # split -> sha256 of its list/listing
    not_images: dict[str, int] = field(default_factory=dict)  # folder layout: kind -> entries not taken

    def path(self, entry: Entry) -> Path:
        """The file of an entry."""
        return self.root / entry.rel


def load_source(root: Path, num_classes: int | None = None) -> DatasetSource:
    """Detect the layout of ``root``, read all three splits and validate them.

    ``num_classes``, when given (e.g. from a job spec), is checked against the dataset: labels must be
    below it and every class must have a training image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a directory")
    layout = detect_layout(root)
    source = _load_txt(root, num_classes) if layout == "txt" else _load_folder(root, num_classes)
    _check_inside_root(source)
    _check_classes(source)
    return source


def detect_layout(root: Path) -> str:
    """``"txt"`` when any split list exists in ``root``, ``"folder"`` when ``root/train`` is a directory."""
    if any((root / f"{split}.txt").exists() for split in SPLITS):
        return "txt"
    if (root / "train").is_dir():
        return "folder"
    raise DataError(
        f"{root}: no dataset found: expected split lists {root}/train.txt, val.txt, test.txt "
        f"(ImageNet-mini layout) or folders {root}/train/<class>/, val/, test/ (folder layout)"
    )


# --------------------------------------------------------------------------- txt layout


def _load_txt(root: Path, num_classes: int | None) -> DatasetSource:
    declared = _read_classes_file(root)
    if declared is not None and num_classes is not None and len(declared) != num_classes:
        raise DataError(
            f"{root / CLASSES_FILE}: lists {len(declared)} classes but {num_classes} were expected"
        )
    limit = num_classes if num_classes is not None else (len(declared) if declared is not None else None)
    splits: dict[str, list[Entry]] = {}
    digests: dict[str, str] = {}
    for split in SPLITS:
        list_path = root / f"{split}.txt"
        if not list_path.is_file():
            raise DataError(f"{list_path}: missing split list (the {split} split needs {split}.txt)")
        data = list_path.read_bytes()
        digests[split] = hashlib.sha256(data).hexdigest()
        splits[split] = _parse_list(list_path, data, limit)
    inferred = 1 + max(e.label for entries in splits.values() for e in entries)
    count = limit if limit is not None else inferred
    names = declared if declared is not None else _names_from_dirs(splits, count)
    return DatasetSource(root, "txt", splits, count, names, digests)


def _read_classes_file(root: Path) -> list[str] | None:
    path = root / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a leading byte-order mark is dropped
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {one_line(exc)}") from None
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise DataError(f"{path}: no class names (one name per line, line i names label i)")
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise DataError(f"{path}: class name {dup[0]!r} appears more than once")
    return names


def _parse_list(list_path: Path, data: bytes, limit: int | None) -> list[Entry]:
    """Parse and check one split list; every error names ``list_path:line``."""
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (Windows editors write one) is not a path
    except UnicodeDecodeError as exc:
        raise DataError(f"{list_path}: not UTF-8 text ({one_line(exc)})") from None
    entries: list[Entry] = []
    first_seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{list_path}:{lineno}"
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{where}: malformed line {line!r}: expected 'RELATIVE/PATH LABEL'")
        rel_text, label_text = parts
        label = _label(label_text, where)
        if limit is not None and label >= limit:
            raise DataError(f"{where}: label {label} is out of range (the dataset has {limit} classes)")
        rel = _safe_relative(rel_text, where)
        if rel in first_seen:
            raise DataError(
                f"{where}: duplicate entry {rel!r} (first listed at {list_path}:{first_seen[rel]})"
            )
        first_seen[rel] = lineno
        entries.append(Entry(rel, label, f"{list_path.name}:{lineno}"))
    if not entries:
        raise DataError(f"{list_path}: the {list_path.stem} split is empty (no entries)")
    return entries


def _label(text: str, where: str) -> int:
    """A listed label: ASCII digits only. `int()` alone would also read `0_2`, `+2` and other scripts'
    digits (`٢`) as 2, so a typo or a mangled list would train on a class nobody wrote."""
    if text.startswith("-") and _ascii_digits(text[1:]):
        raise DataError(f"{where}: label {text} is negative")
    if not _ascii_digits(text):
        raise DataError(f"{where}: label {text!r} is not an integer: labels are written in digits 0-9 only")
    return int(text)


def _ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _safe_relative(rel_text: str, where: str) -> str:
    """Normalise a listed path; reject absolute paths and paths that leave the root."""
    text = rel_text.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise DataError(f"{where}: absolute path {rel_text!r}: paths must be relative to the dataset root")
    parts: list[str] = []
    for part in PurePosixPath(text).parts:
        if part == "..":
            if not parts:
                raise DataError(f"{where}: path {rel_text!r} escapes the dataset root")
            parts.pop()
        elif part != ".":
            parts.append(part)
    if not parts:
        raise DataError(f"{where}: empty path {rel_text!r}")
    return "/".join(parts)


def _names_from_dirs(splits: dict[str, list[Entry]], count: int) -> list[str]:
    """Class names from image directories when every label lives in exactly one, distinct, directory."""
    dirs: dict[int, set[str]] = {}
    for entries in splits.values():
        for e in entries:
            dirs.setdefault(e.label, set()).add(PurePosixPath(e.rel).parent.name)
    names = [next(iter(dirs[k])) if len(dirs.get(k, ())) == 1 else "" for k in range(count)]
    if all(names) and len(set(names)) == count:
        return names
    return [str(k) for k in range(count)]


# ------------------------------------------------------------------------ folder layout


def _load_folder(root: Path, num_classes: int | None) -> DatasetSource:
    for split in SPLITS:
        if not (root / split).is_dir():
            raise DataError(f"{root / split}: missing split folder (folder layout needs train/, val/, test/)")
    names = sorted(p.name for p in (root / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{root / 'train'}: no class folders (expected train/<class name>/*.jpg)")
    if num_classes is not None and len(names) != num_classes:
        raise DataError(f"{root / 'train'}: has {len(names)} class folders but {num_classes} were expected")
    index = {name: k for k, name in enumerate(names)}
    suffixes = image_suffixes()
    splits: dict[str, list[Entry]] = {}
    digests: dict[str, str] = {}
    not_images: Counter[str] = Counter()
    for split in SPLITS:
        entries: list[Entry] = []
        split_not_images: Counter[str] = Counter()
        for top in _scan(root / split):
            if not top.is_dir() or top.name.startswith("."):
                split_not_images[_kind(top)] += 1
                continue
            if top.name not in index:
                raise DataError(f"{top.path}: class {top.name!r} has no folder in train/")
            for item in _scan(Path(top.path)):
                if (
                    item.name.startswith(".")
                    or item.is_dir()
                    or Path(item.name).suffix.lower() not in suffixes
                ):
                    split_not_images[_kind(item)] += 1
                    continue
                rel = f"{split}/{top.name}/{item.name}"
                entries.append(Entry(rel, index[top.name], str(root / rel)))
        if not entries:
            found = f"; {_not_images_text(split_not_images)}" if split_not_images else ""
            raise DataError(f"{root / split}: the {split} split is empty (no image files{found})")
        listing = "\n".join(f"{e.rel} {e.label}" for e in entries).encode()
        digests[split] = hashlib.sha256(listing).hexdigest()
        splits[split] = entries
        not_images.update(split_not_images)
    return DatasetSource(root, "folder", splits, len(names), names, digests, dict(not_images))


def _scan(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder`` sorted by name (``os.scandir``: the type of each comes without a stat)."""
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _kind(entry: os.DirEntry) -> str:
    """How an entry not taken is counted: ``folder``, ``hidden`` (a dot file), its extension (lower
    case) or ``no extension``."""
    if entry.is_dir():
        return "folder"
    if entry.name.startswith("."):
        return "hidden"
    return Path(entry.name).suffix.lower() or "no extension"


def _not_images_text(counts: Counter[str] | dict[str, int]) -> str:
    total = sum(counts.values())
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"skipped {total} {'file' if total == 1 else 'files'} that are not images: {kinds}"


def not_images_line(source: DatasetSource) -> str | None:
    """One line counting, by kind, what the folder layout did not take; None when it took everything.

    E.g. ``ROOT: skipped 4 files that are not images: 2 .txt, 1 .json, 1 folder`` (kinds: an extension,
    ``hidden``, ``folder``, ``no extension``; most frequent first).
    """
    if not source.not_images:
        return None
    return f"{source.root}: {_not_images_text(source.not_images)}"


def _check_inside_root(source: DatasetSource) -> None:
    """Every entry, symlinks resolved, lies inside the resolved root (the listed-path check is lexical).

    One `resolve()` per distinct directory and one `lstat` per file, so 60k entries cost well under 1 s.
    """
    real_root = source.root.resolve()
    dirs: dict[str, Path] = {}
    for entries in source.splits.values():
        for e in entries:
            folder = os.path.dirname(e.rel)
            if folder not in dirs:
                dirs[folder] = _resolved(source.root / folder)
            real = dirs[folder] / os.path.basename(e.rel)
            if os.path.islink(real):
                real = _resolved(real)
            if not real.is_relative_to(real_root):
                where = source.root / e.origin if source.layout == "txt" else e.origin
                raise DataError(
                    f"{where}: {e.rel} resolves to {real}, outside the dataset root {real_root} "
                    "(a symlink leaves the root: copy the images in, or make data.root their common parent)"
                )


def _resolved(path: Path) -> Path:
    """`path` with its symlinks resolved; a symlink loop (`ln -s x x`) keeps its own name under its
    resolved folder: it leads nowhere, so not out of the root, and reading it fails like any unreadable
    image (one line, or a counted skip with --skip-bad). Python 3.11's `resolve` raises RuntimeError for
    a loop, later ones OSError."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return _resolved(path.parent) / path.name


# ------------------------------------------------------------------------------ classes


def _check_classes(source: DatasetSource) -> None:
    """No val/test label lies above the train split's labels (the error names that val/test line), and
    every class from 0 to num_classes-1 has at least one training image."""
    present = {e.label for e in source.splits["train"]}
    top = max(present)
    for split in SPLITS[1:]:
        for e in source.splits[split]:
            if e.label > top:
                where = source.root / e.origin if source.layout == "txt" else e.origin
                raise DataError(
                    f"{where}: label {e.label} is out of range (the train split has labels 0..{top})"
                )
    require_train_classes(source, present, "has no training images")


def require_train_classes(source: DatasetSource, present: set[int], problem: str) -> None:
    """Raise naming the first class in 0..num_classes-1 missing from `present` (training labels)."""
    for k in range(source.num_classes):
        if k not in present:
            name = source.class_names[k] if source.class_names else str(k)
            name = f" ({name!r})" if name != str(k) else ""
            where = source.root / ("train.txt" if source.layout == "txt" else "train")
            raise DataError(f"{where}: class {k}{name} {problem}")
