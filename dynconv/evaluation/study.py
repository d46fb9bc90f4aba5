"""Study-level evaluation: pick a study's trials, load their checkpoints, evaluate, record, print.

Which trials: the trial runs of the study with a `checkpoint/state.pt` artifact and status FINISHED
or KILLED (stopped early by ASHA: it finished what it was allowed to run), FINISHED ones first, each
group ordered by the trial's best `val_acc` over its epochs. FAILED and still-RUNNING trials are never
evaluated. The checkpoint is the trial's *last* epoch (what Tune kept), so its epoch and validation
accuracy are printed next to the best one.

The thin layer on top of `dynconv.evaluation.model` (which knows nothing of MLflow) and
`dynconv.tracking` (which holds every MLflow call). Imports no Ray.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Sequence

from dynconv import tracking
from dynconv.errors import DynconvError, one_line
from dynconv.evaluation.model import evaluate_model, model_from_checkpoint
from dynconv.evaluation.results import Evaluation, SpeedConfig
from dynconv.evaluation.tables import format_number, print_evaluation
from dynconv.tracking import TrialInfo
from dynconv.tracking.evaluations import log_study_plots, record_evaluation
from dynconv.tune.pareto import pareto_run_ids

EVALUABLE_STATUSES = ("FINISHED", "KILLED")


def select_trials(trials: Sequence[TrialInfo], top_k: int, study: str) -> list[TrialInfo]:
    """The `top_k` trials to evaluate (see the module doc for the order); a one-line error when none."""
    if top_k < 1:
        raise DynconvError(f"--top-k must be at least 1, got {top_k}")
    usable = [t for t in trials if t.has_checkpoint and t.status in EVALUABLE_STATUSES]
    if not usable:
        counts: dict[str, int] = {}
        for t in trials:
            key = t.status.lower() + ("" if t.has_checkpoint else " without checkpoint")
            counts[key] = counts.get(key, 0) + 1
        seen = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no trial runs at all"
        raise DynconvError(f"study {study!r} has no finished trial with a checkpoint ({seen})")
    usable.sort(
        key=lambda t: (t.status == "FINISHED", t.best_val_acc if t.best_val_acc is not None else -1.0),
        reverse=True,
    )
    return usable[:top_k]


def _chosen_trials(
    trials: list[TrialInfo], top_k: int | None, study: str, only_run_id: str | None, parent_run
):
    """The trials to evaluate: `only_run_id` when given (it must have a checkpoint), else the `top_k`
    best by val_acc; `top_k=None`: the whole Pareto set of a multi-objective study, else the best."""
    if only_run_id is None:
        pareto = pareto_run_ids(parent_run) if top_k is None else None
        if pareto is None:
            return select_trials(trials, top_k or 1, study)
        pool = [t for t in trials if t.run_id in pareto]
        return select_trials(pool, max(1, len(pool)), study)
    chosen = [t for t in trials if t.run_id == only_run_id]
    if not chosen or not chosen[0].has_checkpoint:
        raise DynconvError(f"trial run {only_run_id} has no {tracking.CHECKPOINT_ARTIFACT} artifact")
    return chosen


def _header(study: str, rank: int, trial: TrialInfo, state: dict, ev: Evaluation, run_id: str) -> str:
    """The lines printed above a trial's subset table."""
    val_at_ckpt = (state.get("metrics") or {}).get("val_acc")
    return (
        f"Study {study!r}, rank {rank}: trial {trial.name} (run {trial.run_id}, {trial.status.lower()}), "
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
) -> list[tuple[str, Evaluation]]:
    """Evaluate the study's best trial(s), logging one child run each; returns [(run id, Evaluation)].

    `top_k=None`: the whole Pareto set of a multi-objective study (`dynconv.tune.pareto`), else the best.
    """
    from dynconv.data.channels import SUBSET_NAMES, parse_subsets
    from dynconv.datasets import prepare_for_spec
    from dynconv.train.session import default_device

    names = parse_subsets(list(subsets) if subsets is not None else list(SUBSET_NAMES))
    tracking.quiet_artifact_downloads()
    study = parent_run.data.tags.get(tracking.TAG_STUDY, spec.study)
    trials = tracking.list_trials(uri, parent_run)
    chosen = _chosen_trials(trials, top_k, study, only_run_id, parent_run)
    dev = default_device(device)
    states = [(t, tracking.load_checkpoint(uri, t.run_id)) for t in chosen]  # fail before any work
    data = data if data is not None else prepare_for_spec(spec, progress=False)

    parent_id = parent_run.info.run_id
    done: list[tuple[str, Evaluation]] = []
    for rank, (trial, state) in enumerate(states, start=1):
        if int(state["num_classes"]) != data.num_classes:
            raise DynconvError(
                f"checkpoint of run {trial.run_id} has {state['num_classes']} classes, "
                f"the dataset {data.num_classes}"
            )
        model = model_from_checkpoint(state, trial.run_id)
        ev = evaluate_model(model, data, names, split, dev, speed=speed)
        run_id = record_evaluation(
            uri,
            parent_run.info.experiment_id,
            parent_id,
            study,
            ev,
            source_run_id=trial.run_id,
            rank=str(rank) if only_run_id is None else "manual",
            run_name=f"eval-{trial.name}",
            params={"checkpoint_epoch": state.get("epoch")},
            title=f"{study}: {ev.model_name} (trial {trial.name})",
        )
        if rank == 1 and only_run_id is None:
            log_study_plots(uri, run_id, trials)
            tracking.set_tags(uri, parent_id, {tracking.TAG_EVALUATION_RUN: run_id})
        tracking.end_run(uri, run_id, "FINISHED")
        print_evaluation(ev, _header(study, rank, trial, state, ev, run_id))
        done.append((run_id, ev))
    return done


