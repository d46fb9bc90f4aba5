"""What one trial reserves from Ray, in one place: the trial driver, the DDP workers and their GPU share.

The same functions feed Tune's trial-actor reservation and Ray Train's `ScalingConfig`
(dynconv/tune/trial.py), the number of concurrent trials (dynconv/tune/search.py), the check that a
trial fits the cluster (dynconv/tune/capacity.py) and the one-line summary printed when a study
starts, so they cannot disagree. `gpu_resource` names the Ray resource that stands for a GPU: "GPU" in
real use; tests on CPU machines pass a custom resource (e.g. "fake_gpu") so the fractional-GPU path runs
without CUDA.
"""

from __future__ import annotations

from dynconv.spec import JobSpec

GPU = "GPU"


def worker_resources(spec: JobSpec, gpu_resource: str = GPU) -> dict[str, float]:
    """Ray resources of one DDP worker: CPUs, the GPU share (`resources.gpus_per_worker`), custom ones."""
    r = spec.resources
    out: dict[str, float] = {"CPU": r.cpus_per_worker}
    if r.gpu:
        out[gpu_resource] = r.gpus
    out.update(r.worker_resources)
    return out


def trains_in_trial_actor(spec: JobSpec) -> bool:
    """Whether a trial of `spec` trains in its Tune trial actor (one worker, `resources.ray_train: auto`)
    instead of a TorchTrainer."""
    return spec.resources.workers_per_trial == 1 and spec.resources.ray_train == "auto"


def trial_resources(spec: JobSpec, gpu_resource: str = GPU) -> dict[str, float]:
    """What Tune reserves for one trial actor: its driver's share, plus the worker when it trains there.

    A trial that trains in its actor goes where a worker would go, so it does not ask for the
    driver-only resource (`resources.driver_resource`, which keeps drivers off the GPU nodes); its GPU
    share (`resources.gpus_per_worker`, possibly a fraction) is the actor's. Otherwise the actor is only
    the driver and Ray Train reserves the workers.
    """
    r = spec.resources
    if trains_in_trial_actor(spec):
        worker = worker_resources(spec, gpu_resource)
        return {**worker, "CPU": r.driver_cpus + worker["CPU"]}
    return {"CPU": r.driver_cpus, **({r.driver_resource: 0.01} if r.driver_resource else {})}


def trial_demand(spec: JobSpec, gpu_resource: str = GPU) -> dict[str, float]:
    """Everything one trial needs at once: its driver's CPUs plus `workers_per_trial` workers, each with
    `worker_resources`, and 0.01 of `resources.driver_resource`.

    The driver resource is counted for every trial, as before one-worker trials moved into their Tune
    actor, although `trial_resources` no longer asks for it there: the capacity check keeps refusing a
    cluster without it (a known mismatch, left for its own change).
    """
    r = spec.resources
    demand = {"CPU": r.driver_cpus}
    for name, amount in worker_resources(spec, gpu_resource).items():
        demand[name] = demand.get(name, 0.0) + amount * r.workers_per_trial
    if r.driver_resource:
        demand[r.driver_resource] = demand.get(r.driver_resource, 0.0) + 0.01
    return demand


def uses_cuda(spec: JobSpec, gpu_resource: str = GPU) -> bool:
    """`ScalingConfig(use_gpu=...)`: true only for a real GPU request (a stand-in resource trains on CPU)."""
    return spec.resources.gpu and gpu_resource == GPU


def describe_trial_resources(spec: JobSpec, concurrent: int, gpu_resource: str = GPU) -> str:
    """One line printed at study start: what a trial reserves and how many run at once."""
    r = spec.resources
    worker = ", ".join(f"{k} {v:g}" for k, v in worker_resources(spec, gpu_resource).items())
    line = (
        f"Each trial: driver CPU {r.driver_cpus:g} + {r.workers_per_trial} DDP worker(s) x ({worker}); "
        f"up to {concurrent} trial(s) at once"
    )
    if r.gpu and r.gpus < 1:
        line += f" ({1 / r.gpus:g} trials share one GPU)"
    return line
