"""`evaluate_model`: one model over channel subsets on one split, returning an `Evaluation`.

What one evaluation measures, per subset (RGB, RG, RB, GB, R, G, B):

* how the model sees a subset (`dynconv.evaluation.predict`): a dynamic model gets only the subset's
  channels plus their indices, a plain model all three with the missing ones zero-filled after
  normalisation (= the dataset mean colour). The printed table says which.
* accuracy with a 95 % Wilson interval, macro precision / recall / F1 (`dynconv.stats`), top-5, the
  confusion matrix, McNemar's test against the RGB input on the same images,
* FLOPs for that input (fvcore via `dynconv.flops`: a dynamic stem does C/3 of its work, a
  zero-filled plain model pays full price), parameters, and on the evaluating device the latency of
  one image and the throughput at a large batch (`dynconv.evaluation.speed`; a plain model runs the
  same full-width input for every subset, so it is timed once).

Also `evaluate_checkpoint`: the same for a trial's checkpoint dict; `model_from_checkpoint`: the model a
checkpoint dict was saved from, and `served_from_checkpoint`:
that model wrapped to take [0, 1] images and any channel subset without dynconv. Takes a model and data, knows
nothing of MLflow or Ray (imports torch, `dynconv.data`, `dynconv.flops`, `dynconv.models` lazily).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dynconv import stats
from dynconv.errors import DynconvError, one_line
from dynconv.evaluation.predict import predict
from dynconv.evaluation.results import Evaluation, SpeedConfig, SubsetResult, test_set_id
from dynconv.evaluation.speed import measure_speed


def evaluate_model(
    model,
    data,
    subsets: Sequence[str],
    split: str = "test",
    device=None,
    *,
    batch_size: int = 256,
    speed: SpeedConfig | None = None,
) -> Evaluation:
    """Evaluate `model` on `data.split(split)` for every subset (see the module doc for what is measured)."""
    import torch

    from dynconv.data.channels import SUBSETS, parse_subsets
    from dynconv.flops import count_flops, count_params
    from dynconv.train.loop import unwrap

    speed = speed or SpeedConfig()
    names = parse_subsets(list(subsets))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = unwrap(model).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    dynamic = bool(getattr(model, "dynamic", False))
    arrays = data.split(split)
    labels = np.asarray(arrays.labels, dtype=np.int64)
    params = count_params(model)
    full_flops = count_flops(model, image_size=data.size)

    results: list[SubsetResult] = []
    for name in names:
        y_pred, top5_hit = predict(model, arrays.images, labels, name, dynamic, device, batch_size)
        flops = count_flops(model, image_size=data.size, channels=SUBSETS[name]) if dynamic else full_flops
        if dynamic or not results:  # a plain model runs the same full-width input for every subset
            latency, throughput = measure_speed(model, arrays.images, name, dynamic, device, speed)
        results.append(
            _subset_result(
                name, labels, y_pred, top5_hit, data.num_classes, flops, params, latency, throughput
            )
        )
    _compare_with_rgb(results)

    model_name, model_args = _model_identity(model)
    return Evaluation(
        model_name=model_name,
        model_args=model_args,
        dynamic=dynamic,
        split=split,
        device=str(device),
        num_classes=data.num_classes,
        class_names=list(data.class_names) if data.class_names else None,
        test_set_id=test_set_id(data.files(split), labels),
        data_fingerprint=data.fingerprint,
        image_size=data.size,
        results=results,
        speed=speed,
    )


def _compare_with_rgb(results: list[SubsetResult]) -> None:
    """McNemar's test of every subset against the RGB input on the same images (when RGB was evaluated)."""
    rgb = next((r for r in results if r.subset == "RGB"), None)
    if rgb is not None:
        for r in results:
            if r is not rgb:
                r.vs_rgb = stats.mcnemar(r.correct_mask, rgb.correct_mask)


