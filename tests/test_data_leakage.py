"""Leakage and orientation at decode time: images with identical decoded pixels in two splits are
counted per split pair (an error with --strict); EXIF orientation is applied. (~1 s, tiny images.)"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynconv.cli import main
from dynconv.data.cache import prepare
from dynconv.data.decode import decode_image
from dynconv.data.sources import DataError


def _image(seed: int, size=(20, 16)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _save(img: Image.Image, path: Path, fmt: str = "PNG", **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)


def _dataset(root: Path) -> Path:
    """2 classes; test holds a byte copy of a train image, val a re-encoded (PNG -> BMP) copy of another."""
    lists = {"train": [], "val": [], "test": []}
    for k in range(2):
        for i in range(3):
            _save(_image(10 * k + i), root / f"train/{k}_{i}.png")
            lists["train"].append(f"train/{k}_{i}.png {k}")
    for split, seed in (("val", 100), ("test", 200)):
        _save(_image(seed), root / f"{split}/own.png")
        lists[split].append(f"{split}/own.png 0")
    (root / "test/copy.png").write_bytes((root / "train/1_2.png").read_bytes())
    lists["test"].append("test/copy.png 1")
    _save(Image.open(root / "train/0_1.png"), root / "val/recoded.bmp", "BMP")
    lists["val"].append("val/recoded.bmp 0")
    for split, lines in lists.items():
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_duplicates_across_splits_are_counted_per_pair(tmp_path: Path, capsys) -> None:
    root = _dataset(tmp_path / "d")
    data = prepare(root, size=8, workers=1)
    leakage = data.manifest()["leakage"]
    counts = {pair: v["count"] for pair, v in leakage.items()}
    assert counts == {"train/val": 1, "train/test": 1, "val/test": 0}
    assert leakage["train/test"]["examples"] == ["test/copy.png = train/1_2.png"]
    assert leakage["train/val"]["examples"] == ["val/recoded.bmp = train/0_1.png"]  # pixels, not bytes
    out = capsys.readouterr().out
    assert "warning: images with identical pixels in two splits: train/val 1, train/test 1" in out


def test_strict_makes_leakage_an_error_also_for_a_reused_cache(tmp_path: Path, capsys) -> None:
    root = _dataset(tmp_path / "d")
    for _ in range(2):  # built, then reused: the manifest keeps the counts
        with pytest.raises(DataError) as err:
            prepare(root, size=8, workers=1, progress=False, strict=True)
        assert "\n" not in str(err.value) and "train/val 1, train/test 1" in str(err.value)
    capsys.readouterr()
    assert main(["data", "prepare", str(root), "--size", "8", "--strict"]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and "identical pixels" in captured.err
    assert "Traceback" not in captured.err


def test_clean_splits_pass_strict(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "d")
    for split, bad in (("test", "test/copy.png"), ("val", "val/recoded.bmp")):
        lines = [ln for ln in (root / f"{split}.txt").read_text().splitlines() if not ln.startswith(bad)]
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    data = prepare(root, size=8, workers=1, progress=False, strict=True)
    assert all(v["count"] == 0 for v in data.manifest()["leakage"].values())


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """Stored 32 wide x 16 high: left half red, right half blue. Orientation 6 (rotate 90 deg clockwise
    to display) shows it 16 wide x 32 high with red on top."""
    stored = np.zeros((16, 32, 3), dtype=np.uint8)
    stored[:, :16, 0] = 255
    stored[:, 16:, 2] = 255
    img = Image.fromarray(stored, "RGB")
    exif = img.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    (tmp_path / "rotated.jpg").write_bytes(buf.getvalue())
    arr = decode_image(tmp_path / "rotated.jpg", 16).astype(int)  # (3, H, W)
    top, bottom = arr[:, :6], arr[:, -6:]
    assert top[0].mean() > 200 and top[2].mean() < 50  # red on top
    assert bottom[2].mean() > 200 and bottom[0].mean() < 50  # blue below
    img.save(tmp_path / "plain.jpg", "JPEG", quality=95)  # without the tag: red left, as stored
    plain = decode_image(tmp_path / "plain.jpg", 16).astype(int)
    assert plain[0, :, :6].mean() > 200 and plain[2, :, -6:].mean() > 200
