"""One trial: runs in a Tune trial actor, opens or continues its MLflow child run, drives a TorchTrainer.

Ray 2.60 (Train V2) no longer lets Tune wrap a TorchTrainer directly; a plain function builds one per trial
with a deterministic run name (so a retried or restored trial resumes its own Train checkpoints) and
`TuneReportCallback` forwards rank 0's per-epoch reports to Tune.
"""

from __future__ import annotations

import os
from typing import Any

from dynconv import tracking
from dynconv.spec import JobSpec
from dynconv.tune.resources import GPU, uses_cuda, worker_resources


def train_run_name(study_run_name: str, trial_id: str) -> str:
    """Ray Train run name of a trial: stable across trial retries and Tuner.restore."""
    return f"{study_run_name}-{trial_id}"


def log_model_facts(tracking_uri: str, run_id: str, spec: JobSpec, num_classes: int) -> None:
    """FLOPs (fvcore, at the spec's image size, all channels) and parameter count of the trial's model."""
    from dynconv.flops import count_flops, count_params
    from dynconv.train.loop import build_model

    model = build_model(spec, num_classes)
    tracking.log_metrics(
        tracking_uri,
        run_id,
        {"flops": count_flops(model, image_size=spec.data.image_size), "params": count_params(model)},
    )


def run_trial(params: dict[str, Any], *, spec_json: dict[str, Any], study: dict[str, Any]) -> None:
    """Tune trainable: one trial with hyperparameters `params` applied to the study's spec."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from dynconv.train.ray_session import quiet_ray_train_logs, train_worker

    quiet_ray_train_logs()
    spec = JobSpec.model_validate(spec_json).with_params(params)
    # Read by the Train controller this trial starts (Ray propagates it from the driver's environment).
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(spec.failure.report_poll_s)
    ctx = ray.tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
    uri = study["tracking_uri"]
    run_id, created = tracking.ensure_child_run(
        uri,
        study["experiment_id"],
        study["parent_run_id"],
        role="trial",
        key=trial_id,
        run_name=trial_name,
        tags={tracking.TAG_STUDY: spec.study},
    )
    if created:
        tracking.log_params(uri, run_id, {**params, "model": spec.model.name, **flat_spec(spec)})
        log_model_facts(uri, run_id, spec, study["num_classes"])

    r = spec.resources
    gpu_resource = study.get("gpu_resource", GPU)  # tests on CPU stand a custom resource in for "GPU"
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "spec": spec.to_json_dict(),
            "cache_dir": study["cache_dir"],
            "tracking_uri": uri,
            "run_id": run_id,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.workers_per_trial,
            use_gpu=uses_cuda(spec, gpu_resource),
            resources_per_worker=worker_resources(spec, gpu_resource),
            placement_strategy=study.get("placement_strategy", "PACK"),
        ),
        run_config=ray.train.RunConfig(
            name=train_run_name(study["run_name"], trial_id),
            storage_path=spec.storage_uri(),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.failure.keep_checkpoints),
            failure_config=ray.train.FailureConfig(
                max_failures=spec.failure.worker_max_failures,
                controller_failure_limit=study.get("controller_failure_limit", -1),
            ),
        ),
    )
    trainer.fit()


def flat_spec(spec: JobSpec) -> dict[str, Any]:
    """The resolved train section and model args as flat params (for filtering runs in the MLflow UI)."""
    out: dict[str, Any] = {f"train.{k}": v for k, v in spec.train.model_dump(mode="json").items()}
    out.update({f"model.{k}": v for k, v in spec.model.args.items()})
    out["data.image_size"] = spec.data.image_size
    out["workers_per_trial"] = spec.resources.workers_per_trial
    return out
