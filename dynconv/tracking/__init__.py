"""Everything MLflow: the run layout and tags, finding runs, reading artifacts back, recording, the UI.

Nothing outside `dynconv/tracking/` imports `mlflow`; callers write `tracking.find_runs(...)`,
`tracking.log_metrics(...)`. Modules:

- `layout`: tag and artifact names, the tracking store (URI, checks, experiments), `client`, and writing
  the runs (parent and child runs, params, metrics, tags, artifacts, run status, `closed_on_error`;
  `find_runs` by tag).
- `find`: runs by id or filter; a study's parent run and its trials (`TrialInfo`); metric histories.
- `artifacts`: a trial's checkpoint, a study's spec, YAML/JSON files, per-image predictions.
- `evaluations`: an evaluation's run, metrics, tables and plots (import it explicitly:
  `from dynconv.tracking.evaluations import record_evaluation`; it pulls in `dynconv.evaluation`,
  which a trial actor has no need of).
- `ui`: `dynconv ui`.

This package imports nothing from `dynconv.tune`, `dynconv.train`, `dynconv.report` or `dynconv.rerun`.
"""

from dynconv.tracking.artifacts import download_yaml, load_checkpoint, load_predictions, load_study_spec
from dynconv.tracking.find import (
    TrialInfo,
    experiments,
    find_study_run,
    get_run,
    latest_evaluation_metrics,
    list_trials,
    metric_history,
    search_runs,
    try_get_run,
)
from dynconv.tracking.layout import (
    CHECKPOINT_ARTIFACT,
    RUN_ID_PATTERN,
    SPEC_ARTIFACT,
    TAG_DYNAMIC,
    TAG_EPOCHS_DONE,
    TAG_EVALUATION_RUN,
    TAG_MODEL,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_RANK,
    TAG_RERUN_OF,
    TAG_ROLE,
    TAG_RUN_NAME,
    TAG_SOURCE_RUN,
    TAG_STUDY,
    TAG_TEST_SET,
    TAG_TRIAL_ID,
    TAG_TUNE_PATH,
    artifact_root,
    check_storage_path,
    check_tracking_store,
    client,
    closed_on_error,
    create_child_run,
    end_run,
    ensure_child_run,
    ensure_experiment,
    find_runs,
    log_artifact,
    log_metrics,
    log_params,
    quiet_artifact_downloads,
    resolve_tracking_uri,
    run_params,
    set_tags,
    start_study_run,
    store_errors,
)
from dynconv.tracking.ui import runs_page_url, serve_ui

__all__ = [
    "CHECKPOINT_ARTIFACT",
    "RUN_ID_PATTERN",
    "SPEC_ARTIFACT",
    "TAG_DYNAMIC",
    "TAG_EPOCHS_DONE",
    "TAG_EVALUATION_RUN",
    "TAG_MODEL",
    "TAG_OUTCOME",
    "TAG_PARENT",
    "TAG_RANK",
    "TAG_RERUN_OF",
    "TAG_ROLE",
    "TAG_RUN_NAME",
    "TAG_SOURCE_RUN",
    "TAG_STUDY",
    "TAG_TEST_SET",
    "TAG_TRIAL_ID",
    "TAG_TUNE_PATH",
    "TrialInfo",
    "artifact_root",
    "check_storage_path",
    "check_tracking_store",
    "client",
    "closed_on_error",
    "create_child_run",
    "download_yaml",
    "end_run",
    "ensure_child_run",
    "ensure_experiment",
    "experiments",
    "find_runs",
    "find_study_run",
    "get_run",
    "latest_evaluation_metrics",
    "list_trials",
    "load_checkpoint",
    "load_predictions",
    "load_study_spec",
    "log_artifact",
    "log_metrics",
    "log_params",
    "metric_history",
    "quiet_artifact_downloads",
    "resolve_tracking_uri",
    "run_params",
    "runs_page_url",
    "search_runs",
    "serve_ui",
    "set_tags",
    "start_study_run",
    "store_errors",
    "try_get_run",
]
