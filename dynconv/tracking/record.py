"""Writing runs: the study's parent run, child runs, params, metrics, tags, artifacts, run status.

Imports only `dynconv.tracking.layout` (and `mlflow` inside functions).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dynconv.tracking.find import find_runs
from dynconv.tracking.layout import TAG_PARENT, TAG_ROLE, TAG_STUDY, TAG_TRIAL_ID, client


def start_study_run(tracking_uri: str, experiment_id: str, study: str, params: dict[str, Any]) -> str:
    """A new parent run for one study."""
    c = client(tracking_uri)
    run = c.create_run(experiment_id, run_name=study, tags={TAG_ROLE: "study", TAG_STUDY: study})
    log_params(tracking_uri, run.info.run_id, params)
    return run.info.run_id


def ensure_child_run(
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str,
    role: str,
    key: str,
    run_name: str,
    tags: dict[str, str] | None = None,
) -> tuple[str, bool]:
    """The child run of `parent_run_id` whose `dynconv.trial_id` tag is `key`, created if missing.

    Returns (run_id, created). A restarted trial finds and continues its run instead of duplicating it.
    """
    c = client(tracking_uri)
    existing = [
        r
        for r in find_runs(tracking_uri, experiment_id, role=role, trial_id=key)
        if r.data.tags.get(TAG_PARENT) == parent_run_id
    ]
    if existing:
        run_id = existing[0].info.run_id
        if existing[0].info.status != "RUNNING":
            c.update_run(run_id, status="RUNNING")
        return run_id, False
    all_tags = {TAG_ROLE: role, TAG_TRIAL_ID: key, TAG_PARENT: parent_run_id, **(tags or {})}
    run = c.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id, True


def create_child_run(
    uri: str, experiment_id: str, parent_run_id: str | None, run_name: str, tags: dict[str, str]
) -> str:
    """A new run nested under `parent_run_id` (evaluations and reruns are never resumed, always new).

    Without a parent (a rerun of a run that had none) the run is top-level.
    """
    parent = {TAG_PARENT: parent_run_id} if parent_run_id else {}
    run = client(uri).create_run(experiment_id, run_name=run_name, tags={**parent, **tags})
    return run.info.run_id


def log_params(tracking_uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Log params, skipping those already logged with the same value (MLflow forbids changing one)."""
    from mlflow.entities import Param

    c = client(tracking_uri)
    have = c.get_run(run_id).data.params
    fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]
    for i in range(0, len(fresh), 100):
        c.log_batch(run_id, params=fresh[i : i + 100])


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Numeric metrics at `step` (non-numeric values are ignored)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    if batch:
        client(tracking_uri).log_batch(run_id, metrics=batch)


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, Any]) -> None:
    c = client(tracking_uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def log_artifact(tracking_uri: str, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    client(tracking_uri).log_artifact(run_id, str(path), artifact_path)


def end_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark a run FINISHED, FAILED or KILLED."""
    client(tracking_uri).set_terminated(run_id, status=status)
