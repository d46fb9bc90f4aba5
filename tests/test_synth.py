"""The embedded synthetic dataset: layout, determinism, class design, idempotent ensure_synthetic, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dynconv.cli import main
from dynconv.data.sources import DataError, load_source
from dynconv.data.synth import COLOURS, class_table, ensure_synthetic, render_image, write_synthetic


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_datasets(tmp_path: Path) -> None:
    a = write_synthetic(tmp_path / "a", classes=3, per_class=4, size=16, seed=5)
    b = write_synthetic(tmp_path / "b", classes=3, per_class=4, size=16, seed=5)
    c = write_synthetic(tmp_path / "c", classes=3, per_class=4, size=16, seed=6)
    assert _files(a) == _files(b)
    assert _files(a).keys() == _files(c).keys() and _files(a) != _files(c)


def test_layout_is_imagenet_mini_with_class_files(tmp_path: Path) -> None:
    root = write_synthetic(tmp_path / "s", classes=4, per_class=10, size=20)
    source = load_source(root)
    assert source.layout == "txt" and source.num_classes == 4
    assert {s: len(e) for s, e in source.splits.items()} == {"train": 24, "val": 8, "test": 8}
    assert source.class_names == ["00_red_circle", "01_green_square", "02_blue_triangle", "03_yellow_cross"]
    first = (root / "train.txt").read_text().splitlines()[0]
    assert first == "images/00_red_circle/00_red_circle_0000.jpg 0"
    assert "| 3 | `03_yellow_cross` | cross | yellow | R+G |" in (root / "README.md").read_text()
    assert json.loads((root / "synthetic.json").read_text())["split_counts"] == [6, 2, 2]


def test_classes_need_both_shape_and_colour() -> None:
    table = class_table(10)
    assert len(set(table)) == 10
    shapes = {s for s, _ in table}
    colours = {c for _, c in table}
    assert all(sum(1 for s, _ in table if s == shape) >= 2 for shape in shapes)  # shape alone is not enough
    assert sum(1 for c in colours if sum(1 for _, k in table if k == c) >= 2) >= 3  # nor is colour
    red_only = [COLOURS[c][0] for s, c in table if s == "circle"]
    assert len(red_only) > len(set(red_only))  # circles collide when only R is seen
    assert len(set(class_table(36))) == 36
    with pytest.raises(DataError):
        class_table(37)


def test_rendered_colour_lives_in_the_right_channels() -> None:
    shape = render_image("circle", "blue", 64, np.random.default_rng(1)).astype(int)
    brightest_blue = shape[..., 2] > 160
    assert brightest_blue.sum() > 50
    assert shape[brightest_blue][:, 0].mean() < 120 and shape[brightest_blue][:, 1].mean() < 120


def test_ensure_synthetic_is_idempotent_and_repairs(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    ensure_synthetic(out, classes=2, per_class=3, size=16)
    stamp = (out / "train.txt").stat().st_mtime_ns
    ensure_synthetic(out, classes=2, per_class=3, size=16)
    assert (out / "train.txt").stat().st_mtime_ns == stamp
    next(iter((out / "images").rglob("*.jpg"))).unlink()  # incomplete: written again
    ensure_synthetic(out, classes=2, per_class=3, size=16)
    assert len(list((out / "images").rglob("*.jpg"))) == 6
    ensure_synthetic(out, classes=3, per_class=3, size=16)  # other arguments: written again
    assert load_source(out).num_classes == 3


def test_refuses_to_overwrite_other_data_and_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="not a synthetic dataset"):
        write_synthetic(tmp_path, classes=2, per_class=3, size=16)
    with pytest.raises(DataError, match="at least one image per class"):
        write_synthetic(tmp_path / "x", classes=2, per_class=2, size=16)
    with pytest.raises(DataError, match="do not sum"):
        write_synthetic(tmp_path / "x", classes=2, per_class=5, size=16, splits=(3, 1, 2))


def test_cli_synth(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    args = ["data", "synth", str(out), "--classes", "2", "--per-class", "3", "--size", "16", "--seed", "1"]
    assert main(args) == 0
    assert f"wrote synthetic dataset to {out}" in capsys.readouterr().out
    assert len((out / "train.txt").read_text().splitlines()) == 2
