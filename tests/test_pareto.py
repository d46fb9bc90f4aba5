"""The Pareto set (dynconv.tune.pareto) and the multi-objective searcher / scheduler built from a spec."""

from __future__ import annotations

import copy
import math

import pytest

from dynconv.spec import parse_spec
from dynconv.spec.ranking import dominates, pareto_front

MAX2 = ["max", "max"]


def test_front_keeps_trade_offs_and_drops_dominated_points() -> None:
    points = [(0.90, 0.20), (0.88, 0.85), (0.85, 0.84), (0.80, 0.86), (0.90, 0.10)]
    # (0.85, 0.84) loses to (0.88, 0.85); (0.90, 0.10) to (0.90, 0.20); the other three trade off.
    assert pareto_front(points, MAX2) == [0, 1, 3]


def test_modes_flip_the_order_and_ties_stay_on_the_front() -> None:
    assert pareto_front([(1.0, 0.5), (2.0, 0.4)], ["min", "max"]) == [0]
    assert pareto_front([(0.5, 0.5), (0.5, 0.5)], MAX2) == [0, 1]
    assert dominates((0.5, 0.6), (0.5, 0.5), MAX2) and not dominates((0.5, 0.5), (0.5, 0.5), MAX2)


def test_missing_or_nan_values_are_never_on_the_front() -> None:
    points = [None, (math.nan, 0.9), (0.1, 0.1), (0.2,)]
    assert pareto_front(points, MAX2) == [2]
    assert pareto_front([], MAX2) == []
    with pytest.raises(ValueError, match="max' or 'min"):
        pareto_front([(1, 2)], ["max", "up"])


SPEC = {
    "study": "t",
    "model": {"name": "resnet18"},
    "train": {"epochs": 2, "batch_size": 8},
    "search": {
        "space": {
            "lr": {"type": "loguniform", "low": 0.001, "high": 0.1},
            "augment_strength": {"type": "uniform", "low": 0.0, "high": 1.0},
        },
        "objectives": {"val_acc": "max", "val_acc_worst": "max"},
    },
    "scheduler": {"name": "none"},
}


@pytest.mark.parametrize(("algorithm", "sampler"), [("tpe", "TPESampler"), ("nsga2", "NSGAIISampler")])
def test_multi_objective_searcher_gets_the_lists_and_tune_config_none(algorithm, sampler) -> None:
    from ray.tune.schedulers import FIFOScheduler

    from dynconv.tune.search import build_scheduler, build_searcher, describe_space, tune_metric_mode

    data = copy.deepcopy(SPEC)
    data["search"]["algorithm"] = algorithm
    spec = parse_spec(data)
    searcher = build_searcher(spec)
    assert searcher.metric == ["val_acc", "val_acc_worst"] and searcher.mode == ["max", "max"]
    assert type(searcher._sampler).__name__ == sampler
    assert tune_metric_mode(spec) == (None, None)
    assert isinstance(build_scheduler(spec), FIFOScheduler)
    assert describe_space(spec)["search.objectives"] == "val_acc:max, val_acc_worst:max"


def test_weighted_metric_is_what_tune_ranks() -> None:
    from dynconv.tune.search import tune_metric_mode

    data = copy.deepcopy(SPEC)
    del data["search"]["objectives"]
    data["search"]["metric"] = {"val_acc": 0.5, "val_acc_worst": 0.5}
    assert tune_metric_mode(parse_spec(data)) == ("objective", "max")
