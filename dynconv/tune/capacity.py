"""What the connected Ray cluster can offer a trial, so a study that cannot fit fails in one line instead
of Ray waiting forever for a placement that cannot exist (`dynconv.spec_checks.check_resources_fit`)."""

from __future__ import annotations


def cluster_capacity() -> dict[str, float]:
    """The most of each resource the cluster can offer: what it has now or, where larger, the
    autoscaler's maximum (node types x max workers, as Ray Train's own check reads it). A cluster
    launched from cluster.yaml starts without GPU nodes, so the current resources alone would refuse
    every GPU study there."""
    import ray

    capacity = {k: float(v) for k, v in ray.cluster_resources().items()}
    try:  # private API (Ray 2.60); absent or failing on a local cluster: the current resources are all
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception:
        most = {}
    for name, amount in most.items():
        capacity[name] = max(capacity.get(name, 0.0), float(amount))
    return capacity
