"""The cluster path: `ray start --head`, then `ray job submit -- dynconv tune tune_jobs/quickstart.yaml`.

The quickstart spec is shrunk with `--set` (tiny data, 2 epochs, 2 trials) so the job finishes in about a
minute; everything else (local head, job API, working dir upload, MLflow from the job) is the real path.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dynconv.tracking.layout import find_runs
from dynconv.tracking.store import client

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    """A local Ray head started the way a cluster's head is, torn down after the module."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    # Ray 2.60 secures clusters with a token; the job CLI sends it only when told the mode explicitly.
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    temp_dir = tempfile.mkdtemp(prefix="rayh_", dir="/tmp")  # short: unix socket paths are length-limited
    port, dashboard, agent = _free_port(), _free_port(), _free_port()
    # A free agent port too: the default (52365) may still be held by an agent of a Ray killed earlier
    # on this machine (tests/test_interrupt_resume.py kills one), and then no job can be submitted.
    subprocess.run(
        [RAY, "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--num-cpus=2",
         f"--dashboard-agent-listen-port={agent}", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
         "--disable-usage-stats"],
        check=True, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    yield f"http://127.0.0.1:{dashboard}", env
    subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_quickstart_spec_to_the_end(head, tiny_dataset: Path, tmp_path: Path) -> None:
    address, env = head
    work = tmp_path / "job"
    (work / "tune_jobs").mkdir(parents=True)
    shutil.copy(ROOT / "tune_jobs" / "quickstart.yaml", work / "tune_jobs")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = {
        "data.root": str(tiny_dataset),
        "data.cache_dir": str(tmp_path / "cache"),
        "data.image_size": "16",
        "model.args.width": "4",
        "train.epochs": "2",
        "train.batch_size": "16",
        "search.num_samples": "2",
        "scheduler.grace_period": "1",
        "evaluate.subsets": "[RGB,R]",
        "mlflow.tracking_uri": uri,
        "storage_path": str(tmp_path / "ray_results"),
    }
    sets = [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]
    for _ in range(12):  # the head's job agent may still be starting: Ray answers "No available agent"
        job = subprocess.run(
            [RAY, "job", "submit", "--address", address, "--working-dir", str(work), "--",
             sys.executable, "-m", "dynconv", "tune", "tune_jobs/quickstart.yaml", *sets],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if "No available agent" not in job.stderr:
            break
        time.sleep(5)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout
    assert "last val_acc" in job.stdout and "Browse it with: dynconv ui" in job.stdout

    c = client(uri)
    exp = c.get_experiment_by_name("quickstart")
    studies = find_runs(uri, exp.experiment_id, role="study")
    assert [r.info.status for r in studies] == ["FINISHED"]
    trials = find_runs(uri, exp.experiment_id, role="trial")
    assert len(trials) == 2
    assert len(find_runs(uri, exp.experiment_id, role="evaluation")) == 1
