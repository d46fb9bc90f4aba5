"""The champion's rule (dynconv.tune.champion): best mean, Welch's t-test against the runner-up, the tie
rule when the lead is noise; each case built so that a wrong rule picks another configuration."""

from __future__ import annotations

import math

import pytest

from dynconv.errors import DynconvError
from dynconv.spec.metrics import metric_bounds
from dynconv.tune.champion import Configuration, SeedRun, decide


def config(rank: int, values: list[float], flops: float = 1e6, worst: float = 0.5) -> Configuration:
    runs = [
        SeedRun(f"run{rank}{i}", i + 1, v, {"RGB": 0.8, "R": 1 - worst}, val_worst=worst)
        for i, v in enumerate(values)
    ]
    return Configuration(f"trial{rank}", f"t{rank}", rank, {"lr": 0.01 * rank}, flops, runs)


def test_a_significant_lead_is_the_champion() -> None:
    a, b = config(1, [0.80, 0.82, 0.81]), config(2, [0.60, 0.62, 0.61])
    v = decide([b, a], "val_acc", "max")
    assert v.champion is a and v.significant and v.alias == "champion"
    assert v.test.p_value < 0.05 and v.test.hedges_g > 0
    assert "significant at alpha=0.05; registered @champion" in v.lines()[-1]


def test_min_mode_takes_the_lowest_mean() -> None:
    low, high = config(2, [0.30, 0.31, 0.29]), config(1, [0.50, 0.52, 0.51])
    v = decide([high, low], "val_loss", "min")
    assert v.champion is low and v.significant
    assert v.oriented_score() == pytest.approx(-0.30), "higher is better for the registry"
    assert "Hedges' g=+" in v.lines()[-1], (
        "the effect size is signed so that positive means the best is better"
    )


def test_noise_goes_to_the_tie_rule_better_worst_subset_first_when_flops_are_equal() -> None:
    best_mean = config(1, [0.80, 0.70, 0.75], worst=0.30)
    robust = config(2, [0.74, 0.76, 0.72], worst=0.40)
    v = decide([best_mean, robust], "val_acc", "max")
    assert not v.significant and v.alias == "candidate"
    assert v.best_mean is best_mean and v.champion is robust  # by validation: the test split says otherwise
    assert v.rule == "better mean worst-subset validation accuracy"
    assert any("NOT significant" in line for line in v.lines())


def test_fewer_flops_decide_before_accuracy() -> None:
    big = config(1, [0.80, 0.70, 0.75], flops=2e6, worst=0.45)
    small = config(2, [0.74, 0.76, 0.72], flops=1e6, worst=0.30)
    v = decide([big, small], "val_acc", "max")
    assert v.champion is small and v.rule == "fewer FLOPs"


def test_a_significantly_worse_configuration_is_not_tied() -> None:
    a = config(1, [0.80, 0.70, 0.75], worst=0.30)
    b = config(2, [0.74, 0.76, 0.72], worst=0.31)
    c = config(3, [0.20, 0.21, 0.19], worst=0.90)  # the best worst subset, but clearly worse
    v = decide([a, b, c], "val_acc", "max")
    assert set(v.tied) == {"trial1", "trial2"} and v.champion is b


def test_failed_seeds_count_without_a_value_and_nothing_scored_is_one_line() -> None:
    a = config(1, [0.8, float("nan"), 0.82])
    assert a.score().n == 2
    with pytest.raises(DynconvError, match="no confirmation run reported a finite val_acc"):
        decide([config(1, [math.nan, math.nan])], "val_acc", "max")


def test_representative_seed_is_the_one_closest_to_the_mean() -> None:
    c = config(1, [0.70, 0.74, 0.90])
    assert c.representative().run_id == "run11"  # mean 0.78: 0.74 is closest


def test_a_registered_seed_run_stays_the_representative() -> None:
    """Issue 28: a configuration keeps the registry version it was registered with; more seeds move its
    mean (here towards seed 3), not its model. A registered run that did not score is passed over."""
    c = config(1, [0.70, 0.74, 0.90])
    c.registered_run = "run10"
    assert c.representative().run_id == "run10"
    c.registered_run = "elsewhere"
    assert c.representative().run_id == "run11"
    assert "registered_run" not in c.to_json()


def test_the_verdict_round_trips_to_json() -> None:
    import json

    v = decide([config(1, [0.8, 0.82]), config(2, [0.6, 0.61])], "val_acc", "max")
    data = json.loads(json.dumps(v.to_json()))
    assert data["champion"] == "trial1" and data["alias"] == v.alias and data["lines"] == v.lines()


def test_an_accuracys_interval_over_seeds_stays_within_zero_and_one() -> None:
    """Two far-apart seeds of an accuracy: Student-t reaches past 1 (0.63 [0.08, 1.18] was printed); the
    interval of an accuracy is clipped to its range, a loss's is not."""
    runs = [SeedRun("a", 1, 0.58), SeedRun("b", 2, 0.67)]
    acc = Configuration("t", "t", 1, {}, None, runs, metric_bounds("val_acc_worst")).score()
    assert acc.high == 1.0 and 0.0 <= acc.low < 0.58 and acc.mean == pytest.approx(0.625)
    loss = Configuration("t", "t", 1, {}, None, runs, metric_bounds("val_loss")).score()
    assert loss.high > 1.0
    assert metric_bounds("objective") is None and metric_bounds("val_acc") == (0.0, 1.0)


def test_a_verdict_is_complete_or_absent(tmp_path, monkeypatch) -> None:
    """An interruption between the verdict's file and its tags leaves no verdict, not a new file beside
    an older verdict: the tag readers look for is removed first and written last, in one batch."""
    from dynconv.tracking.layout import ensure_experiment, start_study_run
    from dynconv.tracking.store import client
    from dynconv.tune import confirm

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = start_study_run(uri, ensure_experiment(uri, "v"), "v", {})
    first = decide([config(1, [0.80, 0.82, 0.81]), config(2, [0.60, 0.62, 0.61])], "val_acc", "max")
    confirm.record_verdict(uri, parent, first, [])
    tags = client(uri).get_run(parent).data.tags
    assert tags["dynconv.verdict"] == first.one_line() and tags["dynconv.champion_run_id"].startswith("run1")

    def cut(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(confirm, "log_together", cut)
    again = decide([config(2, [0.90, 0.91, 0.92]), config(1, [0.5, 0.52, 0.51])], "val_acc", "max")
    with pytest.raises(KeyboardInterrupt):
        confirm.record_verdict(uri, parent, again, [])
    assert "dynconv.verdict" not in client(uri).get_run(parent).data.tags
