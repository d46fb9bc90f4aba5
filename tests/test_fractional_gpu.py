"""`resources.gpus_per_worker`: validation before Ray starts, and four trials packed onto one (logical) GPU.

The packing test runs on CPU machines: Ray is started with one unit of a custom resource `fake_gpu`, and
`run_study(..., gpu_resource="fake_gpu")` sends the GPU share through the same code that computes it for a
real GPU (dynconv/tune/resources.py → ScalingConfig.resources_per_worker, max_concurrent_trials). A thread
polls Ray's placement-group table while the study runs: each trial's worker group holds one bundle, and
four bundles of 0.25 fake_gpu must be held at the same moment.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dynconv.spec import SpecError, parse_spec
from dynconv.tune.resources import describe_trial_resources, uses_cuda, worker_resources
from dynconv.tune.search import max_concurrent_trials
from tests.conftest import TINY_SPEC, tiny_spec_dict


def _spec(**resources: Any):
    data = copy.deepcopy(TINY_SPEC)
    data["resources"].update(resources)
    data["search"]["num_samples"] = 8
    return parse_spec(data, source="job.yaml")


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"gpu": True, "gpus_per_worker": 0}, "fraction in (0, 1) or a whole number 1-8, got 0"),
        ({"gpu": True, "gpus_per_worker": -0.25}, "got -0.25"),
        ({"gpu": True, "gpus_per_worker": 1.5}, "got 1.5"),
        ({"gpu": True, "gpus_per_worker": 9}, "got 9"),
        ({"gpu": False, "gpus_per_worker": 0.5}, "gpus_per_worker (0.5) needs gpu: true"),
        ({"gpu": False, "gpus_per_worker": 1}, "gpus_per_worker (1) needs gpu: true"),
        ({"gpu": True, "gpus_per_worker": 0.5, "workers_per_trial": 2}, "NCCL refuses"),
        ({"gpu": True, "gpus_per_worker": "half"}, "gpus_per_worker: Input should be a valid number"),
    ],
)
def test_bad_gpu_amounts_are_one_line_errors(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        _spec(**resources)
    text = str(err.value)
    assert text.startswith("job.yaml: resources") and message in text
    assert "\n" not in text


def test_gpu_amount_defaults_to_one_and_reaches_the_worker_resources() -> None:
    assert _spec(gpu=True).resources.gpus == 1.0
    assert _spec(gpu=False).resources.gpus == 0.0
    packed = _spec(gpu=True, gpus_per_worker=0.25, workers_per_trial=1, worker_resources={"accel_A10G": 0.1})
    assert worker_resources(packed) == {"CPU": 0.4, "GPU": 0.25, "accel_A10G": 0.1}
    assert uses_cuda(packed)
    assert worker_resources(packed, "fake_gpu")["fake_gpu"] == 0.25
    assert not uses_cuda(packed, "fake_gpu"), "the stand-in must not make workers look for CUDA"
    two = _spec(gpu=True, gpus_per_worker=2, workers_per_trial=2)
    assert worker_resources(two)["GPU"] == 2.0


def test_ray_train_always_keeps_one_worker_trials_on_a_torch_trainer() -> None:
    from dynconv.tune.resources import trains_in_trial_actor, trial_resources

    auto = _spec(gpu=True, gpus_per_worker=0.25, workers_per_trial=1, cpus_per_worker=1, driver_cpus=0.25)
    always = _spec(gpu=True, gpus_per_worker=0.25, workers_per_trial=1, ray_train="always")
    assert trains_in_trial_actor(auto) and not trains_in_trial_actor(always)
    assert trial_resources(auto) == {"CPU": 1.25, "GPU": 0.25}, "the actor holds the worker's share"
    assert trial_resources(always) == {"CPU": always.resources.driver_cpus}, "the driver alone"
    assert not trains_in_trial_actor(_spec(workers_per_trial=2))
    with pytest.raises(SpecError, match="ray_train"):
        _spec(ray_train="sometimes")


def test_concurrency_counts_the_gpu_share() -> None:
    cluster = {"CPU": 16.0, "GPU": 1.0}
    base = {"gpu": True, "workers_per_trial": 1, "cpus_per_worker": 1}
    assert max_concurrent_trials(_spec(**base), cluster) == 1
    assert max_concurrent_trials(_spec(**base, gpus_per_worker=0.5), cluster) == 2
    assert max_concurrent_trials(_spec(**base, gpus_per_worker=0.25), cluster) == 4
    third = _spec(**base, gpus_per_worker=1 / 3)
    assert max_concurrent_trials(third, cluster) == 3
    # CPUs still bound it: 8 trials at 0.125 GPU need 8 x (0.1 + 1) CPUs
    assert max_concurrent_trials(_spec(**base, gpus_per_worker=0.125), {"CPU": 4.0, "GPU": 1.0}) == 3
    line = describe_trial_resources(_spec(**base, gpus_per_worker=0.25), 4)
    assert "GPU 0.25" in line and "up to 4 trial(s) at once" in line and "4 trials share one GPU" in line


class _BundleWatcher(threading.Thread):
    """Polls Ray's placement groups; records when each group holding `resource` was seen CREATED."""

    def __init__(self, resource: str) -> None:
        super().__init__(daemon=True)
        self.resource = resource
        self.seen: dict[str, dict[str, Any]] = {}
        self.max_at_once = 0
        self._halt = threading.Event()

    def run(self) -> None:
        from ray.util import placement_group_table

        while not self._halt.is_set():
            now = time.time()
            live = 0
            for pg_id, pg in placement_group_table().items():
                amounts = [b.get(self.resource, 0) for b in pg["bundles"].values()]
                if pg["state"] != "CREATED" or not any(amounts):
                    continue
                live += 1
                rec = self.seen.setdefault(pg_id, {"amounts": amounts, "first": now})
                rec["last"] = now
            self.max_at_once = max(self.max_at_once, live)
            self._halt.wait(0.2)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