def _model_identity(model) -> tuple[str, dict[str, Any]]:
    """(model name, constructor arguments but `num_classes`) as the model registry recorded them on it."""
    model_args = dict(getattr(model, "model_args", {}) or {})
    model_name = str(model_args.pop("name", type(model).__name__))
    model_args.pop("num_classes", None)
    return model_name, model_args


def _subset_result(
    name: str,
    labels: np.ndarray,
    y_pred: np.ndarray,
    top5_hit: np.ndarray,
    num_classes: int,
    flops: int,
    params: int,
    latency: float,
    throughput: float,
) -> SubsetResult:
    """The statistics of one subset's predictions, with its cost and speed."""
    m = stats.classification_metrics(labels, y_pred, num_classes)
    low, high = stats.wilson_interval(m["correct"], m["n"])
    return SubsetResult(
        subset=name,
        n=m["n"],
        correct=m["correct"],
        accuracy=m["accuracy"],
        acc_low=low,
        acc_high=high,
        precision=m["precision"],
        recall=m["recall"],
        f1=m["f1"],
        top5=float(top5_hit.mean()) if len(top5_hit) else 0.0,
        flops=int(flops),
        params=int(params),
        latency_ms=latency,
        throughput=throughput,
        y_true=labels,
        y_pred=y_pred,
        top5_hit=top5_hit,
        confusion=stats.confusion_matrix(labels, y_pred, num_classes),
    )


def evaluate_checkpoint(
    state: dict[str, Any],
    run_id: str,
    data,
    subsets: Sequence[str],
    split: str = "test",
    device=None,
    *,
    speed: SpeedConfig | None = None,
) -> Evaluation:
    """`evaluate_model` of the model the checkpoint `state` (of trial run `run_id`) was saved from; a
    one-line error when it was trained on another number of classes than `data` holds."""
    if int(state["num_classes"]) != data.num_classes:
        raise DynconvError(
            f"checkpoint of run {run_id} has {state['num_classes']} classes, the dataset {data.num_classes}"
        )
    return evaluate_model(model_from_checkpoint(state, run_id), data, subsets, split, device, speed=speed)


EvaluateCheckpoint = Callable[[dict[str, Any], str, Sequence[str], str, SpeedConfig | None], Evaluation]
"""How a study's checkpoints get evaluated: `(state, run_id, subsets, split, speed) -> Evaluation`, here on
this process's data and device (`in_this_process`), or on a Ray worker (`dynconv.tune.remote_evaluation`)."""


def in_this_process(data, device) -> EvaluateCheckpoint:
    """`evaluate_checkpoint` on `data` (prepared here) and `device`."""

    def evaluate(state, run_id, subsets, split, speed):
        return evaluate_checkpoint(state, run_id, data, subsets, split, device, speed=speed)

    return evaluate


def model_from_checkpoint(state: dict[str, Any], run_id: str = "?"):
    """Rebuild the model a checkpoint was saved from and load its weights (one-line error on mismatch)."""
    from dynconv.models import create_model

    try:
        model = create_model(
            state["model_name"], num_classes=int(state["num_classes"]), **dict(state.get("model_args") or {})
        )
        model.load_state_dict(state["model"])
    except (DynconvError, KeyError, TypeError, ValueError, RuntimeError) as exc:  # unknown model or args,
        # weights of another shape
        raise DynconvError(f"checkpoint of run {run_id} does not fit its model ({one_line(exc)})") from None
    return model


def served_from_checkpoint(state: dict[str, Any], run_id: str = "?"):
    """The checkpoint's model as a `ServedClassifier` in eval mode: it normalises with the statistics
    training used (`dynconv.data.augment`) and feeds subsets as evaluation does, so users need neither."""
    from dynconv.data.augment import IMAGENET_MEAN, IMAGENET_STD
    from dynconv.models.served import ServedClassifier

    return ServedClassifier(model_from_checkpoint(state, run_id), IMAGENET_MEAN, IMAGENET_STD).eval()
