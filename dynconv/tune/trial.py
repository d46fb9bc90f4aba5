"""One trial: runs in a Tune trial actor and trains; it reports to Tune and writes nothing to MLflow.

How it trains depends on `resources.workers_per_trial`:

- one worker: right here, in the trial actor (`train_in_trial_actor`), reporting with `ray.tune.report`
  and Tune checkpoints. Starting a Ray Train controller, a worker group and a second process that imports
  torch again costs ~11 s per trial on 2 CPU cores (docs/benchmarks.md, quickstart), for one process that
  needs no process group. The trial actor then holds the worker's resources too (`trial_resources`), and
  a killed trial is retried by Tune (`tune_max_failures`), resuming from its latest Tune checkpoint.
- several workers: a Ray Train `TorchTrainer` (DDP). Ray 2.60 (Train V2) no longer lets Tune wrap a
  TorchTrainer directly; this function builds one per trial with a deterministic run name (so a retried
  or restored trial resumes its own Train checkpoints) and `TuneReportCallback` forwards rank 0's
  per-epoch reports to Tune.

Both report the same metrics and checkpoints to Tune. The study driver records them in MLflow
(`dynconv.tune.recorder`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynconv.spec import JobSpec
from dynconv.tune.resources import trains_in_trial_actor, uses_cuda, worker_resources

__all__ = ["CONFIRMS", "TrialContext", "run_trial", "train_params", "tune_max_failures"]

CONFIRMS = "confirms"
"""The config key of a confirmation trial naming the trial run it retrains with another seed
(`dynconv.tune.confirm`); every other key of a trial's config is a `train.*` field."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a study phase gets from its driver besides the spec."""

    run_name: str  # the phase's Tune experiment: where a retried or restored trial finds its checkpoints
    cache_dir: str  # the decoded data cache the driver built, on storage every node reads
    cache_fingerprint: str  # what a worker checks the cache against before it trains
    gpu_resource: str  # the Ray resource standing for a GPU ("GPU"; tests on CPU use a stand-in)
    placement_strategy: str  # of a TorchTrainer trial's workers ("PACK"; tests spread them on nodes)
    controller_failure_limit: int  # Ray Train controller restarts (-1: unlimited)


def train_params(config: dict[str, Any]) -> dict[str, Any]:
    """The `train.*` values of a trial's config (a confirmation trial's CONFIRMS key left out)."""
    return {k: v for k, v in config.items() if k != CONFIRMS}


def train_run_name(study_run_name: str, trial_id: str) -> str:
    """Ray Train run name of a trial: stable across trial retries and Tuner.restore."""
    return f"{study_run_name}-{trial_id}"


def tune_max_failures(spec: JobSpec) -> int:
    """Tune's retries per trial. A trial training in its actor has no Train worker group whose restarts
    would absorb worker faults, so Tune retries it for those too (`worker_max_failures` more times)."""
    f = spec.failure
    return f.trial_max_failures + (f.worker_max_failures if trains_in_trial_actor(spec) else 0)


def _checkpoint_globs(spec: JobSpec, context: TrialContext, trial_id: str) -> list[str]:
    """Where this trial's checkpoints land: Tune's trial directory (training in the trial actor) or the
    trial's Ray Train run (a TorchTrainer). A resumed trial starts from the newest one it finds there."""
    if trains_in_trial_actor(spec):
        where = Path(spec.storage_uri()) / context.run_name / f"*_{trial_id}_*"
    else:
        where = Path(spec.storage_uri()) / train_run_name(context.run_name, trial_id)
    return [str(where / "checkpoint_*" / "state.pt")]


def run_trial(params: dict[str, Any], *, spec_json: dict[str, Any], context: TrialContext) -> None:
    """Tune trainable: one trial with hyperparameters `params` applied to the study's spec."""
    import ray.tune

    from dynconv.train.ray_session import quiet_ray_train_logs

    quiet_ray_train_logs()
    spec = JobSpec.model_validate(spec_json).with_params(train_params(params))
    storage, trial_id = spec.storage_uri(), ray.tune.get_context().get_trial_id()
    local = "://" not in storage  # local or mounted shared storage: the trial's checkpoints readable
    train_loop_config = {
        "spec": spec.to_json_dict(),
        "cache_dir": context.cache_dir,
        "cache_fingerprint": context.cache_fingerprint,
        "use_cuda": uses_cuda(spec, context.gpu_resource),
        "resume_globs": _checkpoint_globs(spec, context, trial_id) if local else [],
    }
    if trains_in_trial_actor(spec):
        from dynconv.train.ray_session import train_in_trial_actor

        train_in_trial_actor(train_loop_config)
    else:
        _fit_torch_trainer(spec, context, train_loop_config)


def _scaling_config(spec: JobSpec, context: TrialContext):
    """Ray Train workers of a multi-worker trial."""
    import ray.train

    return ray.train.ScalingConfig(
        num_workers=spec.resources.workers_per_trial,
        use_gpu=uses_cuda(spec, context.gpu_resource),
        resources_per_worker=worker_resources(spec, context.gpu_resource),
        placement_strategy=context.placement_strategy,
    )


def _fit_torch_trainer(spec: JobSpec, context: TrialContext, train_loop_config: dict[str, Any]) -> None:
    """Train the trial with a TorchTrainer (DDP over `workers_per_trial` Ray Train workers)."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from dynconv.train.ray_session import train_worker

    trial_id = ray.tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=train_loop_config,
        scaling_config=_scaling_config(spec, context),
        run_config=ray.train.RunConfig(
            name=train_run_name(context.run_name, trial_id),
            storage_path=spec.storage_uri(),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.failure.keep_checkpoints),
            failure_config=ray.train.FailureConfig(
                max_failures=spec.failure.worker_max_failures,
                controller_failure_limit=context.controller_failure_limit,
            ),
        ),
    )
    trainer.fit()
