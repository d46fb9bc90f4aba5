"""FLOPs (fvcore) and parameter counts of the registered models, beside the seed's figures.

fvcore counts one multiply-add as one FLOP (so its "FLOPs" are MACs), convs and linear layers by
their weights, batch-norm 2 ops per element in eval mode (scale and shift), adaptive average pooling
1 per *input* element, and ignores element-wise ops (ReLU, additions, softmax). The seed's figures
follow the same rules except batch-norm at 1 op per element and pooling at 1 per *output* element
(an older fvcore's rules): `convention="seed"` counts that way and reproduces the seed's ResNet
figures exactly (docs/flops.md).

Dynamic models are counted honestly per channel subset: with C of 3 channels the stem conv does C/3
of its full work.

Imports torch, fvcore, `dynconv.models` and `dynconv.data.channels`; never Ray or MLflow.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from dynconv.data.channels import SUBSETS
from dynconv.models import create_model, list_models

log = logging.getLogger(__name__)

SEED_FLOPS: dict[str, int] = {
    "resnet18": 296_456_064,
    "resnet34": 612_876_800,
    "resnet18_dynamic": 926_579_712,
    "simple_cnn": 7_697_151_972,
}
"""The seed's reported FLOPs at 84×84 input and 50 classes (its Tables 1-3)."""

SEED_IMAGE_SIZE, SEED_NUM_CLASSES = 84, 50
"""The setting the seed's figures hold for; `flops_table` compares against them only there."""

SEED_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("resnet18_dynamic", {"stem": "seed"}),
    ("simple_cnn", {"dense_padding": 1}),
)
"""Extra rows of `flops_table`: the arguments that rebuild the seed's own geometry (docs/flops.md)."""

CONVENTIONS = ("fvcore", "seed")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP/DataParallel (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


class _WithChannels(nn.Module):
    """Binds `channels` so the jit tracer under fvcore sees a one-tensor forward."""

    def __init__(self, model: nn.Module, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.channels)


def _prod(shape: Iterable[int]) -> int:
    return math.prod(int(s) for s in shape)


def _seed_batch_norm(inputs: list[Any], outputs: list[Any]) -> int:
    return _prod(inputs[0].type().sizes())


def _seed_adaptive_avg_pool(inputs: list[Any], outputs: list[Any]) -> int:
    return _prod(outputs[0].type().sizes())


def count_flops(
    model: nn.Module,
    image_size: int = 84,
    channels: Sequence[int] | None = None,
    convention: str = "fvcore",
) -> int:
    """FLOPs (multiply-adds) of one image_size×image_size image through the unwrapped model, in eval mode.

    `channels` (dynamic models only) names the slots the input carries, e.g. (0, 2) for RB; the input
    then has len(channels) channels. `convention="seed"` counts batch-norm and pooling as the seed did.
    The model's train/eval mode is restored afterwards.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOP convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    with warnings.catch_warnings():  # fvcore's import trips torch.jit deprecation warnings
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    model = unwrap_model(model)
    if channels is not None and not getattr(model, "dynamic", False):
        raise ValueError(
            "channels only applies to dynamic models; a plain model is evaluated zero-filled at full cost"
        )
    num_channels = len(channels) if channels is not None else getattr(model, "max_in_channels", 3)
    param = next(model.parameters(), None)
    x = torch.zeros(
        1,
        num_channels,
        image_size,
        image_size,
        device=param.device if param is not None else None,
        dtype=param.dtype if param is not None else None,
    )
    target = model if channels is None else _WithChannels(model, tuple(channels))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # jit TracerWarnings from the input checks
            analysis = FlopCountAnalysis(target, x)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            if convention == "seed":
                analysis.set_op_handle("aten::batch_norm", _seed_batch_norm)
                analysis.set_op_handle("aten::adaptive_avg_pool2d", _seed_adaptive_avg_pool)
            total = int(analysis.total())
            log.debug("fvcore skipped these ops (not counted): %s", dict(analysis.unsupported_ops()))
    finally:
        model.train(was_training)
    return total


def count_params(model: nn.Module) -> int:
    """Number of parameters of the unwrapped model (a dynamic stem holds all its slots' weights)."""
    return sum(p.numel() for p in unwrap_model(model).parameters())


def model_facts(model: nn.Module, image_size: int) -> dict[str, float]:
    """What a trial run records about its model: `flops` (all channels, at `image_size`) and `params`."""
    return {"flops": count_flops(model, image_size=image_size), "params": count_params(model)}


def flops_table(
    image_size: int = 84,
    num_classes: int = 50,
    per_subset: bool = False,
    models: Sequence[str] | None = None,
    seed_variants: bool = True,
) -> list[dict[str, Any]]:
    """One row per registered model (or per `models`) and, with `seed_variants`, per `SEED_VARIANTS`.

    Rows: model, kwargs (the non-default construction arguments), subset, flops, params, seed_flops
    (the seed's figure for that model at the seed's 84×84 / 50 classes, else None) and
    ratio = flops / seed_flops. With `per_subset`,
    dynamic models get one row per channel subset; plain models only RGB (they are evaluated
    zero-filled, at full cost). The seed reported one figure for every subset, so every subset row of
    a model carries it.
    """
    names = list(models) if models is not None else list_models()
    configs: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in names]
    if seed_variants:
        configs += [(name, kw) for name, kw in SEED_VARIANTS if name in names]
    configs.sort(key=lambda c: names.index(c[0]))
    at_seed_setting = (image_size, num_classes) == (SEED_IMAGE_SIZE, SEED_NUM_CLASSES)
    rows = []
    for name, kwargs in configs:
        model = create_model(name, num_classes=num_classes, **kwargs)
        params = count_params(model)
        subsets = SUBSETS if per_subset and model.dynamic else {"RGB": None}
        for subset, channels in subsets.items():
            flops = count_flops(model, image_size, channels)
            seed = SEED_FLOPS.get(name) if at_seed_setting else None
            rows.append(
                dict(
                    model=name,
                    kwargs=dict(kwargs),
                    subset=subset,
                    flops=flops,
                    params=params,
                    seed_flops=seed,
                    ratio=round(flops / seed, 4) if seed else None,
                )
            )
    return rows


def format_flops_table(rows: Sequence[dict[str, Any]]) -> str:
    """An aligned text table of `flops_table` rows (numbers with thousands separators)."""
    header = ("model", "subset", "FLOPs", "params", "seed FLOPs", "ratio")
    lines = [header]
    for row in rows:
        model = row["model"]
        if row.get("kwargs"):
            model += "[" + ",".join(f"{k}={v}" for k, v in row["kwargs"].items()) + "]"
        lines.append(
            (
                model,
                row["subset"],
                f"{row['flops']:,}",
                f"{row['params']:,}",
                "-" if row["seed_flops"] is None else f"{row['seed_flops']:,}",
                "-" if row["ratio"] is None else f"{row['ratio']:.4f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(line[2:], widths[2:], strict=True)]
        out.append("  ".join(cells))
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
