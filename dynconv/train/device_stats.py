"""Per-epoch facts about the training device, reported with the epoch metrics (CUDA only)."""

from __future__ import annotations

import torch


def peak_device_memory(device: torch.device) -> dict[str, float]:
    """`peak_gpu_mem_gib`: the most memory this process's tensors held on `device` so far (CUDA); {} on CPU.

    With several trials packed onto one GPU (`resources.gpus_per_worker` < 1) this is what each trial needs,
    so the packing benchmark can say how many fit.
    """
    if device.type != "cuda":
        return {}
    return {"peak_gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30}
