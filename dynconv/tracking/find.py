"""Finding runs: a run by id, runs by filter, a study's parent run, its trials, metric histories.

One name, one study run: a study name (the spec's `study`) is reused by every fresh `dynconv tune` of
that spec, so "the newest run named X" may be another study than the one the user means. `--resume`,
`evaluate NAME` and `rerun NAME` take a name only when it matches exactly one study run
(`one_study_run`); otherwise the error lists the candidates' run ids, which always work.

Read-only; imports `dynconv.tracking.layout`, `dynconv.tracking.store` and `dynconv.errors`.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dynconv.errors import DynconvError, one_line
from dynconv.tracking.layout import (
    CHECKPOINT_ARTIFACT,
    RUN_ID_PATTERN,
    TAG_OUTCOME,
    TAG_ROLE,
    TAG_RUN_NAME,
    TAG_SOURCE_RUN,
    TAG_STUDY,
    TAG_TRIAL_ID,
)
from dynconv.tracking.store import client, is_missing, masked, store_errors

MAX_LISTED = 10


def describe_run(run: Any) -> str:
    """`<run id> (<run name>, <status>, started <time>)` for an MLflow run."""
    info = run.info
    name = run.data.tags.get(TAG_RUN_NAME) or info.run_name or "?"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((info.start_time or 0) / 1000))
    return f"{info.run_id} ({name}, {info.status}, started {started})"


def one_study_run(runs: Sequence[Any], name: str, how_to_choose: str) -> Any:
    """The single run in `runs` (study runs matching `name`), or a one-line error listing them all.

    `runs` must be non-empty; `how_to_choose` tells the user where a run id goes (e.g. "pass a run id
    to --resume"). Duplicates of one run id (found by two tags) count once.
    """
    unique = list({r.info.run_id: r for r in runs}.values())
    if not unique:
        raise ValueError("one_study_run() needs at least one run")
    if len(unique) == 1:
        return unique[0]
    listed = "; ".join(describe_run(r) for r in unique[:MAX_LISTED])
    more = f"; and {len(unique) - MAX_LISTED} more" if len(unique) > MAX_LISTED else ""
    raise DynconvError(f"{name!r} matches {len(unique)} study runs, {how_to_choose}: {listed}{more}")


def get_run(uri: str, run_id: str):
    """The MLflow run `run_id`, or a one-line error."""
    try:
        return client(uri).get_run(run_id)
    except store_errors() as err:
        if not is_missing(err):
            raise DynconvError(masked(f"cannot read run {run_id} from {uri} ({one_line(err)})")) from None
        raise DynconvError(f"unknown run {run_id!r} in {masked(uri)}") from None


def _all_experiment_ids(uri: str) -> list[str]:
    return [e.experiment_id for e in client(uri).search_experiments()]


def search_runs(uri: str, filter_string: str, experiment_ids: Sequence[str] | None = None) -> list[Any]:
    """Runs matching `filter_string` in `experiment_ids` (default: every experiment), newest first."""
    ids = list(experiment_ids) if experiment_ids is not None else _all_experiment_ids(uri)
    if not ids:
        return []
    return client(uri).search_runs(
        ids, filter_string=filter_string, order_by=["attributes.start_time DESC"], max_results=5000
    )


def find_study_run(uri: str, study: str):
    """The parent run of `study`: a parent run id, or the one study run named `study` (any experiment).

    The name matches the `dynconv.study` tag (the spec's study) or the `dynconv.run_name` tag
    (`<study>-<timestamp>`, one particular study run).
    """
    if RUN_ID_PATTERN.match(study):
        run = None
        with contextlib.suppress(DynconvError):
            run = get_run(uri, study)
        if run is not None:
            role = run.data.tags.get(TAG_ROLE)
            if role == "study":
                return run
            raise DynconvError(f"run {study} is a {role or 'non-dynconv'} run, not a study run")
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study):  # a valid study name (never quotes)
        for key in ("study", "run_name"):
            runs = search_runs(uri, f"tags.`dynconv.role` = 'study' and tags.`dynconv.{key}` = '{study}'")
            if runs:
                return one_study_run(runs, study, "name one by its run id instead")
    known = sorted(
        {r.data.tags.get(TAG_STUDY, "?") for r in search_runs(uri, "tags.`dynconv.role` = 'study'")}
    )
    hint = f"; known studies: {', '.join(known)}" if known else "; the store holds no studies"
    raise DynconvError(f"unknown study or run {study!r} in {masked(uri)}{hint}")


@dataclass
class TrialInfo:
    """A trial run as MLflow holds it: what the evaluation, the confirmation and warm start read of it
    (its ranks come from the study's recorded ranking, never from these values)."""

    run_id: str
    name: str
    trial_id: str  # Tune's trial id (the `dynconv.trial_id` tag; the run id when untagged)
    status: str  # FINISHED (ran all epochs, or stopped early by the scheduler), FAILED, KILLED, RUNNING
    outcome: str  # the `dynconv.outcome` tag (finished, stopped_early, failed, ...); status when absent
    value: float | None  # the last logged value of the ranked metric
    objectives: dict[str, float | None]  # the last logged values of the objectives (multi-objective)
    best_val_acc: float | None  # the best RGB val_acc over its epochs (plots and the printed header)
    has_checkpoint: bool
    params: dict[str, str]
    curves: dict[str, list[tuple[int, float]]]

    @property
    def completed(self) -> bool:
        """Ran all its epochs: outcome `finished` (status FINISHED in a store older than the tag)."""
        return self.outcome == "finished"

    def param(self, key: str) -> float | None:
        """A searched value (`lr`) or its resolved train field (`train.lr`), as a float."""
        for k in (key, f"train.{key}"):
            if k in self.params:
                try:
                    return float(self.params[k])
                except ValueError:
                    return None
        return None


def trial_runs(uri: str, experiment_id: str, parent_run_id: str) -> list[Any]:
    """The trial runs of study run `parent_run_id`, newest first."""
    return search_runs(
        uri,
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`dynconv.role` = 'trial'",
        [experiment_id],
    )


def list_trials(uri: str, parent_run, metric: str, objectives: Sequence[str] = ()) -> list[TrialInfo]:
    """Every trial run of a study with its status, the last logged value of the ranked `metric` and of
    each of `objectives`, its best val_acc, curves and whether it has a checkpoint."""
    c = client(uri)
    trials = []
    for run in trial_runs(uri, parent_run.info.experiment_id, parent_run.info.run_id):
        rid, outcome = run.info.run_id, run.data.tags.get(TAG_OUTCOME)
        if outcome == "orphaned":  # a trial a killed driver lost; Tune ran it again under another id
            continue
        curves = {
            key: [(m.step, m.value) for m in c.get_metric_history(rid, key)]
            for key in ("val_acc", "train_loss")
        }
        accs = [v for _, v in curves["val_acc"] if math.isfinite(v)]
        has_ckpt = any(a.path == CHECKPOINT_ARTIFACT for a in c.list_artifacts(rid, "checkpoint"))
        last = run.data.metrics  # MLflow's latest value of each metric: the one at the last epoch
        trials.append(
            TrialInfo(
                run_id=rid,
                name=run.info.run_name or rid[:8],
                trial_id=run.data.tags.get(TAG_TRIAL_ID, rid),
                status=run.info.status,
                # stores written before the outcome tag closed stopped trials KILLED
                outcome=outcome or run.info.status.lower(),
                value=last.get(metric),
                objectives={m: last.get(m) for m in objectives},
                best_val_acc=max(accs) if accs else None,
                has_checkpoint=has_ckpt,
                params=dict(run.data.params),
                curves=curves,
            )
        )
    return trials


def trial_run_ids(uri: str, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """{Tune trial id: MLflow run id} of the trial runs of study run `parent_run_id`."""
    runs = trial_runs(uri, experiment_id, parent_run_id)
    return {r.data.tags.get(TAG_TRIAL_ID, ""): r.info.run_id for r in runs}


def incomplete_trials(uri: str, experiment_id: str, parent_run_id: str) -> set[str]:
    """Tune ids of the study's trials whose MLflow record lost a write (outcome `incomplete`)."""
    runs = trial_runs(uri, experiment_id, parent_run_id)
    return {r.data.tags.get(TAG_TRIAL_ID, "") for r in runs if r.data.tags.get(TAG_OUTCOME) == "incomplete"}


def try_get_run(uri: str, run_id: str) -> Any | None:
    """The run `run_id`, or None when the store does not have it."""
    try:
        return client(uri).get_run(run_id)
    except store_errors() as err:
        if is_missing(err):
            return None
        raise


def restore_command(uri: str, run: Any) -> str | None:
    """The `mlflow` command that takes `run` out of MLflow's trash, or None when it is not there: the
    run's own (`mlflow runs restore`), or its experiment's when the whole experiment was deleted (which
    put its runs in the trash too, and a restored run in a deleted experiment still takes no new run)."""
    if run.info.lifecycle_stage != "deleted":
        return None
    experiment = client(uri).get_experiment(run.info.experiment_id)
    if experiment.lifecycle_stage == "deleted":
        return f"mlflow experiments restore --experiment-id {experiment.experiment_id}"
    return f"mlflow runs restore --run-id {run.info.run_id}"


def experiments(uri: str, names: Sequence[str] | None) -> list[Any]:
    """The named experiments (default: all), or a one-line error naming the known ones."""
    c = client(uri)
    if not names:
        return list(c.search_experiments())
    found = []
    for name in names:
        exp = c.get_experiment_by_name(name)
        if exp is None:
            known = ", ".join(sorted(e.name for e in c.search_experiments())) or "none"
            raise DynconvError(f"unknown experiment {name!r} in {masked(uri)}; experiments: {known}")
        found.append(exp)
    return found


def metric_history(uri: str, run_id: str, key: str) -> dict[int, float]:
    """{step: value} of one metric of a run."""
    return {m.step: m.value for m in client(uri).get_metric_history(run_id, key)}


def latest_evaluation_metrics(uri: str, run) -> dict[str, float]:
    """Metrics of the newest complete (FINISHED) evaluation of trial `run` (empty when it has none: an
    interrupted or failed evaluation run holds only part of its metrics)."""
    runs = search_runs(
        uri,
        f"tags.`dynconv.role` = 'evaluation' and tags.`{TAG_SOURCE_RUN}` = '{run.info.run_id}' "
        "and attributes.status = 'FINISHED'",
        [run.info.experiment_id],
    )
    return dict(runs[0].data.metrics) if runs else {}
