"""The spec's dataset, made ready: the synthetic set written on first use, then the decode-once cache,
then checked against the spec (`check_data_fits_spec`) so a study that cannot train says so in one line
before Ray starts, not in every trial (each retried) after it.

Imports `dynconv.spec` and `dynconv.data`; never Ray or MLflow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dynconv.data.cache import prepare
from dynconv.data.cache_files import PreparedData
from dynconv.data.sources import DataError
from dynconv.spec import JobSpec, absolute_path


def dataset_root(spec: JobSpec) -> Path:
    """The dataset root: `data.root`, or the embedded synthetic set (written if missing).

    The synthetic set lives in a subdirectory of `data.synthetic.dir` named for its settings, so studies
    with different synthetic settings sharing one `dir` each get their own data instead of rewriting it.
    """
    if spec.data.root is not None:
        return absolute_path(spec.data.root, "data.root")
    from dynconv.data.synth import ensure_synthetic, synthetic_dir_name

    syn = spec.data.synthetic
    name = synthetic_dir_name(syn.classes, syn.per_class, syn.size, syn.seed)
    return ensure_synthetic(
        absolute_path(syn.dir, "data.synthetic.dir") / name,
        classes=syn.classes,
        per_class=syn.per_class,
        size=syn.size,
        seed=syn.seed,
    )


def prepare_for_spec(spec: JobSpec, progress: bool = True) -> PreparedData:
    """Decode-once cache of the spec's dataset at the spec's image size (reused when unchanged), checked
    against the spec (`check_data_fits_spec`). The study driver, `evaluate` and `rerun` all come here."""
    cache_dir = absolute_path(spec.data.cache_dir, "data.cache_dir") if spec.data.cache_dir else None
    data = prepare(
        dataset_root(spec),
        size=spec.data.image_size,
        cache_dir=cache_dir,
        skip_bad=spec.data.skip_bad,
        progress=progress,
        max_pixels=spec.data.max_pixels,
    )
    check_data_fits_spec(spec, data)
    return data


def check_data_fits_spec(spec: JobSpec, data: PreparedData) -> None:
    """Raise a one-line DataError when the prepared data cannot train or score the spec's study.

    * The train split holds at least one full batch per DDP worker: `fit` batches it with `drop_last`,
      `batch_size` images per worker (the largest searched `batch_size` when it is searched), so a
      smaller split gives epochs without a single step (`dynconv.train.loop`).
    * Every split used (train and val by training, `evaluate.split` by the evaluation) holds at least
      2 classes: with one class every prediction is right and every metric reads 100 %.
    * Every class of val and of `evaluate.split` has training images, so no score counts a class the
      model could not learn. (A cache built by `prepare` already ensures this, as the dataset checks
      in `dynconv.data.sources` refuse such lists; a cache edited or built otherwise is caught here.)
    """
    root = data.manifest()["built_from"]["root"]
    used = list(dict.fromkeys(("train", "val", spec.evaluate.split)))
    classes = {split: np.unique(data.split(split).labels) for split in used}
    for split in used:
        if len(classes[split]) < 2:
            only = _class_name(data, int(classes[split][0])) if len(classes[split]) else "none"
            raise DataError(
                f"{root}: the {split} split holds images of only one class ({only}), so every metric "
                f"would read 100 %; a study needs at least 2 classes in each split it uses "
                f"({', '.join(used)})"
            )
    for split in used[1:]:
        missing = np.setdiff1d(classes[split], classes["train"])
        if len(missing):
            raise DataError(
                f"{root}: class {_class_name(data, int(missing[0]))} of the {split} split has no images "
                "in the train split, so the model cannot learn it; add training images or drop the class"
            )
    workers = spec.resources.workers_per_trial
    searched = spec.search.space.get("batch_size")
    key, batch = "train.batch_size", spec.train.batch_size
    if searched is not None and searched.values:
        key, batch = "search.space.batch_size", max(searched.values)
    images = len(data.split("train"))
    if batch * workers > images:
        raise DataError(
            f"{key} {batch} × {workers} worker{'s' if workers > 1 else ''} exceeds the {images} images "
            f"of the train split of {root}, so an epoch would have no full batch; lower {key} or "
            "resources.workers_per_trial"
        )


def _class_name(data: PreparedData, label: int) -> str:
    """`2 ('cat')` when the dataset names its classes, else `2`."""
    names = data.class_names
    if names and label < len(names) and names[label] != str(label):
        return f"{label} ({names[label]!r})"
    return str(label)
