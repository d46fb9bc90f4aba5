"""Shared fixtures: a tiny synthetic dataset, a tiny study spec sized for 2 CPU cores, and one study run
through the real CLI."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

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


@dataclass
class CliStudy:
    """`dynconv tune` run as a user runs it, with a second `dynconv tune` of the same study tried while
    the first one holds its lock (what tests/test_console.py and tests/test_study_lock.py read)."""

    tmp_path: Path
    pid: int  # the first command's pid
    holder: int  # the pid the study lock named while the second command ran
    holder_parent: int  # its parent's pid, read while it ran
    console: str  # the first command's stdout, then its stderr
    returncode: int
    second: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def cli_study(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> CliStudy:
    """A 2-trial, 2-epoch study (1 worker per trial) through the real CLI, about 20 s on 2 cores; both
    modules share it rather than each paying a Ray start and a study."""
    from dynconv.tune.study_lock import lock_path

    tmp_path = tmp_path_factory.mktemp("cli_study")
    data = tiny_spec_dict(tmp_path, tiny_dataset, resources={"workers_per_trial": 1, "cpus_per_worker": 0.5})
    data["evaluate"] = {"enabled": False}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "dynconv", "tune", str(spec_file)]
    first = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lock = lock_path(str(tmp_path / "ray_results"), "tiny")
        deadline = time.monotonic() + 60
        while not (lock.exists() and "pid " in lock.read_text()):
            assert time.monotonic() < deadline, "timed out waiting for the first study's lock"
            time.sleep(0.2)
        holder = int(re.search(r"pid (\d+) ", lock.read_text()).group(1))
        holder_parent = int(Path(f"/proc/{holder}/stat").read_text().rsplit(")", 1)[1].split()[1])
        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        out, err = first.communicate(timeout=400)
    finally:
        if first.poll() is None:
            first.kill()
    return CliStudy(tmp_path, first.pid, holder, holder_parent, out + err, first.returncode, second)
