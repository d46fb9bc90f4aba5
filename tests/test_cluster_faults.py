"""Multi-node studies and faults on a simulated Ray cluster (several raylets on this machine).

The worker nodes offer a custom resource `fake_gpu` (one per node, like one GPU per cloud node) and the
trials' DDP workers request it, so a trial's two workers must land on two different nodes. Then a
worker process is killed, and a whole node removed, mid-trial: the trial must resume from its latest
checkpoint, finish with the right epoch count and keep its single MLflow run.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dynconv.spec import parse_spec
from dynconv.tracking.layout import find_runs
from dynconv.tracking.store import client
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.ray

WORKER_NODES = 3
EPOCHS = 4


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True})
    for _ in range(WORKER_NODES):
        c.add_node(num_cpus=1, resources={"fake_gpu": 1})
    c.wait_for_nodes()
    c.connect()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Epochs of a few seconds, longer than Ray Train's ~2 s checkpoint registration lag."""
    from dynconv.data.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("synthetic"), classes=3, per_class=200, size=32, seed=0)


def _spec(tmp_path: Path, dataset: Path, num_samples: int, epochs: int = EPOCHS) -> Any:
    return parse_spec(
        tiny_spec_dict(
            tmp_path,
            dataset,
            model={"args": {"stem": "small", "width": 16}},
            data={"image_size": 32},
            train={"epochs": epochs},
            scheduler={"name": "none"},
            search={"num_samples": num_samples, "max_concurrent": 1},
            resources={
                "workers_per_trial": 2,
                "cpus_per_worker": 0.5,
                "worker_resources": {"fake_gpu": 1},
                "driver_cpus": 0.2,
            },
            failure={"trial_max_failures": 1, "worker_max_failures": 3},
            evaluate={"enabled": False},
        )
    )


def _train_workers(state: str | None = None) -> list:
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker")]
    if state:
        filters.append(("state", "=", state))
    import ray

    # This test's cluster, not another Ray instance on the machine.
    address = ray.get_runtime_context().gcs_address
    return list_actors(address=address, filters=filters, detail=True, limit=10_000)


def _study_in_thread(spec: Any) -> tuple[threading.Thread, dict]:
    from dynconv.tune.study import run_study

    box: dict = {}

    def target() -> None:
        try:
            box["result"] = run_study(spec)
        except BaseException as err:  # surfaced by the test
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _wait_for_epoch(uri: str, epoch: int, thread: threading.Thread, timeout_s: float = 240) -> str:
    """Run id of the first trial run that has logged `epoch`."""
    c = client(uri)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert thread.is_alive(), "the study ended before the fault could be injected"
        exp = c.get_experiment_by_name("tiny")
        for run in [] if exp is None else find_runs(uri, exp.experiment_id, role="trial"):
            if any(m.step >= epoch for m in c.get_metric_history(run.info.run_id, "epoch")):
                return run.info.run_id
        time.sleep(0.5)
    raise AssertionError(f"no trial reached epoch {epoch}")


def _assert_recovered(result: Any, uri: str, run_id: str, seconds: float) -> None:
    """One MLflow run, all epochs present, at most one epoch trained twice."""
    c = client(uri)
    runs = find_runs(uri, result.experiment_id, role="trial")
    assert [r.info.run_id for r in runs] == [run_id], "the restarted trial continued its own run"
    assert c.get_run(run_id).info.status == "FINISHED"
    epochs = [m.step for m in c.get_metric_history(run_id, "epoch")]
    assert sorted(set(epochs)) == list(range(1, EPOCHS + 1))
    lost = len(epochs) - EPOCHS
    assert lost <= 1, f"lost {lost} epochs: {epochs}"
    print(f"\nrecovered: epochs trained twice = {lost}, study wall-clock {seconds:.1f} s")


def test_ddp_workers_of_a_trial_land_on_different_nodes(cluster, dataset: Path, tmp_path: Path) -> None:
    from dynconv.tune.study import run_study

    before = {a.actor_id for a in _train_workers()}
    result = run_study(_spec(tmp_path, dataset, num_samples=1, epochs=1))  # placement, not training

    groups: dict[str, set[str]] = {}
    for actor in _train_workers():
        if actor.actor_id not in before:
            groups.setdefault(actor.placement_group_id, set()).add(actor.node_id)
    assert len(groups) == 1, "one worker group for the trial"
    head = cluster.head_node.node_id
    for nodes in groups.values():
        assert len(nodes) == 2 and head not in nodes, "two DDP workers on two GPU nodes"

    runs = find_runs(result.tracking_uri, result.experiment_id, role="trial")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [t.epochs for t in result.trials] == [1]


def test_killed_training_worker_resumes_from_checkpoint(cluster, dataset: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path, dataset, num_samples=1)
    t0 = time.monotonic()
    thread, box = _study_in_thread(spec)
    run_id = _wait_for_epoch(spec.tracking_uri(), 2, thread)
    victim = _train_workers("ALIVE")[0]
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert "error" not in box, box.get("error")
    _assert_recovered(box["result"], spec.tracking_uri(), run_id, time.monotonic() - t0)


def test_removed_node_mid_trial_resumes_on_the_others(cluster, dataset: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path, dataset, num_samples=1)
    t0 = time.monotonic()
    thread, box = _study_in_thread(spec)
    run_id = _wait_for_epoch(spec.tracking_uri(), 2, thread)
    busy = {a.node_id for a in _train_workers("ALIVE")}
    node = next(n for n in cluster.worker_nodes if n.node_id in busy)
    cluster.remove_node(node, allow_graceful=False)
    thread.join(timeout=300)
    assert "error" not in box, box.get("error")
    _assert_recovered(box["result"], spec.tracking_uri(), run_id, time.monotonic() - t0)
