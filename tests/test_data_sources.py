"""Dataset layouts and every list/folder problem that must fail with a one-line error naming file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dynconv.cli import main
from dynconv.data.sources import DataError, load_source


def _image(path: Path, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path)


def _txt_dataset(root: Path, lists: dict[str, str] | None = None) -> Path:
    """A 2-class ImageNet-mini style dataset; ``lists`` overrides the text of some split lists."""
    for cls in ("n01", "n02"):
        for i in range(3):
            _image(root / "images" / cls / f"{cls}_{i}.JPEG")
    default = {
        "train": "images/n01/n01_0.JPEG 0\nimages/n02/n02_0.JPEG 1\nimages/n01/n01_1.JPEG 0\n",
        "val": "images/n01/n01_2.JPEG 0\n",
        "test": "images/n02/n02_2.JPEG 1\n",
    }
    for split, text in {**default, **(lists or {})}.items():
        (root / f"{split}.txt").write_text(text)
    return root


def _folder_dataset(root: Path) -> Path:
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for cls in ("zebra", "ant"):
            for i in range(n):
                _image(root / split / cls / f"{i}.{'png' if i else 'jpg'}")
    return root


def test_txt_layout_is_detected_and_classes_inferred(tmp_path: Path) -> None:
    source = load_source(_txt_dataset(tmp_path))
    assert source.layout == "txt"
    assert source.num_classes == 2
    assert source.class_names == ["n01", "n02"]  # from the one directory each label lives in
    assert [e.label for e in source.splits["train"]] == [0, 1, 0]
    assert source.splits["train"][1].origin == "train.txt:2"


def test_txt_layout_uses_classes_file_and_normalises_paths(tmp_path: Path) -> None:
    root = _txt_dataset(tmp_path, {"val": "# comment\n\n./images/n02/../n01/n01_2.JPEG 0\n"})
    (root / "classes.txt").write_text("first\nsecond\nthird\n")
    with pytest.raises(DataError, match="class 2 \\('third'\\) has no training images"):
        load_source(root)
    (root / "classes.txt").write_text("first\nsecond\n")
    source = load_source(root)
    assert source.class_names == ["first", "second"]
    assert source.splits["val"][0].rel == "images/n01/n01_2.JPEG"
    assert source.splits["val"][0].origin == "val.txt:3"


def test_folder_layout_sorts_class_names_into_labels(tmp_path: Path) -> None:
    source = load_source(_folder_dataset(tmp_path))
    assert source.layout == "folder"
    assert source.class_names == ["ant", "zebra"]
    assert {(e.rel, e.label) for e in source.splits["val"]} == {("val/ant/0.jpg", 0), ("val/zebra/0.jpg", 1)}
    assert len(source.splits["train"]) == 4


BAD_LISTS = [
    ("train", "images/n01/n01_0.JPEG 0\nimages/n02/n02_0.JPEG\n", "train.txt:2: malformed line"),
    (
        "train",
        "images/n01/n01_0.JPEG 0\nimages/n02/n02_0.JPEG one\n",
        "train.txt:2: label 'one' is not an integer",
    ),
    ("train", "images/n01/n01_0.JPEG 0\nimages/n02/n02_0.JPEG -1\n", "train.txt:2: label -1 is negative"),
    ("train", "/etc/passwd 0\n", "train.txt:1: absolute path '/etc/passwd'"),
    ("train", "images/n01/n01_0.JPEG 0\n../outside.jpg 1\n", "train.txt:2: path '../outside.jpg' escapes"),
    ("val", "images/../../x.jpg 0\n", "val.txt:1: path 'images/../../x.jpg' escapes"),
    ("test", "\n# nothing\n", "test.txt: the test split is empty"),
    (
        "train",
        "images/n01/n01_0.JPEG 0\nimages/n02/n02_0.JPEG 2\n",
        "train.txt: class 1 has no training images",
    ),
]


@pytest.mark.parametrize(("split", "text", "message"), BAD_LISTS)
def test_bad_split_lists_name_the_file_and_line(tmp_path: Path, split: str, text: str, message: str) -> None:
    root = _txt_dataset(tmp_path, {split: text})
    with pytest.raises(DataError) as info:
        load_source(root)
    assert message in str(info.value)
    assert str(root) in str(info.value)
    assert "\n" not in str(info.value)


def test_duplicate_entry_names_both_lines(tmp_path: Path) -> None:
    text = "images/n01/n01_0.JPEG 0\nimages/n02/n02_0.JPEG 1\n./images/n01/n01_0.JPEG 0\n"
    with pytest.raises(DataError, match=r"train\.txt:3: duplicate entry .*first listed at .*train\.txt:1"):
        load_source(_txt_dataset(tmp_path, {"train": text}))


def test_label_out_of_range_of_classes_file_or_expected_count(tmp_path: Path) -> None:
    root = _txt_dataset(tmp_path, {"test": "images/n02/n02_2.JPEG 5\n"})
    (root / "classes.txt").write_text("a\nb\n")
    with pytest.raises(
        DataError, match=r"test\.txt:1: label 5 is out of range \(the dataset has 2 classes\)"
    ):
        load_source(root)
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"test\.txt:1: label 5 is out of range"):
        load_source(root, num_classes=2)


def test_missing_split_list(tmp_path: Path) -> None:
    root = _txt_dataset(tmp_path)
    (root / "val.txt").unlink()
    with pytest.raises(DataError, match=r"val\.txt: missing split list"):
        load_source(root)


def test_no_dataset_at_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no dataset found"):
        load_source(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_source(tmp_path / "nope")


def test_folder_layout_errors(tmp_path: Path) -> None:
    root = _folder_dataset(tmp_path)
    _image(root / "val" / "cat" / "0.jpg")
    with pytest.raises(DataError, match=r"val/cat: class 'cat' has no folder in train/"):
        load_source(root)
    (root / "val" / "cat" / "0.jpg").unlink()
    (root / "val" / "cat").rmdir()
    (root / "train" / "cat").mkdir()
    with pytest.raises(DataError, match=r"train: class 1 \('cat'\) has no training images"):
        load_source(root)
    (root / "train" / "cat").rmdir()
    for f in (root / "test").rglob("*.*"):
        f.rename(f.with_suffix(".txt"))
    with pytest.raises(DataError, match=r"test: the test split is empty"):
        load_source(root)


def test_cli_prints_one_line_error_without_traceback(tmp_path: Path, capsys) -> None:
    root = _txt_dataset(tmp_path, {"val": "images/n01/n01_2.JPEG zero\n"})
    assert main(["data", "prepare", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("dynconv: error: ") and f"{root}/val.txt:1: label 'zero'" in err
    assert "Traceback" not in err
