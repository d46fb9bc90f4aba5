"""The names of the metrics a trial reports each epoch: one list, shared by the loop and spec validation.

A `search.metric`, a weight in a weighted `search.metric` or a `search.objectives` entry must be one of
`reported_metrics(...)`, so a typo fails when the spec loads instead of after the first epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from dynconv.errors import FAULT_KINDS, Fault

EPOCH_METRICS: tuple[str, ...] = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",  # on RGB, the full input
    "val_top5",
    "lr",
    "epoch_seconds",
    "train_images_per_second",
    "world_size",
)
WORST_SUBSET_METRIC = "val_acc_worst"  # the minimum of val_acc_<SUBSET> over train.val_subsets
SUBSETS_EPOCH_METRIC = "val_subsets_epoch"  # the epoch the val_acc_<SUBSET> values were measured at
OBJECTIVE_METRIC = "objective"  # the weighted mix when search.metric is a {metric: weight} mapping
DIVERGENCE_METRICS = ("train_loss", "val_loss")
"""A trial whose epoch reports either of these as NaN or infinite has diverged: its weights are garbage,
whatever its accuracy says, so it is stopped, never ranked and never evaluated."""


def diverged(metrics: Mapping[str, object]) -> str | None:
    """The first loss in `metrics` that is not finite (`"train_loss"`, ...), or None when both are."""
    for name in DIVERGENCE_METRICS:
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            return name
    return None


ERROR_RESULT = "error"
"""The key of a trial's last result when one of dynconv's own errors ended it (a data cache a worker
cannot open, a device that is not there): such an error recurs identically on every retry, so the trial
reports its one line and ends instead of raising, the driver closes it FAILED with that line, and Tune
does not retry it (its `FailureConfig` retries any exception and has no filter). A multi-worker (DDP)
trial still raises: its workers fail together, and Ray Train and Tune retry it as before."""


FAULT_RESULT = "fault"
"""Beside `ERROR_RESULT` when the error is a fault of the world under the study (`dynconv.errors.Fault`:
a full disk, say): its kind. Every later trial would meet it too, so the driver stops the study."""


def error_result(ranked: Sequence[str], message: str, fault: str | None = None) -> dict[str, object]:
    """The final result of a trial ended by `message` (a fault of kind `fault`, if one): the line, epoch
    0, and the `ranked` metrics as NaN (Tune refuses a result without the metric it ranks on)."""
    result: dict[str, object] = {ERROR_RESULT: message, "epoch": 0, **dict.fromkeys(ranked, math.nan)}
    if fault is not None:
        result[FAULT_RESULT] = fault
    return result


def ended_by_fault(result: Mapping[str, object], trial_id: str) -> Fault | None:
    """The fault of the world (`FAULT_RESULT`'s kind) that ended trial `trial_id`, whose last result is
    `result`, with its line; None when none did."""
    kind = result.get(FAULT_RESULT)
    if not kind:
        return None
    return FAULT_KINDS.get(str(kind), Fault)(f"trial {trial_id}: {ended_by_error(result)}")


def ended_by_error(result: Mapping[str, object]) -> str | None:
    """The one line of the dynconv error that ended the trial whose last result is `result`, or None."""
    message = result.get(ERROR_RESULT)
    return message if isinstance(message, str) else None


def trial_outcome(last: Mapping[str, object], epochs_done: int, epochs: int, errored: bool = False) -> str:
    """How a trial ended, from its last result: `failed` (an exception, or one of dynconv's own errors),
    `diverged` (a loss stopped being finite), `finished` (all `epochs`) or `stopped_early` (the scheduler
    stopped it). The console, the trial's MLflow run, the study summary and the searcher each say this."""
    if errored or ended_by_error(last) is not None:
        return "failed"
    if diverged(last) is not None:
        return "diverged"
    return "finished" if epochs_done >= epochs else "stopped_early"


def metric_bounds(name: str) -> tuple[float, float] | None:
    """(0, 1) for an accuracy (`val_acc`, `val_acc_<S>`, `val_acc_worst`, `val_top5`, `train_acc`), whose
    interval over seeds is clipped there as a test accuracy's is; None for a loss or a weighted mix."""
    return (0.0, 1.0) if name.startswith("val_acc") or name in ("val_top5", "train_acc") else None


def subset_metric(subset: str) -> str:
    """`val_acc_RB` for subset `RB`: validation accuracy with only the subset's channels."""
    return f"val_acc_{subset}"


def reported_metrics(val_subsets: Sequence[str], subset_val_every: int, weighted: bool) -> tuple[str, ...]:
    """Every metric name a trial reports, given `train.val_subsets`, `train.subset_val_every` and
    whether `search.metric` is a weighted mix (which adds `objective`)."""
    names = list(EPOCH_METRICS)
    if subset_val_every > 0:
        names += [subset_metric(s) for s in val_subsets] + [WORST_SUBSET_METRIC, SUBSETS_EPOCH_METRIC]
    if weighted:
        names.append(OBJECTIVE_METRIC)
    return tuple(names)
