"""Spec fields of issue 14: searched schedules, subset validation, weighted and multi-objective search."""

from __future__ import annotations

import copy

import pytest

from dynconv.spec import SpecError, parse_spec

MINIMAL = {
    "study": "t",
    "model": {"name": "resnet18"},
    "train": {"epochs": 4, "batch_size": 8, "schedule": {"name": "cosine", "warmup_epochs": 1.5}},
    "search": {
        "space": {
            "lr": {"type": "loguniform", "low": 0.001, "high": 0.1},
            "augment_strength": {"type": "uniform", "low": 0.0, "high": 1.0},
        }
    },
}


def _spec(**sections):
    data = copy.deepcopy(MINIMAL)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return parse_spec(data, source="job.yaml")


def test_searched_schedule_choice_validates_and_keeps_the_warmup() -> None:
    space = {**MINIMAL["search"]["space"], "schedule": {"type": "choice", "values": ["cosine", "onecycle"]}}
    spec = _spec(search={"space": space})
    trial = spec.with_params({"lr": 0.01, "augment_strength": 0.2, "schedule": "onecycle"})
    assert trial.train.schedule.name == "onecycle" and trial.train.schedule.warmup_epochs == 1.5
    assert _spec(train={"schedule": "onecycle"}).train.schedule.name == "onecycle"


@pytest.mark.parametrize(
    ("param", "needle"),
    [
        ({"type": "choice", "values": ["cosine", "step"]}, "'schedule' is searched as a choice among"),
        ({"type": "uniform", "low": 0, "high": 1}, "'schedule' is searched as a choice among"),
    ],
)
def test_bad_searched_schedule_is_one_line(param, needle) -> None:
    with pytest.raises(SpecError, match=needle):
        _spec(search={"space": {**MINIMAL["search"]["space"], "schedule": param}})


def test_channel_drop_is_searchable() -> None:
    space = {**MINIMAL["search"]["space"], "channel_drop": {"type": "uniform", "low": 0.0, "high": 0.5}}
    assert _spec(search={"space": space}).with_params({"channel_drop": 0.25}).train.channel_drop == 0.25


def test_weighted_metric_ranks_on_objective() -> None:
    spec = _spec(search={"metric": {"val_acc": 0.5, "val_acc_worst": 0.5}})
    assert spec.search.tune_metric == "objective" and spec.search.tune_mode == "max"
    assert not spec.search.multi_objective


def test_objectives_list_takes_search_mode_and_needs_fifo() -> None:
    spec = _spec(search={"objectives": ["val_acc", "val_acc_worst"]}, scheduler={"name": "none"})
    assert spec.resolved().search == spec.search, "a dumped spec validates again (trials, MLflow)"
    assert spec.search.objectives == {"val_acc": "max", "val_acc_worst": "max"}
    assert spec.search.multi_objective and spec.search.tune_metric == "val_acc"
    spec = _spec(search={"objectives": {"val_acc": "max", "val_loss": "min"}}, scheduler={"name": "none"})
    assert spec.search.objectives == {"val_acc": "max", "val_loss": "min"}


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        ({"search": {"objectives": ["val_acc", "val_acc_worst"]}}, "ASHA ranks trials on one metric"),
        ({"search": {"objectives": ["val_acc"]}, "scheduler": {"name": "none"}}, "at least two metrics"),
        (
            {"search": {"objectives": ["val_acc", "val_acc_worst"], "metric": "val_acc_worst"}},
            "not both",
        ),
        (
            {"search": {"metric": "val_acc_wrost"}},
            "search.metric: 'val_acc_wrost' is not a metric trials report \\(did you mean 'val_acc_worst'",
        ),
        (
            {"search": {"metric": {"val_acc": 1.0, "val_acc_RX": 1.0}}},
            "'val_acc_RX' is not a metric trials report",
        ),
        ({"search": {"metric": {"val_acc": 0.0}}}, "weights must be finite and non-zero"),
        (
            {"search": {"metric": "val_acc_B"}, "train": {"val_subsets": ["RGB", "R"]}},
            "is not a metric trials report",
        ),
        (
            {"search": {"metric": "val_acc_worst"}, "train": {"subset_val_every": 0}},
            "is not a metric trials report",
        ),
        ({"search": {"metric": "objective"}}, "is not a metric trials report"),
        ({"train": {"val_subsets": ["RGB", "RX"]}}, "train.val_subsets: bad subset list"),
    ],
)
def test_bad_robust_search_is_one_line(sections, needle) -> None:
    with pytest.raises(SpecError, match=needle) as err:
        _spec(**sections)
    assert str(err.value).startswith("job.yaml: ") and "\n" not in str(err.value)


def test_subset_validation_defaults_to_all_seven_every_epoch() -> None:
    spec = _spec()
    assert spec.train.val_subsets == ["RGB", "RG", "RB", "GB", "R", "G", "B"]
    assert spec.train.subset_val_every == 1
    assert _spec(search={"metric": "val_acc_worst"}).search.tune_metric == "val_acc_worst"
