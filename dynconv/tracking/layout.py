"""The MLflow layout of a study and how it is written: tag and artifact names, experiments, the runs
themselves (parent run, child runs, params, metrics, tags, artifacts, run status), and where the MLflow
UI shows them.

A study is one parent run (`dynconv.role=study`) with nested child runs per trial, evaluation and rerun.
Everything goes through `MlflowClient` with explicit run ids, never the process-global active run: the
study driver writes the study and its trials (from a Tune callback, `dynconv.tune.recorder`), the
evaluation and rerun commands their own runs.

Imports `dynconv.errors` and `dynconv.tracking.store`; `mlflow` inside functions only (slow to import).
Nothing outside `dynconv/tracking/` imports `mlflow`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynconv.errors import DynconvError, Fault, one_line
from dynconv.tracking import retry as tracking_retry
from dynconv.tracking.store import artifact_root, client, masked, store_errors

TAG_ROLE = "dynconv.role"  # study | trial | confirmation | evaluation | rerun
TAG_STUDY = "dynconv.study"
TAG_TRIAL_ID = "dynconv.trial_id"
TAG_TUNE_PATH = "dynconv.tune_path"
TAG_PARENT = "mlflow.parentRunId"
TAG_SOURCE_RUN = "dynconv.source_run_id"  # evaluation -> the trial it evaluated
TAG_MODEL = "dynconv.model"
TAG_DYNAMIC = "dynconv.dynamic"
TAG_RANK = "dynconv.rank"  # evaluation: the trial's rank in its study (1 = best), "manual" = chosen by id
TAG_TEST_SET = "dynconv.test_set"
# registered model version (tracking/registry.py): the ranked metric's mean, oriented so higher is better
TAG_SCORE = "dynconv.score"
REGISTRY_ALIASES = ("champion", "candidate")  # the aliases a study moves on its registered model
SERVED_MODEL = "model"  # the name of a served model logged into a run (`mlflow.pytorch.log_model`)
TAG_EVALUATION_RUN = "dynconv.evaluation_run_id"  # study -> its rank-1 evaluation
TAG_RERUN_OF = "dynconv.rerun_of"  # rerun -> the original run
TAG_PARETO_TRIALS = "dynconv.pareto_trials"  # study: its Pareto trials' Tune ids, in rank order
TAG_PARETO_RUN_IDS = "dynconv.pareto_run_ids"  # study: their MLflow run ids, in the same order
TAG_WARM_START = "dynconv.warm_start"  # study: the earlier study run whose trials seeded its search
PARAM_WARM_START_TRIALS = "warm_start.trials"  # study: how many of those trials seeded it
PARAM_WARM_START_SAMPLER_SEED = "warm_start.sampler_seed"  # study: its sampler's seed (search.seed's own)
# study: what its training differs in from the study that seeded it, accepted by --warm-start-accept
TAG_WARM_START_ACCEPTED = "dynconv.warm_start_accepted"
# trial: finished | stopped_early | failed | diverged | incomplete | interrupted | orphaned
TAG_OUTCOME = "dynconv.outcome"
# study, trial: why a run was closed FAILED or KILLED by something other than its own training (the
# fault's one line: a full disk, a gone store, a driver that died, an interruption)
TAG_FAILURE = "dynconv.failure"
TAG_BEST_TRIAL = "dynconv.best_trial_id"  # study: the Tune id of its rank-1 trial
TAG_BEST_RUN = "dynconv.best_run_id"  # study: that trial's MLflow run id
TAG_RANKED_ON = "dynconv.ranked_on"  # study: what its trials were ranked on, `val_loss (min)`
TAG_RUN_NAME = "dynconv.run_name"  # study: `<study>-<date>-<time>-<6 hex>`, also its Tune experiment's name
TAG_REGISTRY_ERROR = "dynconv.registry_error"  # study: why its champion was not registered
TAG_EVALUATION_ERROR = "dynconv.evaluation_error"  # study: the line of its end-of-study evaluation's failure
TAG_EPOCHS_DONE = "dynconv.epochs_done"  # trial: the epochs it trained
TAG_ERROR = "dynconv.error"  # trial: the one line of the dynconv error that ended it (not retried)
TAG_CONFIRMS = "dynconv.confirms"  # confirmation -> the trial run whose configuration it retrains
TAG_CONFIRMATION = "dynconv.confirmation"  # confirmation: which confirmation (its Tune experiment's name)
TAG_CONFIRMING = "dynconv.confirming"  # study: the confirmation under way (its Tune experiment); "" once done
TAG_CHAMPION_RUN = "dynconv.champion_run_id"  # study -> the confirmation run registered as its model
TAG_VERDICT = "dynconv.verdict"  # study: the confirmation's verdict, one line
TAG_REPRODUCED = "dynconv.reproduced"  # rerun: reproduced, or outside the confirmed interval by how much
CONFIRMATION_ARTIFACT = "confirmation.json"  # study: configurations x seeds, intervals, the verdict
CHECKPOINT_ARTIFACT = "checkpoint/state.pt"
SPEC_ARTIFACT = "spec.yaml"
TRIAL_TABLE_ARTIFACT = "trials.csv"  # study: every trial with the rank the driver gave it (its one ranking)
RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
# MLflow 3.17's UI opens an experiment of this kind on its runs table instead of the GenAI overview.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Experiment id for `name`, created with an absolute artifact location when missing."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(
            name, artifact_location=artifact_root(tracking_uri, name), tags=EXPERIMENT_TAGS
        )
    except store_errors():  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def check_experiment(tracking_uri: str, name: str) -> None:
    """One line when experiment `name` is in MLflow's trash (deleted in the UI): MLflow refuses runs in
    it, and creating another of that name fails too."""
    exp = client(tracking_uri).get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise DynconvError(
            f"MLflow experiment {name!r} (id {exp.experiment_id}) is in MLflow's trash (deleted in the "
            f"UI): restore it with `MLFLOW_TRACKING_URI={masked(tracking_uri)} mlflow experiments restore "
            f"--experiment-id {exp.experiment_id}`, or set mlflow.experiment to another name"
        )


def find_runs(tracking_uri: str, experiment_id: str, **tags: str) -> list[Any]:
    """Runs of an experiment carrying all the given `dynconv.*` tags, newest first."""
    filt = " and ".join(f"tags.`dynconv.{k}` = '{v}'" for k, v in tags.items())
    return client(tracking_uri).search_runs(
        [experiment_id], filter_string=filt, order_by=["attributes.start_time DESC"], max_results=1000
    )


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
        for r in tracking_retry.call(
            find_runs, tracking_uri, experiment_id, role=role, trial_id=key, store_uri=tracking_uri
        )
        if r.data.tags.get(TAG_PARENT) == parent_run_id
    ]
    if existing:
        run_id = existing[0].info.run_id
        if existing[0].info.status != "RUNNING":
            tracking_retry.call(c.update_run, run_id, status="RUNNING", store_uri=tracking_uri)
        return run_id, False
    all_tags = {TAG_ROLE: role, TAG_TRIAL_ID: key, TAG_PARENT: parent_run_id, **(tags or {})}
    run = tracking_retry.call(
        c.create_run, experiment_id, run_name=run_name, tags=all_tags, store_uri=tracking_uri
    )
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


def run_params(spec: Any, searched: dict[str, Any]) -> dict[str, Any]:
    """The params of a trial run and of a rerun of it: the searched values, the model's name, and the
    resolved train section, model args, image size and workers as flat `train.*`/`model.*` keys (so the
    MLflow UI can filter and compare runs on any of them). `spec` is the trial's resolved JobSpec."""
    out: dict[str, Any] = {**searched, "model": spec.model.name}
    out.update({f"train.{k}": v for k, v in spec.train.model_dump(mode="json").items()})
    out.update({f"model.{k}": v for k, v in spec.model.args.items()})
    out["data.image_size"] = spec.data.image_size
    out["workers_per_trial"] = spec.resources.workers_per_trial
    return out


