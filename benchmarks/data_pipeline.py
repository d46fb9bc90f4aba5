"""Data pipeline benchmark (not a timed test): images per second of two ways to feed one training epoch.

(a) baseline - torchvision ``ImageFolder`` + PIL: every epoch decodes every JPEG again and runs the
    seed's per-sample CPU transforms (resize to SIZE, horizontal/vertical flip, rotation ±30°,
    perspective 0.3, to tensor, normalise) in ``DataLoader`` worker processes;
(b) dynconv - one epoch of ``ShardedBatches`` over the decode-once cache, with ``normalize`` and
    ``BatchAugment(1.0)`` on the training device (the one-time cache build is timed separately).

Both run in the same process, one after the other, after a warm-up pass that puts the files in the
page cache. Without ``--root`` the synthetic dataset is written to a temporary directory first;
``--source-size 375`` makes its JPEGs about as large as real ImageNet photos.

    python benchmarks/data_pipeline.py --classes 10 --per-class 100 --source-size 84
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from dynconv.data.augment import IMAGENET_MEAN, IMAGENET_STD, BatchAugment, normalize
from dynconv.data.cache import prepare
from dynconv.data.loader import ShardedBatches
from dynconv.data.sources import detect_layout
from dynconv.data.synth import write_synthetic


def baseline_epoch(root: Path, size: int, batch_size: int, workers: int) -> tuple[int, float]:
    """One epoch of ImageFolder + PIL + per-sample transforms through a DataLoader: (images, seconds)."""
    folder = root / "train" if detect_layout(root) == "folder" else root / "images"
    transform = v2.Compose(
        [
            v2.Resize((size, size)),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
            v2.RandomRotation(30),
            v2.RandomPerspective(0.3, p=1.0),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    start = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += len(x)
    return n, time.perf_counter() - start


def cache_epoch(root: Path, size: int, batch_size: int, device: str) -> tuple[int, float]:
    """One epoch over the cache's train split, normalised and augmented at strength 1: (images, seconds)."""
    train = prepare(root, size=size, progress=False).split("train")
    batches = ShardedBatches.from_split(train, batch_size, drop_last=False, pin_memory=device == "cuda")
    augment = BatchAugment(1.0)
    start = time.perf_counter()
    n = 0
    for x_uint8, _ in batches:
        x = augment(normalize(x_uint8, device))
        n += len(x)
    if device == "cuda":
        torch.cuda.synchronize()
    return n, time.perf_counter() - start


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="an existing dataset (default: synthetic)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--source-size", type=int, default=84, help="side of the synthetic JPEGs")
    parser.add_argument("--size", type=int, default=84, help="training image size")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers for (a)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = write_synthetic(
                Path(tmp) / "synth", classes=args.classes, per_class=args.per_class, size=args.source_size
            )
        start = time.perf_counter()
        prepare(root, size=args.size, progress=False)
        build = time.perf_counter() - start

        baseline_epoch(root, args.size, args.batch_size, args.loader_workers)  # warm-up: page cache
        cache_epoch(root, args.size, args.batch_size, args.device)
        n_a, t_a = baseline_epoch(root, args.size, args.batch_size, args.loader_workers)
        n_b, t_b = cache_epoch(root, args.size, args.batch_size, args.device)

    rate_a, rate_b = n_a / t_a, n_b / t_b
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {_cpu_name()}, {cores} usable cores, device {args.device}")
    print(f"cache build (one-time, decode + resize): {build:.2f} s")
    print(f"(a) ImageFolder + PIL + DataLoader({args.loader_workers} workers): {n_a} images in {t_a:.2f} s")
    print(f"    = {rate_a:,.0f} images/s")
    print(f"(b) dynconv cache + BatchAugment(1.0) on {args.device}: {n_b} images in {t_b:.2f} s")
    print(f"    = {rate_b:,.0f} images/s")
    print(f"ratio (b)/(a): {rate_b / rate_a:.1f}x")


if __name__ == "__main__":
    main()
