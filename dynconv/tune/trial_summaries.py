"""`summarise_trials`: Tune's ResultGrid of a study as one `TrialSummary` per trial (best ranked metric,
epochs, outcome, the trial's MLflow run), with the Pareto set marked in a multi-objective study.

Used by the study driver (`dynconv.tune.study`) after the fit. Reads the grid by attribute and MLflow
only through `dynconv.tracking`; must not import Ray, Optuna or `mlflow`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dynconv import tracking
from dynconv.spec import JobSpec
from dynconv.tune.pareto import pareto_front
from dynconv.tune.study_result import TrialSummary


def summarise_trials(
    grid: Any, spec: JobSpec, uri: str, experiment_id: str, parent: str
) -> list[TrialSummary]:
    """One TrialSummary per trial of `grid` (best ranked metric, epochs, outcome, MLflow run id); in a
    multi-objective study, the Pareto trials marked."""
    runs = {
        r.data.tags.get(tracking.TAG_TRIAL_ID): r.info.run_id
        for r in tracking.find_runs(uri, experiment_id, role="trial")
        if r.data.tags.get(tracking.TAG_PARENT) == parent
    }
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        ranked = spec.search.tune_metric
        best = float(df[ranked].max()) if df is not None and ranked in df else None
        epochs = int(df["epoch"].max()) if df is not None and "epoch" in df else 0
        if result.error is not None:
            status = "FAILED"
        elif epochs >= spec.train.epochs:
            status = "FINISHED"
        else:
            status = "STOPPED" if metrics.get("done") else "UNFINISHED"
        params = {k: result.config.get(k) for k in spec.search.space}
        objectives = _last_values(df, list(spec.search.objectives or {}))
        rows.append(TrialSummary(trial_id, params, best, epochs, status, runs.get(trial_id), objectives))
    if spec.search.objectives is not None:
        modes = list(spec.search.objectives.values())
        points = [
            None if r.status == "FAILED" else [r.objectives[m] for m in spec.search.objectives] for r in rows
        ]
        for i in pareto_front(points, modes):
            rows[i].pareto = True
    return rows


def _last_values(df: Any, names: list[str]) -> dict[str, float | None]:
    """Each metric's last reported value (what Optuna was told and what the final checkpoint scores)."""
    out: dict[str, float | None] = {}
    for name in names:
        col = df[name].dropna() if df is not None and name in df else []
        out[name] = float(col.iloc[-1]) if len(col) else None
    return out