def log_params(tracking_uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Log params, skipping those already logged with the same value (MLflow forbids changing one)."""
    from mlflow.entities import Param

    c = client(tracking_uri)
    have = tracking_retry.call(c.get_run, run_id, store_uri=tracking_uri).data.params
    fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]
    for i in range(0, len(fresh), 100):
        tracking_retry.call(c.log_batch, run_id, params=fresh[i : i + 100], store_uri=tracking_uri)


def log_metrics(
    tracking_uri: str, run_id: str, metrics: dict[str, float], step: int = 0, timestamp_ms: int | None = None
) -> None:
    """Numeric metrics at `step` (non-numeric values are ignored), stamped `timestamp_ms` (default: now:
    a write that waited for the store keeps the time its values were measured)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    batch = [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    if batch:
        tracking_retry.call(client(tracking_uri).log_batch, run_id, metrics=batch, store_uri=tracking_uri)


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, Any]) -> None:
    c = client(tracking_uri)
    for k, v in tags.items():
        tracking_retry.call(c.set_tag, run_id, k, str(v), store_uri=tracking_uri)


def log_together(tracking_uri: str, run_id: str, metrics: dict[str, float], tags: dict[str, Any]) -> None:
    """Metrics and tags in one write (one MLflow batch, one transaction in a database store): a reader
    sees all of them or none."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    tracking_retry.call(
        client(tracking_uri).log_batch,
        run_id,
        metrics=batch,
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
        store_uri=tracking_uri,
    )


def delete_tag(tracking_uri: str, run_id: str, key: str) -> None:
    """Remove tag `key` from a run (nothing when it has none)."""
    c = client(tracking_uri)
    if key in tracking_retry.call(c.get_run, run_id, store_uri=tracking_uri).data.tags:
        tracking_retry.call(c.delete_tag, run_id, key, store_uri=tracking_uri)


def log_artifact(tracking_uri: str, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    client(tracking_uri).log_artifact(run_id, str(path), artifact_path)


def log_dict(tracking_uri: str, run_id: str, data: dict[str, Any], artifact_file: str) -> None:
    """A JSON (or YAML, by extension) artifact written from `data`."""
    tracking_retry.call(client(tracking_uri).log_dict, run_id, data, artifact_file, store_uri=tracking_uri)


def log_csv(tracking_uri: str, run_id: str, rows: list[dict[str, Any]], artifact_file: str) -> None:
    """A CSV artifact with one line per row (the columns of the first row; every row has them)."""
    text = io.StringIO()
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    c = client(tracking_uri)
    tracking_retry.call(c.log_text, run_id, text.getvalue(), artifact_file, store_uri=tracking_uri)


def end_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark a run FINISHED, FAILED or KILLED."""
    tracking_retry.call(client(tracking_uri).set_terminated, run_id, status=status, store_uri=tracking_uri)


