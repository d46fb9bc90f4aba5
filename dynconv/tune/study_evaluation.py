"""Study-level evaluation: pick a study's trials, load their checkpoints, evaluate, record, print.

Which trials: the first `top_k` of the study's one ranking (the driver's, handed over at the study's
end, or the one its run recorded, `dynconv.tune.parent_run.recorded_trials`) that can be evaluated (a
`checkpoint/state.pt` artifact, a FINISHED or KILLED run); a ranked trial passed over is named in one
line, and every evaluation run carries its trial's rank in `dynconv.rank`. The checkpoint is the
trial's *last* epoch (what Tune kept, and what the ranking scores), so its epoch and validation accuracy
are printed next to the best one.

An evaluation run is FINISHED once its metrics, tables, predictions and plots are all logged; one
interrupted (Ctrl-C, SIGINT) or broken mid-way is closed KILLED or FAILED before the error propagates.

The thin layer on top of `dynconv.evaluation.model` (which knows nothing of MLflow) and
`dynconv.tracking` (which holds every MLflow call). Imports no Ray.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import replace

from dynconv.errors import DynconvError, one_line
from dynconv.evaluation.model import EvaluateCheckpoint, in_this_process
from dynconv.evaluation.results import Evaluation, SpeedConfig
from dynconv.evaluation.speed import speed_config
from dynconv.evaluation.tables import format_number, print_evaluation
from dynconv.spec import resolve_tracking_uri
from dynconv.spec.ranking import Ranking
from dynconv.tracking.artifacts import load_checkpoint, load_study_spec
from dynconv.tracking.evaluations import log_study_plots, record_evaluation
from dynconv.tracking.find import TrialInfo, find_study_run, get_run, list_trials
from dynconv.tracking.layout import (
    CHECKPOINT_ARTIFACT,
    RUN_ID_PATTERN,
    TAG_EVALUATION_ERROR,
    TAG_EVALUATION_RUN,
    TAG_PARENT,
    TAG_ROLE,
    TAG_STUDY,
    closed_on_error,
    end_run,
    set_tags,
)
from dynconv.tracking.store import masked, store_errors
from dynconv.tune.parent_run import recorded_trials, settle_dead_study
from dynconv.tune.study_result import TrialSummary

EVALUABLE_STATUSES = ("FINISHED", "KILLED")


class NothingToEvaluate(DynconvError):
    """A study none of whose trials can be evaluated (all failed, diverged, unscored or without a
    checkpoint). Permanent: evaluating the same study again ends the same way, so nobody is told to."""


def _not_evaluable(trial: TrialInfo | None) -> str | None:
    """Why a ranked trial cannot be evaluated (no run, no checkpoint, a run still open), or None."""
    if trial is None:
        return "has no MLflow run"
    if not trial.has_checkpoint:
        return f"has no {CHECKPOINT_ARTIFACT} artifact"
    if trial.status not in EVALUABLE_STATUSES:
        return f"is {trial.status.lower()}"
    return None


def ranked_runs(
    trials: Sequence[TrialSummary], runs: Sequence[TrialInfo]
) -> list[tuple[TrialSummary, TrialInfo | None]]:
    """The ranked ones of the study's `trials`, best first, each with its run from `runs` carrying the
    values it was ranked on (None when the store does not hold it)."""
    by_run = {r.run_id: r for r in runs}
    out: list[tuple[TrialSummary, TrialInfo | None]] = []
    for t in sorted((t for t in trials if t.rank is not None), key=lambda t: t.rank or 0):
        run = by_run.get(t.run_id or "")
        out.append((t, run and replace(run, value=t.value, objectives=dict(t.objectives))))
    return out


def select_trials(
    trials: Sequence[TrialSummary], runs: Sequence[TrialInfo], top_k: int, study: str
) -> list[tuple[int, TrialInfo]]:
    """The first `top_k` of the study's ranked `trials` whose run (in `runs`) can be evaluated, each with
    its rank (1 = the study's best). A ranked trial passed over is named in one printed line, with the
    rank evaluated in its place; a one-line error when no trial can be evaluated."""
    if top_k < 1:
        raise DynconvError(f"--top-k must be at least 1, got {top_k}")
    chosen: list[tuple[int, TrialInfo]] = []
    passed: list[tuple[int, str, str]] = []
    for row, run in ranked_runs(trials, runs):
        if len(chosen) == top_k:
            break
        rank = row.rank or 0
        why = _not_evaluable(run)
        if run is None or why is not None:
            passed.append((rank, run.name if run else row.trial_id, why or ""))
            continue
        for p_rank, p_name, p_why in passed:
            instead = f"evaluating rank {rank} (trial {run.name}) instead"
            print(f"trial {p_name} (rank {p_rank}) {p_why}; {instead}", flush=True)
        passed = []
        chosen.append((rank, run))
    if not chosen:
        by_run = {r.run_id: r for r in runs}
        raise NothingToEvaluate(
            f"study {study!r} has no finished trial with a checkpoint ({_outcomes(trials, by_run)})"
        )
    for p_rank, p_name, p_why in passed:  # no evaluable trial ranks below these
        print(f"trial {p_name} (rank {p_rank}) {p_why}; not evaluated", flush=True)
    return chosen


def _outcomes(trials: Sequence[TrialSummary], runs: dict[str, TrialInfo]) -> str:
    """How the study's trials ended, counted (for the error when none can be evaluated)."""
    counts: dict[str, int] = {}
    for t in trials:
        run = runs.get(t.run_id or "")
        key = t.status.lower() + ("" if run is not None and run.has_checkpoint else " without checkpoint")
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no trial runs at all"


def _chosen_trials(
    trials: Sequence[TrialSummary],
    runs: Sequence[TrialInfo],
    top_k: int | None,
    study: str,
    only_run_id: str | None,
) -> list[tuple[int | None, TrialInfo]]:
    """The trials to evaluate with their ranks: `only_run_id` when given (it must have a checkpoint; no
    rank), else the first `top_k` of the ranking; `top_k=None`: as many as the Pareto set of a
    multi-objective study holds (the Pareto trials rank first), else the best."""
    if only_run_id is None:
        if top_k is None:
            top_k = max(1, sum(t.pareto for t in trials))
        return list(select_trials(trials, runs, top_k, study))  # list[tuple[int, ...]] widened
    chosen = [t for t in runs if t.run_id == only_run_id]
    if not chosen or not chosen[0].has_checkpoint:
        raise DynconvError(f"trial run {only_run_id} has no {CHECKPOINT_ARTIFACT} artifact")
    return [(None, chosen[0])]


def _header(
    study: str, rank: int | None, ranking: Ranking, trial: TrialInfo, state: dict, ev: Evaluation, run_id: str
) -> str:
    """The lines printed above a trial's subset table."""
    val_at_ckpt = (state.get("metrics") or {}).get("val_acc")
    place = "chosen by run id" if rank is None else f"rank {rank} on {ranking.describe()}"
    return (
        f"Study {study!r}, {place}: trial {trial.name} (run {trial.run_id}, {trial.status.lower()}), "
        f"model {ev.model_name} {ev.model_args}\n"
        f"checkpoint epoch {state.get('epoch')}, val acc there {format_number(val_at_ckpt, '.4f')}, "
        f"best val acc {format_number(trial.best_val_acc, '.4f')}; {ev.split} split, "
        f"test set {ev.test_set_id[:12]}\n"
        f"MLflow evaluation run {run_id}"
    )


def evaluate_trials(
    spec,
    uri: str,
    parent_run,
    *,
    top_k: int | None = 1,
    subsets: Sequence[str] | None = None,
    split: str = "test",
    device: str | None = None,
    speed: SpeedConfig | None = None,
    only_run_id: str | None = None,
    data=None,
    evaluate: EvaluateCheckpoint | None = None,
    trials: Sequence[TrialSummary] | None = None,
) -> list[tuple[str, Evaluation]]:
    """Evaluate the study's best trial(s) by its ranking, logging one child run each (FINISHED once
    complete); returns [(run id, Evaluation)].

    `trials`: the study's trials as its driver ranked them (by default, the ranking the study run
    recorded). `top_k=None`: the whole Pareto set of a multi-objective study, else the best.
    `evaluate`: where a checkpoint is evaluated (a study's end: on a Ray worker with a trial's
    resources); by default here, on `device` (`dynconv evaluate`).
    """
    from dynconv.data.channels import SUBSET_NAMES, parse_subsets
    from dynconv.spec.data import prepare_for_spec
    from dynconv.train.session import default_device

    names = parse_subsets(list(subsets) if subsets is not None else list(SUBSET_NAMES))
    study = parent_run.data.tags.get(TAG_STUDY, spec.study)
    ranking = Ranking.for_spec(spec)
    if trials is None and only_run_id is None:
        trials = recorded_trials(uri, parent_run, spec)
    runs = list_trials(uri, parent_run, ranking.metric, [m for m, _ in ranking.objectives])
    chosen = _chosen_trials(trials or [], runs, top_k, study, only_run_id)
    states = [(r, t, load_checkpoint(uri, t.run_id)) for r, t in chosen]  # fail before any work
    if evaluate is None:
        data = data if data is not None else prepare_for_spec(spec, progress=False)
        evaluate = in_this_process(data, default_device(device))

    parent_id = parent_run.info.run_id
    done: list[tuple[str, Evaluation]] = []
    for rank, trial, state in states:
        ev = evaluate(state, trial.run_id, names, split, speed)
        run_id = record_evaluation(
            uri,
            parent_run.info.experiment_id,
            parent_id,
            study,
            ev,
            source_run_id=trial.run_id,
            rank="manual" if rank is None else str(rank),
            run_name=f"eval-{trial.name}",
            params={"checkpoint_epoch": state.get("epoch")},
            title=f"{study}: {ev.model_name} (trial {trial.name})",
        )
        with closed_on_error(uri, run_id):
            if rank is not None and not done:  # the best evaluated trial
                ranked = [run for _, run in ranked_runs(trials or [], runs) if run is not None]
                log_study_plots(uri, run_id, ranked, runs, ranking.metric)
                set_tags(uri, parent_id, {TAG_EVALUATION_RUN: run_id})
            end_run(uri, run_id, "FINISHED")
        print_evaluation(ev, _header(study, rank, ranking, trial, state, ev, run_id))
        done.append((run_id, ev))
    return done


def evaluate_study(
    spec, result, evaluate: EvaluateCheckpoint | None = None
) -> tuple[list[tuple[str, Evaluation]], str | None]:
    """End-of-study hook of `dynconv tune`: evaluate with the spec's `evaluate` section (`evaluate`: where,
    see `evaluate_trials`). Returns the evaluations and, when the evaluation failed, its one line.

    An evaluation problem must not lose the study (its trials and checkpoints are already in MLflow):
    it is printed as one line (a bug's type and message, never a traceback) and recorded as the parent's
    `dynconv.evaluation_error` tag; the study driver records the study as incomplete. The line suggests
    `dynconv evaluate STUDY` only when a retry could succeed: no trial to evaluate (`NothingToEvaluate`)
    is final, and nothing is missing then.
    """
    try:
        parent = get_run(result.tracking_uri, result.parent_run_id)
        evaluations = evaluate_trials(
            spec,
            result.tracking_uri,
            parent,
            top_k=None if spec.search.multi_objective else spec.evaluate.top_k,  # None: the Pareto set
            subsets=spec.evaluate.subsets,
            split=spec.evaluate.split,
            speed=speed_config(spec.evaluate),
            evaluate=evaluate,
            trials=result.trials,
        )
        return evaluations, None
    except Exception as exc:  # whatever failed, the evaluation is what is missing
        reason = masked(one_line(exc) if isinstance(exc, DynconvError) else f"{type(exc).__name__}: {exc}")
        problem = None if isinstance(exc, NothingToEvaluate) else one_line(reason)
        if problem is None:
            print(f"dynconv: evaluation skipped: {one_line(reason)}; nothing to evaluate", file=sys.stderr)
        else:
            print(
                f"dynconv: evaluation skipped: {problem}; retry with: dynconv evaluate {spec.study}",
                file=sys.stderr,
            )
        with contextlib.suppress(*store_errors()):
            set_tags(result.tracking_uri, result.parent_run_id, {TAG_EVALUATION_ERROR: reason[:5000]})
        return [], problem


def evaluate_study_cli(
    study: str,
    top_k: int | None = None,
    subsets: str | Sequence[str] = "RGB,RG,RB,GB,R,G,B",
    split: str = "test",
    tracking_uri: str | None = None,
    device: str | None = None,
    speed: SpeedConfig | None = None,
) -> list[tuple[str, Evaluation]]:
    """`dynconv evaluate STUDY`: STUDY is a study name, a study (parent) run id or a trial run id.

    No `top_k`: the best trial, or the whole Pareto set of a multi-objective study; `top_k=N`: the first
    N of the ranking the study recorded, in either kind.
    """
    from dynconv.data.channels import parse_subsets

    names = parse_subsets(subsets)  # bad names fail before MLflow is touched
    uri = resolve_tracking_uri(tracking_uri)
    only = None
    if RUN_ID_PATTERN.match(study):
        run = get_run(uri, study)
        if run.data.tags.get(TAG_ROLE) == "trial":
            only = study
            study = run.data.tags.get(TAG_PARENT, "")
    parent = find_study_run(uri, study)
    spec = load_study_spec(uri, parent)
    parent = settle_dead_study(uri, parent, spec.storage_uri())
    return evaluate_trials(
        spec,
        uri,
        parent,
        top_k=top_k,
        subsets=names,
        split=split,
        device=device,
        speed=speed,
        only_run_id=only,
    )
