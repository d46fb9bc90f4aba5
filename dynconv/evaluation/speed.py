"""Speed of a model on one subset: latency of one image (batch 1, median) and throughput at a large batch.

Forward pass only, input already on the device; each measurement has a time budget (`SpeedConfig`),
and only the subsets `SpeedConfig.subsets` names are timed (a study's `evaluate.speed_subsets`: on a
CPU, timing all seven subsets of a small model costs more than the evaluation itself).
Imports torch lazily and `dynconv.evaluation.predict`; never Ray or MLflow.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from dynconv.evaluation.predict import forward
from dynconv.evaluation.results import SpeedConfig


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_calls(fn, iters: int, budget_s: float) -> list[float]:
    """Seconds of up to `iters` calls of `fn`, stopping early once `budget_s` is spent (at least one call)."""
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return times


def speed_config(evaluate) -> SpeedConfig:
    """The timing of a study's end-of-study evaluation, from its spec's `evaluate` section
    (`dynconv.spec.sections.EvaluateSpec`): every evaluated subset, or those `speed_subsets` names."""
    subsets = evaluate.speed_subsets
    return SpeedConfig(subsets=None if subsets is None else tuple(subsets))


def measure_speed(
    model, images: np.ndarray, subset: str, dynamic: bool, device, speed: SpeedConfig
) -> tuple[float, float]:
    """(latency ms per image at batch 1 (median), images per second at `speed.throughput_batch`); both
    NaN for a subset `speed.subsets` leaves out.

    Each measurement stops early once `speed.budget_s` is spent, so a 7.7-GFLOP model on a CPU costs
    seconds, not minutes; when even the warm-up at the large batch overruns the budget, that one
    (slightly pessimistic) call is the measurement.
    """
    latency = throughput = float("nan")
    if speed.subsets is not None and subset not in speed.subsets:
        return latency, throughput
    import torch

    from dynconv.data.augment import normalize

    model.eval()

    def call(x):
        _sync(device)  # the copy to the device is not part of the timing

        def run() -> None:
            forward(model, x, subset, dynamic)
            _sync(device)

        return run

    with torch.no_grad():
        if speed.latency_iters > 0 and len(images):
            one = call(normalize(torch.from_numpy(np.array(images[:1])), device))
            _timed_calls(one, speed.warmup, speed.budget_s)
            latency = statistics.median(_timed_calls(one, speed.latency_iters, speed.budget_s)) * 1000
        if speed.throughput_iters > 0 and len(images):
            idx = np.sort(np.arange(speed.throughput_batch) % len(images))
            big = call(normalize(torch.from_numpy(np.array(images[idx])), device))
            warm = _timed_calls(big, max(1, speed.warmup), speed.budget_s)  # allocator, cuDNN autotuning
            times = warm[-1:] if sum(warm) > speed.budget_s else []
            times = times or _timed_calls(big, speed.throughput_iters, speed.budget_s)
            throughput = speed.throughput_batch * len(times) / sum(times)
    return latency, throughput
