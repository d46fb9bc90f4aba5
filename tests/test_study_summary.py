"""The study run's description, learning curves and Optuna importances (runs written directly)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynconv.spec import JobSpec
from dynconv.spec.ranking import Ranking
from dynconv.tracking.layout import ensure_child_run, ensure_experiment, log_metrics, start_study_run
from dynconv.tracking.store import client
from dynconv.tune.study_result import StudyResult, TrialSummary, apply_ranking
from dynconv.tune.summary import NOTE_TAG, importances, write_study_summary

SPACE = {
    "lr": {"type": "loguniform", "low": 0.01, "high": 0.2},
    "augment_strength": {"type": "uniform", "low": 0.0, "high": 0.5},
}


def _spec(tmp_path: Path) -> JobSpec:
    return JobSpec.model_validate(
        {
            "study": "imp",
            "model": {"name": "resnet18_dynamic", "args": {"width": 4}},
            "data": {"synthetic": {"dir": str(tmp_path / "syn")}, "image_size": 16},
            "train": {"epochs": 3, "batch_size": 16, "schedule": {"warmup_epochs": 0}},
            "search": {"space": SPACE, "num_samples": 6},
            "mlflow": {"experiment": "imp"},
        }
    )


def _study(tmp_path: Path, n: int) -> tuple[JobSpec, StudyResult]:
    """`n` trials whose val_acc depends on lr only (augment_strength is noise)."""
    spec = _spec(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "imp")
    parent = start_study_run(uri, exp, "imp", {})
    trials = []
    for i in range(n):
        lr, aug = 0.01 * (1.8**i), [0.4, 0.1, 0.3, 0.0, 0.2, 0.45][i % 6]
        acc = 0.3 + 0.1 * i
        run_id, _ = ensure_child_run(uri, exp, parent, "trial", f"t{i}", f"trial_t{i}")
        epochs = 3 if i % 2 else 1
        for e in range(1, epochs + 1):
            log_metrics(uri, run_id, {"val_acc": acc * e / epochs}, step=e)
        status = "FINISHED" if epochs == 3 else "STOPPED"
        trials.append(TrialSummary(f"t{i}", {"lr": lr, "augment_strength": aug}, acc, epochs, status, run_id))
    apply_ranking(trials, Ranking.for_spec(spec))
    return spec, StudyResult("imp", "imp-1", parent, exp, uri, "", False, trials)


def test_importances_need_four_trials_and_find_the_parameter_that_matters(tmp_path: Path) -> None:
    spec, result = _study(tmp_path, 6)
    scores = importances(spec, result)
    assert set(scores) == {"lr", "augment_strength"}
    assert sum(scores.values()) == pytest.approx(1.0)
    assert scores["lr"] > scores["augment_strength"]
    result.trials = result.trials[:3]
    assert importances(spec, result) is None


def test_study_run_gets_description_curves_and_importances(tmp_path: Path) -> None:
    spec, result = _study(tmp_path, 5)
    write_study_summary(spec, result, [])
    c = client(result.tracking_uri)
    run = c.get_run(result.parent_run_id)
    note = run.data.tags[NOTE_TAG]
    assert "Study `imp`" in note and "**5 trials** (2 finished, 3 stopped)" in note
    # t4 scored highest but was stopped after 1 epoch: the ranking puts completed trials first (t3)
    assert "Best trial** `t3`" in note and "last val_acc 0.6000" in note
    assert "on val_acc (max)." in note
    files = {a.path for a in c.list_artifacts(result.parent_run_id, "study")}
    assert files == {"study/learning_curves.png", "study/param_importances.png"}
    assert run.data.metrics["importance.lr"] > run.data.metrics["importance.augment_strength"]
    exp = c.get_experiment(result.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
