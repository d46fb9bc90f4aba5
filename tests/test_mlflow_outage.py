"""The MLflow server goes away in the middle of a study and comes back: nothing is lost.

A real `dynconv tune` (subprocess, local Ray) logs to a local `mlflow server`. After a trial's first epoch
the server is killed; it is restarted on the same port and store once the trials have reported two more
epochs to Tune (so the outage provably covered logging, and training did not wait for the server: the
study driver holds the writes in memory). The study must finish without error, every epoch of every
trial must be in MLflow exactly once (including those reported during the outage, recognisable by their
timestamps), and the summary must say no run is incomplete.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dynconv.tracking.layout import find_runs
from dynconv.tracking.store import client
from tests.conftest import tiny_spec_dict
from tests.mlflow_server import MlflowServer

pytestmark = pytest.mark.ray

EPOCHS = 6  # enough that training goes on for a while after the first epoch reached MLflow
TRIALS = 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Epochs of most of a second on 2 quiet cores (150 images a class gave 0.3 s, and a trial's 4
    epochs had ended before the server was stopped), so that the outage falls between epochs of a
    running trial."""
    from dynconv.data.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("synthetic"), classes=3, per_class=300, size=24, seed=0)


def _spec(tmp_path: Path, dataset: Path, uri: str) -> Path:
    data = tiny_spec_dict(
        tmp_path,
        dataset,
        model={"args": {"stem": "small", "width": 8}},
        data={"image_size": 24},
        train={"epochs": EPOCHS},
        scheduler={"name": "none"},
        search={"num_samples": TRIALS, "max_concurrent": TRIALS},
        resources={"workers_per_trial": 1, "cpus_per_worker": 0.5, "driver_cpus": 0.2},
        evaluate={"enabled": False},
    )
    data["mlflow"] = {"tracking_uri": uri}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _trial_runs(uri: str) -> list:
    exp = client(uri).get_experiment_by_name("tiny")
    return [] if exp is None else find_runs(uri, exp.experiment_id, role="trial")


def _reported_since(storage: Path, t_s: float) -> int:
    """Epochs the trials reported to Tune at or after `t_s` (Tune's `result.json` of each trial)."""
    n = 0
    for path in storage.glob("*/*/result.json"):
        with contextlib.suppress(FileNotFoundError):
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            n += sum(r.get("timestamp", 0) >= t_s for r in lines if "epoch" in r)
    return n


def _wait(what: str, check, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"study ended while waiting for {what}:\n{proc.stdout.read()}"
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_server_outage_mid_study_loses_no_epoch(dataset: Path, tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "server")
    server.start()
    uri = server.url
    storage = tmp_path / "ray_results"
    c = client(uri)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynconv", "tune", str(_spec(tmp_path, dataset, uri))],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait(
            "a trial's first epoch",
            lambda: any(c.get_metric_history(r.info.run_id, "epoch") for r in _trial_runs(uri)),
            proc,
        )
        server.stop()
        t_stop = time.time() * 1000
        _wait(
            "training to go on for 2 epochs during the outage",
            lambda: _reported_since(storage, int(t_stop / 1000) + 1) >= 2,
            proc,
        )
        t_restart = time.time() * 1000
        server.start()
        t_up = time.time() * 1000
        out, _ = proc.communicate(timeout=300)
        print(f"\noutage: {(t_up - t_stop) / 1000:.1f} s, {(t_up - t_restart) / 1000:.1f} s of it restarting")
        assert proc.returncode == 0, out
        assert "MLflow runs incomplete: none" in out, out

        runs = _trial_runs(uri)
        assert len(runs) == TRIALS and {r.info.status for r in runs} == {"FINISHED"}
        during = 0
        for run in runs:
            history = c.get_metric_history(run.info.run_id, "epoch")
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), "each epoch exactly once"
            during += sum(t_stop <= m.timestamp <= t_up for m in history)
        assert during >= 1, "some epochs were logged while the server was down, and landed"
        print(f"epochs logged during the outage that landed later: {during}")
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