@pytest.fixture(scope="module")
def ray_with_one_fake_gpu():
    import ray

    ray.init(num_cpus=2, resources={"fake_gpu": 1}, include_dashboard=None, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.mark.ray
def test_four_trials_at_a_quarter_share_one_gpu(
    ray_with_one_fake_gpu, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from dynconv.tune.study import run_study

    data = tiny_spec_dict(
        tmp_path,
        tiny_dataset,
        resources={"workers_per_trial": 1, "cpus_per_worker": 0.25, "driver_cpus": 0.1, "gpu": True,
                   "gpus_per_worker": 0.25},
        scheduler={"name": "none"},
        evaluate={"enabled": True, "subsets": ["RGB", "R"]},
    )  # fmt: skip
    data["train"]["epochs"] = 3
    data["search"]["num_samples"] = 4
    spec = parse_spec(data)
    watcher = _BundleWatcher("fake_gpu")
    watcher.start()
    try:
        result = run_study(spec, gpu_resource="fake_gpu", controller_failure_limit=0)
    finally:
        watcher.stop()

    assert "up to 4 trial(s) at once (4 trials share one GPU)" in capsys.readouterr().out
    assert [t.status for t in result.trials] == ["FINISHED"] * 4
    groups = list(watcher.seen.values())
    assert len(groups) == 4, f"one worker group per trial, got {len(groups)}"
    assert all(g["amounts"] == [0.25] for g in groups), [g["amounts"] for g in groups]
    # every trial's worker group held its quarter GPU at one common moment
    assert max(g["first"] for g in groups) < min(g["last"] for g in groups)
    assert watcher.max_at_once == 4
    # The best trial is evaluated where the trials trained: a Ray task holding one worker's GPU share
    # (a GPU study's driver may sit on a node without a GPU), not in the driver's process.
    import ray
    from ray.util.state import list_tasks

    address = ray.get_runtime_context().gcs_address
    deadline = time.monotonic() + 30
    while True:  # the state API hears of a task's end a little after ray.get returned its result
        tasks = list_tasks(address=address, filters=[("name", "=", "dynconv-evaluate")], detail=True)
        if [t.state for t in tasks] != ["RUNNING"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [(t.state, t.required_resources) for t in tasks] == [("FINISHED", {"CPU": 0.25, "fake_gpu": 0.25})]
    assert tasks[0].worker_pid != os.getpid()
    assert result.best is not None and "dynconv.evaluation_error" not in _parent_tags(result)


def _parent_tags(result) -> dict[str, str]:
    from dynconv.tracking.store import client

    return client(result.tracking_uri).get_run(result.parent_run_id).data.tags
