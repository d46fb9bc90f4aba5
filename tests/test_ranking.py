"""`dynconv.spec.ranking`: the one rule every "best trial" follows (pure; no MLflow, no Ray)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from dynconv.spec import JobSpec
from dynconv.spec.ranking import Ranking


@dataclass
class T:
    trial_id: str
    value: float | None
    completed: bool = True
    status: str = "FINISHED"
    objectives: dict[str, float | None] = field(default_factory=dict)


def ids(trials: list[T]) -> list[str]:
    return [t.trial_id for t in trials]


def _spec(**search) -> JobSpec:
    return JobSpec.model_validate(
        {
            "study": "r",
            "model": {"name": "simple_cnn", "args": {"width": 8}},
            "data": {"synthetic": {"dir": "/tmp/unused"}, "image_size": 16},
            "train": {"epochs": 2, "batch_size": 16, "schedule": {"warmup_epochs": 0}},
            "search": {
                "space": {
                    "lr": {"type": "loguniform", "low": 0.01, "high": 0.1},
                    "augment_strength": {"type": "uniform", "low": 0.0, "high": 0.5},
                },
                **search,
            },
            "scheduler": {"name": "none"},
        }
    )


def test_max_and_min_rank_in_their_mode() -> None:
    trials = [T("a", 0.5), T("b", 0.9), T("c", 0.1)]
    assert ids(Ranking("val_acc", "max").rank(trials)) == ["b", "a", "c"]
    assert ids(Ranking("val_loss", "min").rank(trials)) == ["c", "a", "b"]


def test_for_spec_reads_metric_mode_weighted_and_objectives() -> None:
    loss = Ranking.for_spec(_spec(metric="val_loss", mode="min"))
    assert (loss.metric, loss.mode, loss.objectives) == ("val_loss", "min", ())
    assert loss.describe() == "val_loss (min)" and loss.best_metric == "best_val_loss"
    assert Ranking.for_spec(_spec()).best_metric == "best_val_acc"

    weighted = Ranking.for_spec(_spec(metric={"val_acc": 1.0, "val_loss": -0.5}))
    assert (weighted.metric, weighted.mode) == ("objective", "max")
    assert weighted.describe() == "objective = 1*val_acc + -0.5*val_loss (max)"

    multi = Ranking.for_spec(_spec(objectives={"val_loss": "min", "val_acc": "max"}))
    assert (multi.metric, multi.mode) == ("val_loss", "min")
    assert multi.objectives == (("val_loss", "min"), ("val_acc", "max"))
    assert multi.describe() == "Pareto set on val_loss (min), val_acc (max)"


def test_failed_and_non_finite_trials_are_never_ranked() -> None:
    trials = [
        T("nan", math.nan),
        T("none", None),
        T("inf", math.inf),
        T("failed", 0.99, status="FAILED"),
        T("ok", 0.2),
    ]
    assert ids(Ranking("val_acc", "max").rank(trials)) == ["ok"]
    assert ids(Ranking("val_loss", "min").rank(trials)) == ["ok"]


def test_completed_trials_come_before_stopped_ones_then_ties_by_id() -> None:
    trials = [
        T("stopped_best", 0.95, completed=False, status="STOPPED"),
        T("z", 0.6),
        T("y", 0.6),
        T("x", 0.7),
        T("stopped", 0.4, completed=False, status="KILLED"),
    ]
    assert ids(Ranking("val_acc", "max").rank(trials)) == ["x", "y", "z", "stopped_best", "stopped"]
    assert ids(Ranking("val_acc", "max").rank(list(reversed(trials)))) == [
        "x",
        "y",
        "z",
        "stopped_best",
        "stopped",
    ]


def test_weighted_objective_is_ranked_on_its_reported_value() -> None:
    ranking = Ranking.for_spec(_spec(metric={"val_acc": 1.0, "val_loss": -1.0}))
    trials = [T("a", 0.1), T("b", 0.4), T("c", -0.2)]  # value: the `objective` each trial reported
    assert ids(ranking.rank(trials)) == ["b", "a", "c"]


def test_pareto_front_first_in_tie_rule_order_with_a_min_objective() -> None:
    ranking = Ranking("val_loss", "min", (("val_loss", "min"), ("val_acc", "max")))

    def t(tid: str, loss: float | None, acc: float | None, **kw) -> T:
        return T(tid, loss, objectives={"val_loss": loss, "val_acc": acc}, **kw)

    trials = [
        t("a", 0.8, 0.9),  # front: best accuracy
        t("b", 0.3, 0.6),  # front: lowest loss -> first by the tie rule (val_loss, min)
        t("c", 0.9, 0.5),  # dominated by a
        t("d", 0.3, 0.6),  # equal to b: on the front too, after b by trial id
        t("e", 0.5, 0.7),  # front: between a and b
        t("f", 0.1, None),  # objective missing: never ranked
        t("g", 0.05, 0.99, status="FAILED"),
        t("h", 0.4, 0.5),  # dominated by e
    ]
    assert ids(ranking.rank(trials)) == ["b", "d", "e", "a", "h", "c"]
    assert ids(ranking.front(trials)) == ["b", "d", "e", "a"]
    assert Ranking("val_acc", "max").front(trials) == []


def test_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="modes"):
        Ranking("val_acc", "highest")


def test_ranking_imports_no_tracking() -> None:
    import ast
    from pathlib import Path

    import dynconv.spec.ranking as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith(("dynconv.tracking", "mlflow", "ray"))}
