"""`summarise_trials`: Tune's ResultGrid of a study as one `TrialSummary` per trial (last value of the
ranked metric, epochs, outcome, the trial's MLflow run), with the Pareto set marked in a multi-objective
study (`dynconv.tune.ranking`, the same rule every other "best trial" follows).

Used by the study driver (`dynconv.tune.study`) after the fit. Reads the grid by attribute and MLflow
only through `dynconv.tracking`; must not import Ray, Optuna or `mlflow`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dynconv.spec import JobSpec
from dynconv.spec.metrics import trial_outcome
from dynconv.tracking.layout import TAG_PARENT, TAG_TRIAL_ID, find_runs
from dynconv.tune.ranking import Ranking
from dynconv.tune.study_result import TrialSummary, apply_ranking


def summarise_trials(
    grid: Any, spec: JobSpec, uri: str, experiment_id: str, parent: str
) -> list[TrialSummary]:
    """One TrialSummary per trial of `grid` (last value of the ranked metric, epochs, outcome, MLflow
    run id), ranked (`rank`), and in a multi-objective study the Pareto trials marked."""
    runs = {
        r.data.tags.get(TAG_TRIAL_ID): r.info.run_id
        for r in find_runs(uri, experiment_id, role="trial")
        if r.data.tags.get(TAG_PARENT) == parent
    }
    ranking = Ranking.for_spec(spec)
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        value = _last_values(df, [ranking.metric])[ranking.metric]
        epochs = int(df["epoch"].max()) if df is not None and "epoch" in df else 0
        outcome = trial_outcome(metrics, epochs, spec.train.epochs, result.error is not None)
        if outcome == "stopped_early":  # or interrupted, when Tune never saw it end
            status = "STOPPED" if metrics.get("done") else "UNFINISHED"
        else:
            status = {"failed": "FAILED", "diverged": "DIVERGED", "finished": "FINISHED"}[outcome]
        params = {k: result.config.get(k) for k in spec.search.space}
        objectives = _last_values(df, [m for m, _ in ranking.objectives])
        rows.append(TrialSummary(trial_id, params, value, epochs, status, runs.get(trial_id), objectives))
    apply_ranking(rows, ranking)
    return rows


def _last_values(df: Any, names: list[str]) -> dict[str, float | None]:
    """Each metric's last reported value (what Optuna was told and what the final checkpoint scores)."""
    out: dict[str, float | None] = {}
    for name in names:
        col = df[name].dropna() if df is not None and name in df else []
        out[name] = float(col.iloc[-1]) if len(col) else None
    return out
