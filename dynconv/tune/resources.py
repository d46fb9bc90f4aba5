"""What one trial reserves from Ray, in one place (the trial driver, the DDP workers and their GPU share),
and what the connected cluster can offer it.

The same functions feed Tune's trial-actor reservation and Ray Train's `ScalingConfig`
(dynconv/tune/trial.py), the number of concurrent trials (dynconv/tune/search.py), the check that a
trial fits the cluster (`check_resources_fit`: a study that cannot fit fails in one line instead of Ray
waiting forever for a placement that cannot exist) and the one-line summary printed when a study
starts, so they cannot disagree. `gpu_resource` names the Ray resource that stands for a GPU: "GPU" in
real use; tests on CPU machines pass a custom resource (e.g. "fake_gpu") so the fractional-GPU path runs
without CUDA. Imports Ray only inside `cluster_capacity`.
"""

from __future__ import annotations

from dynconv.errors import DynconvError
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
    """Everything one trial holds at once: its actor's reservation (`trial_resources`) plus, when it
    trains in a TorchTrainer, the `workers_per_trial` workers that Ray Train reserves."""
    demand = trial_resources(spec, gpu_resource)
    if not trains_in_trial_actor(spec):
        for name, amount in worker_resources(spec, gpu_resource).items():
            demand[name] = demand.get(name, 0.0) + amount * spec.resources.workers_per_trial
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


class ResourcesError(DynconvError):
    """A trial needs more than the cluster can ever offer."""


def cluster_capacity() -> dict[str, float]:
    """The most of each resource the cluster can offer: what it has now or, where larger, the
    autoscaler's maximum (node types x max workers, as Ray Train's own check reads it). A cluster
    launched from cluster.yaml starts without GPU nodes, so the current resources alone would refuse
    every GPU study there."""
    import ray

    capacity = {k: float(v) for k, v in ray.cluster_resources().items()}
    try:  # private API (Ray 2.60; no public one says this); without an autoscaler: the current resources
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except (ImportError, AttributeError, RuntimeError, ValueError):  # moved in another Ray, or unreadable
        most = {}
    for name, amount in most.items():
        capacity[name] = max(capacity.get(name, 0.0), float(amount))
    return capacity


def check_resources_fit(spec: JobSpec, cluster_resources: dict[str, float], gpu_resource: str = GPU) -> None:
    """Raise a one-line ResourcesError when one trial needs more of a resource than the cluster has.

    `cluster_resources`: the most the cluster can offer (`cluster_capacity()`). `gpu_resource` names the
    resource that stands for a GPU ("GPU"; tests on CPU use a stand-in).
    """
    r = spec.resources
    for name, need in trial_demand(spec, gpu_resource).items():
        have = float(cluster_resources.get(name, 0.0))
        if need <= have + 1e-9:
            continue
        if name == "CPU":
            what = f"{r.workers_per_trial} workers x {r.cpus_per_worker:g} CPU + {r.driver_cpus:g} driver CPU"
            fix = "lower resources.workers_per_trial or resources.cpus_per_worker"
        elif name == gpu_resource:
            what = f"{r.workers_per_trial} workers x {r.gpus:g} GPU"
            fix = "lower resources.workers_per_trial, set resources.gpu: false, or add GPU nodes"
        else:
            what = f"resource {name!r}"
            fix = f"add nodes offering {name!r} or change resources.worker_resources / driver_resource"
        raise ResourcesError(
            f"resources: one trial needs {what} = {need:g} {name} but the cluster has at most {have:g}; {fix}"
        )
