"""What one trial reserves from Ray, in one place: the trial driver, the DDP workers and their GPU share.

The same function feeds Ray Train's `ScalingConfig` (dynconv/tune/trial.py), the number of concurrent
trials (dynconv/tune/search.py) and the one-line summary printed when a study starts, so the three cannot
disagree. `gpu_resource` names the Ray resource that stands for a GPU: "GPU" in real use; tests on CPU
machines pass a custom resource (e.g. "fake_gpu") so the fractional-GPU path runs without CUDA.
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
