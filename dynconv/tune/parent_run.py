"""The study's MLflow parent run: open a new one (named, tagged with its Tune path and, warm-started, the
earlier study run that seeded its search; spec.yaml logged) or
find the one `--resume` continues, refusing a spec that changed since the study started; once the trials
are ranked, record the ranking (`record_trial_table`, read back by `recorded_trials`) and the best trial
(`record_best_trial`).

Used by the study driver (`dynconv.tune.study`) before Ray starts and after the fit. Talks to MLflow
only through `dynconv.tracking`; must not import Ray, Optuna or `mlflow`.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dynconv.errors import DynconvError, one_line
from dynconv.spec import JobSpec
from dynconv.spec.checks import spec_diff
from dynconv.spec.ranking import Ranking
from dynconv.tracking.artifacts import load_study_spec, read_csv, read_yaml
from dynconv.tracking.find import describe_run, find_study_run, one_study_run
from dynconv.tracking.layout import (
    SPEC_ARTIFACT,
    TAG_BEST_RUN,
    TAG_BEST_TRIAL,
    TAG_RANKED_ON,
    TAG_RUN_NAME,
    TAG_STUDY,
    TAG_TUNE_PATH,
    TRIAL_TABLE_ARTIFACT,
    close_failed,
    find_runs,
    log_artifact,
    log_csv,
    log_metrics,
    set_tags,
    start_study_run,
)
from dynconv.tracking.store import client, masked
from dynconv.tune.search import describe_space
from dynconv.tune.study_lock import is_held
from dynconv.tune.study_result import (
    StudyResult,
    TrialSummary,
    format_summary,
    table_rows,
    trials_from_rows,
)

if TYPE_CHECKING:
    from dynconv.tune.warm_start import WarmStart

DRIVER_GONE = "driver gone: the run was left RUNNING by a driver that no longer holds the study's lock"


def open_parent_run(
    spec: JobSpec, uri: str, experiment_id: str, resume: bool | str, warm: WarmStart | None = None
) -> tuple[str, str, str]:
    """(parent_run_id, run_name, tune_path): a new study run, or the one of this study to resume.

    `resume` is True (the study's only run) or a study run id (when the name matches several runs).
    `warm`: the earlier study whose trials seed a new study's search; the new run records it as
    `WarmStart.run_tags` and `run_params` say (its study run id, how many trials seeded it, the
    sampler's own seed, and what its training differs in when `--warm-start-accept` let it).
    """
    if resume:
        run = resume_run(spec, uri, experiment_id, resume)
        _refuse_changed_spec(spec, uri, run.info.run_id)
        tune_path = run.data.tags.get(TAG_TUNE_PATH, "")
        if not Path(tune_path).exists() and "://" not in tune_path:
            raise DynconvError(f"--resume: the study's Tune state {tune_path!r} is gone; start a new study")
        client(uri).update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, Path(tune_path).name, tune_path
    run_name = f"{spec.study}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"  # never collides
    tune_path = f"{spec.storage_uri().rstrip('/')}/{run_name}"
    params = {**describe_space(spec), "model": spec.model.name, "num_samples": spec.search.num_samples}
    tags = {TAG_TUNE_PATH: tune_path, TAG_RUN_NAME: run_name}
    if warm is not None:
        params.update(warm.run_params(spec.search.seed))
        tags.update(warm.run_tags())
    parent = start_study_run(uri, experiment_id, spec.study, params)
    set_tags(uri, parent, tags)
    with tempfile.TemporaryDirectory(prefix="dynconv_spec_") as tmp:
        spec_file = Path(tmp) / SPEC_ARTIFACT
        spec_file.write_text(yaml.safe_dump(recorded_spec(spec), sort_keys=False))
        log_artifact(uri, parent, spec_file)
    return parent, run_name, tune_path


def recorded_spec(spec: JobSpec) -> dict[str, Any]:
    """The spec's JSON form as a study records it: spec.yaml on the study run, and the spec every trial
    trains with and so writes into its checkpoints (MLflow artifacts). The tracking URI's password is
    masked (`http://USER:***@HOST`): only the study driver talks to MLflow, trials never need it."""
    data = spec.to_json_dict()
    if data["mlflow"]["tracking_uri"]:
        data["mlflow"]["tracking_uri"] = masked(data["mlflow"]["tracking_uri"])
    return data


def _refuse_changed_spec(spec: JobSpec, uri: str, run_id: str) -> None:
    """`--resume` continues the same study: a spec changed in anything but search.num_samples is refused
    (a mixed study would compare trials trained differently). Compared with the parent run's spec.yaml."""
    try:
        logged = read_yaml(uri, run_id, SPEC_ARTIFACT)
    except DynconvError as err:
        raise DynconvError(f"--resume: {err}") from None
    with contextlib.suppress(ValueError):  # read by today's schema: a field added since has its default
        logged = recorded_spec(JobSpec.model_validate(logged))
    changed = spec_diff(logged, recorded_spec(spec))
    if changed:
        raise DynconvError(
            f"--resume: the spec changed since the study started ({', '.join(changed)}); only "
            "search.num_samples may change - undo the change, or start a fresh study: run without --resume"
        )


def resume_run(spec: JobSpec, uri: str, experiment_id: str | None, resume: bool | str) -> Any:
    """The one study run `--resume` [RUN_ID] means, or a one-line error (none, or several by that name)."""
    runs = [] if experiment_id is None else find_runs(uri, experiment_id, role="study", study=spec.study)
    if isinstance(resume, str):
        runs = [r for r in runs if r.info.run_id == resume]
    if not runs:
        which = f" with run id {resume}" if isinstance(resume, str) else ""
        raise DynconvError(
            f"--resume: no earlier study named {spec.study!r}{which} in experiment {spec.experiment!r}"
        )
    run = one_study_run(runs, spec.study, "choose one with --resume RUN_ID")
    if run.info.status == "FINISHED":  # its record is complete: a resume could only rewrite it
        raise DynconvError(
            f"--resume: study {spec.study!r} (run {run.info.run_id}) finished: nothing to resume; run "
            f"without --resume for a new study, or `dynconv confirm {spec.study}` to confirm its best"
        )
    return run


def settle_dead_study(uri: str, run: Any, storage: str) -> Any:
    """`run` (a study run); when it is RUNNING but no driver holds its study's lock, the driver that
    ran it is gone (killed, its machine lost): say so, close it FAILED as such, and return it anew.
    A RUNNING study whose lock is held, or whose lock this machine cannot see, is returned as it is."""
    study = run.data.tags.get(TAG_STUDY, "")
    if run.info.status != "RUNNING" or is_held(storage, study) is not False:  # running, or cannot tell
        return run
    print(
        f"dynconv: study run {run.info.run_id} was left RUNNING by a driver that is gone (the study's "
        "lock is free); it is closed FAILED as such",
        file=sys.stderr,
    )
    close_failed(uri, run.info.run_id, "FAILED", DRIVER_GONE, run.info.experiment_id)
    return client(uri).get_run(run.info.run_id)


def record_best_trial(uri: str, parent: str, best: Any, ranking: Ranking) -> None:
    """Log the rank-1 trial `best` (a `TrialSummary`) on the study run `parent`: its last value of the
    ranked metric as `best_<metric>` (`best_val_acc`, `best_val_loss`, ...), its trial and run ids and
    what it was ranked on as tags, so the parent run names the same trial the table and evaluation do."""
    log_metrics(uri, parent, {ranking.best_metric: best.value})
    set_tags(
        uri,
        parent,
        {TAG_BEST_TRIAL: best.trial_id, TAG_BEST_RUN: best.run_id, TAG_RANKED_ON: ranking.describe()},
    )


def record_trial_table(uri: str, parent: str, trials: list[TrialSummary], spec: JobSpec) -> None:
    """Record the study's one ranking on its run: every trial with its rank, as `trials.csv` (what
    `dynconv trials`, `evaluate STUDY`, `confirm STUDY`, `rerun STUDY` and the report read)."""
    log_csv(uri, parent, table_rows(trials, spec), TRIAL_TABLE_ARTIFACT)


def recorded_trials(uri: str, parent_run: Any, spec: JobSpec) -> list[TrialSummary]:
    """The study's trials with the ranks its driver gave them (`record_trial_table`); one line when the
    study run holds no ranking (its driver ended before ranking the trials: `--resume` finishes it)."""
    try:
        rows = read_csv(uri, parent_run.info.run_id, TRIAL_TABLE_ARTIFACT)
    except DynconvError as err:
        raise DynconvError(
            f"study {spec.study!r} (run {parent_run.info.run_id}) recorded no ranking of its trials: its "
            f"driver ended before ranking them; finish it with: dynconv tune SPEC --resume ({one_line(err)})"
        ) from None
    return trials_from_rows(rows, spec)


def trial_table(uri: str, study: str, top: int | None = None) -> str:
    """`dynconv trials STUDY`: the study's trial table as its driver ranked it (every trial, or the
    first `top`), under one line naming the study run and what it was ranked on."""
    parent = find_study_run(uri, study)
    spec = load_study_spec(uri, parent)
    trials = recorded_trials(uri, parent, spec)
    info = parent.info
    result = StudyResult(spec.study, "", info.run_id, info.experiment_id, uri, "", False, trials)
    head = f"Study {spec.study!r}, run {describe_run(parent)}: {len(trials)} trials ({result.outcomes()})"
    ranked = f"ranked on {Ranking.for_spec(spec).describe()}"
    return f"{head}, {ranked}\n{format_summary(result, spec, limit=top)}"
