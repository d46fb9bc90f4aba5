"""What the connected Ray cluster can offer a trial, and the check that a trial fits it, so a study that
cannot fit fails in one line instead of Ray waiting forever for a placement that cannot exist.

What a trial needs comes from `dynconv.tune.resources.trial_demand`, the same arithmetic Tune and Ray
Train reserve with. Imports Ray only inside `cluster_capacity`.
"""

from __future__ import annotations

from typing import Any

from dynconv.errors import DynconvError
from dynconv.tune.resources import GPU, trial_demand


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


def check_resources_fit(spec: Any, cluster_resources: dict[str, float], gpu_resource: str = GPU) -> None:
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
