"""`dynconv predict MODEL PATH...`: score image files with a registered model or a run's checkpoint.

MODEL is `models:/NAME@ALIAS` or `models:/NAME/VERSION` (the registered MLflow model, downloaded from the
store and answered by the `ServedPredictor` that `mlflow models serve` answers with, class names from its
metadata), or `runs:/RUN_ID` / a bare run id (that run's checkpoint, served as a study would register it;
its classes are named by index). PATH: image files and folders, searched recursively for the formats
`dynconv.data.decode` reads. Each file is decoded as training decoded its images
(`ServedPredictor.decode`); a file that does not decode becomes a row with its error, not the end of the
run. Files are scored in batches, with a progress bar when there is more than one batch (tqdm when it is
installed, else a line every 10 %). The answer: one CSV row per file (`COLUMNS`) and a short table on
stdout.

Imports `dynconv.tracking` (never `mlflow` directly), `dynconv.evaluation.model` and
`dynconv.models.serving`.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynconv.errors import DynconvError, one_line
from dynconv.models.serving import RequestError, ServedPredictor, channels_name, parse_channels

COLUMNS = (
    "path",
    "channels",
    "class_index",
    "class_name",
    "probability",
    "top_classes",
    "top_probabilities",
    "error",
)
"""The CSV's columns; the top-k lists are `;`-separated, best first."""
SHOWN_ROWS = 10
"""Rows of the table printed on stdout (the CSV holds them all)."""


@dataclass(frozen=True)
class Scored:
    """What `predict_files` did: the rows written, how many files did not decode, where the CSV is."""

    rows: list[dict[str, Any]]
    failed: int
    out: Path


def predict_files(
    uri: str,
    model_ref: str,
    paths: Sequence[str],
    *,
    channels: str = "RGB",
    top_k: int = 5,
    out: Path = Path("predictions.csv"),
    batch_size: int = 64,
) -> Scored:
    """Score the images under `paths` with `model_ref` of store `uri` shown as `channels`, write the CSV
    `out` and print a short table; bad arguments are one `DynconvError` line."""
    slots = parse_channels(channels)  # a bad subset fails before the model is downloaded
    files = image_files(paths)
    predictor, what = load_predictor(uri, model_ref)
    rows = score_files(predictor, files, slots, top_k, batch_size)
    write_csv(rows, out)
    failed = sum(1 for r in rows if r["error"])
    print(format_table(rows, out))
    print(
        f"scored {len(rows) - failed} of {len(rows)} images with {what}, channels {channels_name(slots)}"
        + (f" ({failed} did not decode: see the error column)" if failed else "")
        + f" -> {out}"
    )
    return Scored(rows, failed, out)


def load_predictor(uri: str, model_ref: str) -> tuple[ServedPredictor, str]:
    """The predictor of a registered version (`models:/...`) or of a run's checkpoint (`runs:/ID`, an
    id), and a few words saying which model it is."""
    from dynconv.tracking.layout import RUN_ID_PATTERN

    if model_ref.startswith("models:/"):
        return _registered_predictor(uri, model_ref)
    run_id = model_ref.removeprefix("runs:/").strip("/")
    if not RUN_ID_PATTERN.match(run_id):
        raise DynconvError(
            f"{model_ref!r} names no model: use models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID or a "
            "run id"
        )
    return _checkpoint_predictor(uri, run_id), f"the checkpoint of run {run_id}"


def _registered_predictor(uri: str, model_ref: str) -> tuple[ServedPredictor, str]:
    from dynconv.tracking.registry import download_served_model, registered_version
    from dynconv.tracking.served_pyfunc import load_predictor as load_served

    version = registered_version(uri, model_ref).version
    with tempfile.TemporaryDirectory(prefix="dynconv-predict-") as tmp:
        local = download_served_model(uri, model_ref, Path(tmp))
        try:
            predictor = load_served(local)
        except KeyError as exc:  # a model logged before its metadata recorded the image size
            raise DynconvError(f"{model_ref} (version {version}) records no {exc} in its metadata") from None
    return predictor, f"{model_ref} (version {version})"


def _checkpoint_predictor(uri: str, run_id: str) -> ServedPredictor:
    from dynconv.evaluation.model import served_from_checkpoint
    from dynconv.tracking.artifacts import load_checkpoint

    state = load_checkpoint(uri, run_id)
    try:
        image_size = int(state["spec"]["data"]["image_size"])
    except (KeyError, TypeError, ValueError):
        raise DynconvError(f"the checkpoint of run {run_id} records no data.image_size in its spec") from None
    return ServedPredictor(served_from_checkpoint(state, run_id), image_size)


