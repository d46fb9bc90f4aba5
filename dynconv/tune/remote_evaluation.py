"""Where a study evaluates its checkpoints: where its trials train.

The end-of-study evaluation and the confirmation's evaluations run every channel subset over the test
split, and time each model. A GPU study's driver runs on a node that may have no GPU (on a cluster, the
head: docs/cluster.md), where ImageNet-mini's top trials take minutes each and whose latency and
throughput say nothing of the hardware the trials trained on. So a GPU study sends each checkpoint to a
Ray task with the resources of one trial worker (its CPUs, its GPU share, its custom resources), which
opens the same decoded cache the trials read and returns the `Evaluation`; the driver records it in
MLflow as before (it stays the only writer). A CPU study evaluates in the driver, which spares a worker
process its start-up (on 2 cores, about 9 s of the quickstart). `dynconv evaluate` evaluates where it
runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynconv.errors import DynconvError
from dynconv.evaluation.model import EvaluateCheckpoint, evaluate_checkpoint, in_this_process
from dynconv.evaluation.results import Evaluation, SpeedConfig
from dynconv.spec import JobSpec
from dynconv.tune.resources import GPU, uses_cuda, worker_resources
from dynconv.tune.trial import TrialContext


def evaluator_for(spec: JobSpec, context: TrialContext, data: Any) -> EvaluateCheckpoint:
    """How this study evaluates a checkpoint (see the module doc): on a worker for a GPU study, else in
    this process on `data` (the driver's prepared data) and its default device."""
    if spec.resources.gpu:
        return on_a_worker(spec, context)
    from dynconv.train.session import default_device

    return in_this_process(data, default_device(None))


def on_a_worker(spec: JobSpec, context: TrialContext) -> EvaluateCheckpoint:
    """Evaluate each checkpoint in a Ray task holding one trial worker's resources (Ray must be up)."""
    import ray

    resources = worker_resources(spec, context.gpu_resource)
    cpus = resources.pop("CPU")
    gpus = resources.pop(GPU, 0.0)  # a stand-in resource (tests) stays a custom one
    task = ray.remote(_evaluate_on_worker).options(
        num_cpus=cpus, num_gpus=gpus, resources=resources, name="dynconv-evaluate"
    )  # Ray's own retries cover a worker or node lost mid-way; our errors are not retried
    device = "cuda" if uses_cuda(spec, context.gpu_resource) else "cpu"
    threads = max(1, int(cpus))  # torch's, as a trial worker with these CPUs uses

    def evaluate(
        state: dict[str, Any], run_id: str, subsets: Sequence[str], split: str, speed: SpeedConfig | None
    ) -> Evaluation:
        where = (context.cache_dir, context.cache_fingerprint, device, threads)
        ref = task.remote(state, run_id, *where, list(subsets), split, speed)
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # one of our one-line errors stays one line
            if isinstance(err.cause, DynconvError):
                raise err.cause from None
            raise

    return evaluate


def _evaluate_on_worker(
    state: dict[str, Any],
    run_id: str,
    cache_dir: str,
    fingerprint: str,
    device: str,
    threads: int,
    subsets: list[str],
    split: str,
    speed: SpeedConfig | None,
) -> Evaluation:
    """The Ray task: the driver's decoded data (verified by its fingerprint), the checkpoint's model, and
    `evaluate_checkpoint` on this worker's GPU or CPUs."""
    import torch

    from dynconv.data.cache_files import PreparedData

    data = PreparedData.open(Path(cache_dir), fingerprint=fingerprint)
    torch.set_num_threads(threads)
    return evaluate_checkpoint(state, run_id, data, subsets, split, device, speed=speed)
