"""Shared fixtures: a tiny synthetic dataset and a tiny study spec, sized for 2 CPU cores."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

# Ray: no usage stats prompt, no token auth warnings; torch: one thread per process (2 cores shared).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY_SPEC: dict[str, Any] = {
    "study": "tiny",
    "model": {"name": "resnet18_dynamic", "args": {"stem": "small", "width": 4}},
    "data": {"image_size": 16},
    "train": {
        "epochs": 2,
        "batch_size": 16,
        "channel_drop": 0.3,
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
    },
    "search": {
        "space": {
            "lr": {"type": "loguniform", "low": 0.01, "high": 0.2},
            "augment_strength": {"type": "uniform", "low": 0.0, "high": 0.5},
        },
        "num_samples": 2,
        "seed": 0,
    },
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"workers_per_trial": 2, "cpus_per_worker": 0.4, "driver_cpus": 0.1},
    "evaluate": {"enabled": True, "subsets": ["RGB", "R", "GB"]},
}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 40 images at 16 px in the ImageNet-mini layout (written once per test session)."""
    from dynconv.data.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("synthetic"), classes=3, per_class=40, size=16, seed=0)


def tiny_spec_dict(tmp_path: Path, dataset: Path, **sections: Any) -> dict[str, Any]:
    """TINY_SPEC with its data, MLflow store and Ray storage under `tmp_path`, plus section overrides."""
    data = copy.deepcopy(TINY_SPEC)
    data["data"]["root"] = str(dataset)
    data["data"]["cache_dir"] = str(tmp_path / "cache")
    data["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    data["storage_path"] = str(tmp_path / "ray_results")
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return data