def evaluate_study(spec, result) -> list[tuple[str, Evaluation]]:
    """End-of-study hook of `dynconv tune`: evaluate with the spec's `evaluate` section.

    An evaluation problem must not lose the study (its trials and checkpoints are already in MLflow):
    a DynconvError (no finished trial, a broken checkpoint) is printed as one line, anything else with
    its traceback; either is recorded as the parent's `dynconv.evaluation_error` tag, and [] is
    returned so the study run still closes. `dynconv evaluate STUDY` retries later.
    """
    try:
        parent = tracking.get_run(result.tracking_uri, result.parent_run_id)
        return evaluate_trials(
            spec,
            result.tracking_uri,
            parent,
            top_k=None if spec.search.multi_objective else spec.evaluate.top_k,  # None: the Pareto set
            subsets=spec.evaluate.subsets,
            split=spec.evaluate.split,
        )
    except Exception as exc:
        if not isinstance(exc, DynconvError):
            traceback.print_exc()
        print(
            f"dynconv: evaluation skipped: {one_line(exc)}; retry with: dynconv evaluate {spec.study}",
            file=sys.stderr,
        )
        with contextlib.suppress(Exception):
            tracking.set_tags(
                result.tracking_uri, result.parent_run_id, {"dynconv.evaluation_error": str(exc)[:5000]}
            )
        return []


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

    No `top_k`: the best trial, or the whole Pareto set of a multi-objective study; `top_k=N`: the N
    best by val_acc (RGB) in either kind of study.
    """
    from dynconv.data.channels import parse_subsets

    names = parse_subsets(subsets)  # bad names fail before MLflow is touched
    uri = tracking.resolve_tracking_uri(tracking_uri)
    only = None
    if tracking.RUN_ID_PATTERN.match(study):
        run = tracking.get_run(uri, study)
        if run.data.tags.get(tracking.TAG_ROLE) == "trial":
            only = study
            study = run.data.tags.get(tracking.TAG_PARENT, "")
    parent = tracking.find_study_run(uri, study)
    spec = tracking.load_study_spec(uri, parent)
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
