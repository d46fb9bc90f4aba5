"""Leakage between splits: images whose decoded pixels are identical in two splits.

The cache hashes every image's decoded pixels during its one decode (``decode.decode_and_hash``), so
finding duplicates costs a dictionary lookup per image. The counts go into the cache's manifest and
its summary; ``dynconv data prepare --strict`` makes any duplicate an error.
"""

from __future__ import annotations

import itertools

from dynconv.data.sources import SPLITS


def find_leakage(digests: dict[str, list[tuple[str, str]]], examples: int = 5) -> dict[str, dict]:
    """Images with identical decoded pixels in two splits: per split pair ``"a/b"``, how many images of
    ``b`` equal some image of ``a``, and a few ``"b file = a file"`` examples.

    ``digests``: per split, (relative path, pixel digest) of every image in the cache. Such duplicates
    let a model be scored on images it trained on, which inflates every accuracy a study reports.
    """
    out = {}
    for a, b in itertools.combinations(SPLITS, 2):
        first: dict[str, str] = {}
        for rel, digest in digests[a]:
            first.setdefault(digest, rel)
        dups = [f"{rel} = {first[digest]}" for rel, digest in digests[b] if digest in first]
        out[f"{a}/{b}"] = {"count": len(dups), "examples": dups[:examples]}
    return out


def leakage_line(leakage: dict[str, dict]) -> str | None:
    """One line naming the count per split pair and an example, or None when no split shares an image."""
    pairs = {pair: v for pair, v in leakage.items() if v["count"]}
    if not pairs:
        return None
    counts = ", ".join(f"{pair} {v['count']}" for pair, v in pairs.items())
    example = next(iter(pairs.values()))["examples"][0]
    return f"images with identical pixels in two splits: {counts} (e.g. {example})"