@contextlib.contextmanager
def closed_on_error(tracking_uri: str, run_id: str, experiment_id: str | None = None) -> Iterator[None]:
    """Run the block; when it raises, close run `run_id` KILLED (KeyboardInterrupt: Ctrl-C, SIGINT) or
    FAILED (anything else), tagged with the cause (`TAG_FAILURE`), before the exception propagates
    unchanged. With `experiment_id`, its child runs still RUNNING are closed the same way.

    A run is FINISHED only by its caller, once everything it claims is logged; one cut short mid-way
    must not stay RUNNING, nor look complete. Closing it is best effort: if MLflow refuses (the fault
    may be the store's own), one stderr line says so and the original exception still propagates.
    """
    try:
        yield
    except KeyboardInterrupt:
        close_failed(tracking_uri, run_id, "KILLED", "interrupted", experiment_id)
        raise
    except BaseException as err:
        # A store that failed for good cannot take the close either: the fault's own line says it all.
        quiet = isinstance(err, Fault) and not err.transient
        close_failed(tracking_uri, run_id, "FAILED", one_line(err), experiment_id, quiet)
        raise


def close_failed(
    tracking_uri: str,
    run_id: str,
    status: str,
    cause: str,
    experiment_id: str | None = None,
    quiet: bool = False,
) -> None:
    """Close run `run_id` (and, with `experiment_id`, its children still RUNNING) `status` with `cause`
    as its `TAG_FAILURE`, where it is still RUNNING; best effort (see `closed_on_error`): a store that
    refuses is one stderr line, unless `quiet`. Runs it could not close stay RUNNING until a later
    command finds their driver gone (`dynconv.tune.parent_run.settle_dead_study`)."""
    try:
        c = client(tracking_uri)
        children = []
        if experiment_id is not None:
            children = c.search_runs(
                [experiment_id],
                f"tags.`mlflow.parentRunId` = '{run_id}' and attributes.status = 'RUNNING'",
                max_results=5000,
            )
        for rid in [*(r.info.run_id for r in children), run_id]:
            if c.get_run(rid).info.status == "RUNNING":
                set_tags(tracking_uri, rid, {TAG_FAILURE: cause[:5000]})
                end_run(tracking_uri, rid, status)
    except store_errors() as exc:  # the error being raised matters more; this one is only reported
        if not quiet:
            print(f"dynconv: could not close run {run_id} {status}: {one_line(exc)}", file=sys.stderr)


def runs_page_url(base: str, experiment_id: str) -> str:
    """URL of an experiment's runs table.

    MLflow 3.17's UI chooses between its GenAI and model-training views from a `workflowType` setting
    (URL, then browser storage, default GenAI), not from the experiment's `mlflow.experimentKind` tag,
    so the link carries it.
    """
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
