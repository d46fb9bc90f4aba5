"""Validation on channel subsets during training: `val_acc_<SUBSET>` and `val_acc_worst` per epoch.

The inputs follow evaluation's rule (`dynconv.data.channels.model_inputs`): a dynamic model gets only the
subset's channels with their indices, a plain model the full batch with the missing channels zero-filled
after normalisation. So these numbers are what `dynconv evaluate` would measure on the val split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dynconv.data.augment import normalize
from dynconv.data.channels import model_inputs
from dynconv.data.loader import ShardedBatches
from dynconv.spec.metrics import SUBSETS_EPOCH_METRIC, WORST_SUBSET_METRIC, subset_metric
from dynconv.train.session import Session


@torch.no_grad()
def subset_accuracies(
    model: nn.Module,
    batches: ShardedBatches,
    session: Session,
    precision: Any,
    subsets: Sequence[str],
    dynamic: bool,
) -> dict[str, float]:
    """Top-1 accuracy per subset over this rank's val shard, summed over ranks.

    One pass over the shard: each batch is normalised once and shown as every subset in turn. Hits are
    summed in one device tensor, so the only host sync is the all-reduce at the end. `model` should be
    the plain module (not DDP: its forward would broadcast buffers at every call).
    """
    model.eval()
    counts = torch.zeros(len(subsets) + 1, dtype=torch.float64, device=session.device)
    if not subsets:
        return {}
    for x_u8, y in batches:
        if len(y) == 0:
            continue
        x = normalize(x_u8, session.device)
        y = y.to(session.device, non_blocking=True)
        for i, name in enumerate(subsets):
            xin, channels = model_inputs(x, name, dynamic)
            xin = precision.layout(xin)
            with precision.autocast(session.device):
                logits = model(xin, channels=channels) if channels is not None else model(xin)
            counts[i] += logits.argmax(dim=1).eq(y).sum()
        counts[-1] += len(y)
    totals = session.all_reduce_sum(counts).cpu().tolist()
    n = max(totals[-1], 1.0)
    return {name: totals[i] / n for i, name in enumerate(subsets)}


def subset_val_due(epoch: int, epochs: int, every: int, previous: dict[str, float]) -> bool:
    """Whether 1-based `epoch` validates the subsets: the first, every `every`-th after it, the last,
    and any epoch that has no earlier values to carry forward (a resumed old checkpoint)."""
    if every <= 0:
        return False
    return (epoch - 1) % every == 0 or epoch == epochs or SUBSETS_EPOCH_METRIC not in previous


def subset_metrics(
    accuracies: dict[str, float], rgb_acc: float, val_subsets: Sequence[str], epoch: int
) -> dict[str, float]:
    """`val_acc_<S>` for every subset (RGB is `val_acc`, measured already), `val_acc_worst`, and the epoch."""
    out = {subset_metric(s): (rgb_acc if s == "RGB" else accuracies[s]) for s in val_subsets}
    out[WORST_SUBSET_METRIC] = min(out.values())
    out[SUBSETS_EPOCH_METRIC] = epoch
    return out


def carried_subset_metrics(previous: dict[str, float], val_subsets: Sequence[str]) -> dict[str, float]:
    """Last measured subset metrics, reported again on epochs that skip subset validation, so every
    report carries the search metric (Tune requires it); `val_subsets_epoch` says when they were measured."""
    keys = [subset_metric(s) for s in val_subsets] + [WORST_SUBSET_METRIC, SUBSETS_EPOCH_METRIC]
    return {k: previous[k] for k in keys if k in previous}


def weighted_objective(weights: dict[str, float], metrics: dict[str, float]) -> float:
    """The `objective` metric of a weighted `search.metric`: sum of weight × metric."""
    return float(sum(w * float(metrics[name]) for name, w in weights.items()))