def image_files(paths: Sequence[str]) -> list[Path]:
    """The files to score: each file named (whatever its extension), and the images under each folder
    named (recursively, sorted, by the extensions Pillow decodes); a path that does not exist, or
    nothing to score, is one line."""
    from dynconv.data.decode import image_suffixes

    suffixes = image_suffixes()
    files: list[Path] = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        else:
            raise DynconvError(f"{text}: no such file or folder")
    if not files:
        raise DynconvError(f"no image files under {', '.join(paths)} (looked for {_some(suffixes)})")
    return list(dict.fromkeys(files))


def _some(suffixes: frozenset[str]) -> str:
    common = [s for s in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif") if s in suffixes]
    return ", ".join(common) + f" and {len(suffixes) - len(common)} more extensions"


def score_files(
    predictor: ServedPredictor,
    files: Sequence[Path],
    slots: tuple[int, ...],
    top_k: int,
    batch_size: int,
) -> list[dict[str, Any]]:
    """One row (`COLUMNS`) per file, in `files`' order: its prediction, or the reason it did not decode."""
    import numpy as np

    rows: list[dict[str, Any]] = []
    with Progress(len(files), batch_size) as advance:
        for start in range(0, len(files), batch_size):
            batch = files[start : start + batch_size]
            decoded, failed = [], {}
            for path in batch:
                try:
                    decoded.append(predictor.decode(path.read_bytes(), "the file"))
                except (RequestError, OSError) as exc:
                    failed[path] = one_line(exc, 200)
            answer = predictor.predict_decoded(
                np.stack(decoded) if decoded else np.zeros((0, 3, 1, 1), np.uint8), slots, top_k
            )
            answers = iter(answer.to_dict("records"))
            rows += [
                _row(path, slots, None if path in failed else next(answers), failed.get(path))
                for path in batch
            ]
            advance(len(batch))
    return rows


def _row(path: Path, slots: tuple[int, ...], answer: dict[str, Any] | None, error: str | None) -> dict:
    """A CSV row: the file, the channels it was shown as, and its answer or its error."""
    row: dict[str, Any] = {"path": str(path), "channels": channels_name(slots), "error": error or ""}
    if answer is None:
        return {**{c: "" for c in COLUMNS}, **row}
    return {
        **row,
        "class_index": answer["class_index"],
        "class_name": answer["class_name"],
        "probability": f"{answer['probability']:.6g}",
        "top_classes": ";".join(answer["top_classes"]),
        "top_probabilities": ";".join(f"{p:.6g}" for p in answer["top_probabilities"]),
    }


class Progress:
    """A context manager yielding `advance(n)`: a tqdm bar on stderr when tqdm is installed, else a line
    every 10 %; nothing for a single batch."""

    def __init__(self, total: int, batch_size: int) -> None:
        self.total, self.shown = total, total > batch_size
        self.done, self.next_line, self.bar = 0, total / 10, None

    def __enter__(self):
        if self.shown:
            try:
                from tqdm import tqdm
            except ImportError:
                self.started = time.monotonic()
            else:
                self.bar = tqdm(total=self.total, unit="img", desc="scoring", file=sys.stderr)
        return self.advance

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.shown and (self.done >= self.next_line or self.done == self.total):
            self.next_line += self.total / 10
            rate = self.done / max(time.monotonic() - self.started, 1e-9)
            print(f"scored {self.done}/{self.total} images ({rate:.0f} img/s)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def write_csv(rows: Sequence[dict[str, Any]], out: Path) -> None:
    """The rows as a CSV at `out` (its folder made when missing); written beside and renamed, so a
    failed run leaves no half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def format_table(rows: Sequence[dict[str, Any]], out: Path) -> str:
    """The first `SHOWN_ROWS` rows as a short table (file, class, probability, or the error)."""
    shown = [
        (_short(r["path"]), r["class_name"] if not r["error"] else "-", r["probability"] or r["error"])
        for r in rows[:SHOWN_ROWS]
    ]
    head = ("file", "class", "probability")
    widths = [max(len(str(v)) for v in column) for column in zip(head, *shown, strict=False)]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=False)).rstrip() for r in (head, *shown)
    ]
    if len(rows) > SHOWN_ROWS:
        lines.append(f"... {len(rows) - SHOWN_ROWS} more in {out}")
    return "\n".join(lines)


def _short(path: str) -> str:
    """`path` relative to the working directory when it is under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path
