"""Both layouts take the same image formats (what the decoder reads), and the folder layout counts what it
does not take, by extension, in one line. Images written here with PIL; no Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynconv.cli import main
from dynconv.data.cache import prepare
from dynconv.data.decode import decode_image, image_suffixes
from dynconv.data.sources import DataError, load_source, not_images_line

# One file per format, in the case a user may find them; (PIL format, extension).
FORMATS = [
    ("JPEG", "a.jpg"),
    ("JPEG", "b.JPEG"),
    ("PNG", "c.PNG"),
    ("BMP", "d.BMP"),
    ("GIF", "e.gif"),
    ("TIFF", "f.tif"),
    ("TIFF", "g.TIFF"),
    ("WEBP", "h.webp"),
    ("PPM", "i.ppm"),
    ("TGA", "j.tga"),
]
SPLITS = ("train", "val", "test")
CLASSES = ("ant", "bee")


def _write(path: Path, fmt: str, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((10, 12, 3), np.uint8)
    pixels[...] = colour
    pixels[2:6, 3:9] = (255 - colour[0], 40, 90)
    Image.fromarray(pixels).save(path, fmt)


def _both_layouts(tmp_path: Path) -> tuple[Path, Path]:
    """The same images, every format of FORMATS per class and split, as class folders and as split lists."""
    folder, listed = tmp_path / "folder", tmp_path / "listed"
    for split in SPLITS:
        lines = []
        for k, cls in enumerate(CLASSES):
            for fmt, name in FORMATS:
                colour = (60 + 120 * k, 10 * len(lines), 30)
                rel = f"{split}/{cls}/{name}"
                _write(folder / rel, fmt, colour)
                _write(listed / "images" / rel, fmt, colour)
                lines.append(f"images/{rel} {k}")
        (listed / f"{split}.txt").write_text("\n".join(sorted(lines)) + "\n")
    return folder, listed


def test_the_decoder_reads_the_common_formats_in_any_case_and_nothing_it_cannot_decode() -> None:
    suffixes = image_suffixes()
    common = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".tga"}
    assert common <= suffixes
    assert all(s == s.lower() and s.startswith(".") for s in suffixes)
    # PIL registers these for opening, but cannot decode them alone (video, Ghostscript, stubs, metadata)
    assert not {".mpg", ".mpeg", ".eps", ".ps", ".h5", ".hdf", ".grib", ".bufr", ".wmf", ".iim"} & suffixes
    assert not {".pdf", ".txt", ".json", ".csv", ".npy"} & suffixes


def test_both_layouts_decode_the_same_formats(tmp_path: Path) -> None:
    folder, listed = _both_layouts(tmp_path)
    by_folder = prepare(folder, size=8, workers=1, progress=False)
    by_list = prepare(listed, size=8, workers=1, progress=False)
    per_split = len(CLASSES) * len(FORMATS)
    assert by_folder.counts == by_list.counts == dict.fromkeys(SPLITS, per_split)
    for split in SPLITS:
        files = by_folder.files(split)
        assert [f"images/{f}" for f in files] == by_list.files(split)
        assert {Path(f).suffix for f in files} == {Path(name).suffix for _, name in FORMATS}
        np.testing.assert_array_equal(by_folder.split(split).images, by_list.split(split).images)
        np.testing.assert_array_equal(by_folder.split(split).labels, by_list.split(split).labels)
        for i, rel in enumerate(files):
            np.testing.assert_array_equal(by_folder.split(split).images[i], decode_image(folder / rel, 8))
    assert load_source(folder).not_images == {}


def _with_strays(root: Path) -> Path:
    for split in SPLITS:
        for k, cls in enumerate(CLASSES):
            _write(root / split / cls / "0.png", "PNG", (50 + 100 * k, 0, 0))
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "val" / "bee" / "labels.txt").write_text("not an image")
    (root / "train" / "bee" / "meta.json").write_text("{}")
    (root / "train" / "bee" / ".DS_Store").write_bytes(b"\0")
    (root / "train" / "bee" / "nested").mkdir()
    _write(root / "train" / "bee" / "nested" / "1.png", "PNG", (0, 0, 0))  # not taken: below a class
    (root / "test" / "README").write_text("a file beside the class folders")
    return root


def test_the_folder_layout_counts_what_it_does_not_take_by_extension(tmp_path: Path, capsys) -> None:
    root = _with_strays(tmp_path / "strays")
    source = load_source(root)
    assert source.not_images == {".txt": 2, ".json": 1, "hidden": 1, "folder": 1, "no extension": 1}
    line = f"{root}: skipped 6 files that are not images: 2 .txt, 1 .json, 1 folder, 1 hidden, 1 no extension"
    assert not_images_line(source) == line
    assert main(["data", "prepare", str(root), "--size", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == line  # said before decoding, and again when the cache is reused
    assert main(["data", "prepare", str(root), "--size", "8"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == line
    assert prepare(root, size=8, workers=1, progress=False).counts == dict.fromkeys(SPLITS, 2)
    assert not capsys.readouterr().out  # progress=False prints nothing


def test_a_split_of_only_other_files_names_them(tmp_path: Path) -> None:
    root = _with_strays(tmp_path / "strays")
    for cls in CLASSES:
        (root / "test" / cls / "0.png").rename(root / "test" / cls / "0.png.bak")
    with pytest.raises(DataError) as info:
        load_source(root)
    assert str(info.value) == (
        f"{root / 'test'}: the test split is empty (no image files; "
        "skipped 3 files that are not images: 2 .bak, 1 no extension)"
    )


def test_a_file_with_an_image_extension_that_does_not_decode_is_still_an_error(tmp_path: Path) -> None:
    root = _with_strays(tmp_path / "strays")
    (root / "val" / "ant" / "broken.webp").write_bytes(b"RIFF\0\0\0\0WEBPnot really")
    with pytest.raises(DataError, match=rf"cannot read image {root}/val/ant/broken\.webp: .*--skip-bad"):
        prepare(root, size=8, workers=1, progress=False)
    data = prepare(root, size=8, workers=1, progress=False, skip_bad=True)
    assert data.manifest()["splits"]["val"]["skipped"] == 1
    assert data.manifest()["splits"]["val"]["skipped_files"][0].startswith("val/ant/broken.webp: ")
