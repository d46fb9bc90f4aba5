"""The spec's dataset, made ready: the synthetic set written on first use, then the decode-once cache.

Imports `dynconv.spec` and `dynconv.data`; never Ray or MLflow.
"""

from __future__ import annotations

from pathlib import Path

from dynconv.data.cache import PreparedData, prepare
from dynconv.spec import JobSpec


def dataset_root(spec: JobSpec) -> Path:
    """The dataset root: `data.root`, or the embedded synthetic set (written if missing).

    The synthetic set lives in a subdirectory of `data.synthetic.dir` named for its settings, so studies
    with different synthetic settings sharing one `dir` each get their own data instead of rewriting it.
    """
    if spec.data.root is not None:
        return Path(spec.data.root).expanduser().resolve()
    from dynconv.data.synth import ensure_synthetic, synthetic_dir_name

    syn = spec.data.synthetic
    name = synthetic_dir_name(syn.classes, syn.per_class, syn.size, syn.seed)
    return ensure_synthetic(
        Path(syn.dir).expanduser().resolve() / name,
        classes=syn.classes,
        per_class=syn.per_class,
        size=syn.size,
        seed=syn.seed,
    )


def prepare_for_spec(spec: JobSpec, progress: bool = True) -> PreparedData:
    """Decode-once cache of the spec's dataset at the spec's image size (reused when unchanged)."""
    cache_dir = Path(spec.data.cache_dir).expanduser().resolve() if spec.data.cache_dir else None
    return prepare(
        dataset_root(spec),
        size=spec.data.image_size,
        cache_dir=cache_dir,
        skip_bad=spec.data.skip_bad,
        progress=progress,
    )
