"""`dynconv tune`: prepare data and tracking, run the Tuner, summarise, evaluate.

The study driver is the only process that talks to Tune, and the only one that writes the study to
MLflow: the parent run (`dynconv.tune.parent_run`) and, from Tune's events, every trial's child run
(`dynconv.tune.recorder`). Trials only report to Tune (`dynconv.tune.trial`). What a study returns is
`dynconv.tune.study_result`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynconv.environment import set_library_environment
from dynconv.errors import DiskFull, DynconvError, Fault, disk_fault, one_line, world_fault
from dynconv.spec import JobSpec
from dynconv.spec.data import prepare_for_spec
from dynconv.spec.metrics import ended_by_fault
from dynconv.spec.ranking import Ranking
from dynconv.tracking.faults import StoreWatch
from dynconv.tracking.find import incomplete_trials, trial_run_ids
from dynconv.tracking.layout import (
    TAG_PARETO_RUN_IDS,
    TAG_PARETO_TRIALS,
    check_experiment,
    closed_on_error,
    end_run,
    ensure_experiment,
    log_metrics,
    runs_page_url,
    set_tags,
)
from dynconv.tracking.store import check_storage_path, check_writable_store, client, masked
from dynconv.tune.console import (
    format_plan,
    quiet_libraries,
    ray_init_kwargs,
    ray_logs_dir,
)
from dynconv.tune.parent_run import (
    open_parent_run,
    record_best_trial,
    record_trial_table,
    resume_run,
    settle_dead_study,
)
from dynconv.tune.phase import NewPhase, fit_phase, phase_tuner
from dynconv.tune.ray_address import check_ray_address
from dynconv.tune.resources import (
    check_resources_fit,
    cluster_capacity,
    describe_trial_resources,
)
from dynconv.tune.search import (
    build_scheduler,
    build_searcher,
    max_concurrent_trials,
    param_space,
)
from dynconv.tune.study_lock import study_lock
from dynconv.tune.study_result import StudyResult, end_table_limit, format_summary, summarise_trials
from dynconv.tune.trial import TrialContext
from dynconv.tune.warm_start import WarmStart, load_warm_start

__all__ = ["run_study"]


@dataclass
class _StudyRun:
    """What the steps of one study share once its data is prepared and its parent run is open."""

    spec: JobSpec  # resolved
    uri: str  # tracking URI
    storage: str  # Tune's storage path
    data: Any  # dynconv.data.cache_files.PreparedData
    experiment_id: str
    parent: str  # the parent (study) run id
    run_name: str
    tune_path: str
    timings: dict[str, float]  # becomes StudyResult.timings (the same dict)
    warm: WarmStart | None = None  # an earlier study's trials that seed the search (--warm-start)
    recorder: Any = None  # the new Tuner's TrialRecorder (a resumed Tuner restores its own)
    watch: StoreWatch | None = None  # the store file this driver opened (sqlite), to tell it gone


def _init_ray(spec: JobSpec, address: str | None, verbose: bool = False) -> tuple[str, str | None]:
    """Connect to `address` (a cluster) or start a local Ray; returns where its logs are and its
    dashboard's URL (a local Ray's dashboard takes a free port).

    The Train controllers of the trials read `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S` (how often they collect
    the workers' reports, `failure.report_poll_s`); it reaches every Ray worker through the job's
    runtime environment. A value the user set wins.
    """
    import ray

    if ray.is_initialized():
        return ray_logs_dir(None), None
    poll = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(spec.failure.report_poll_s))
    context = ray.init(
        address=address,
        runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": poll}},
        **ray_init_kwargs(verbose),
    )
    logs = ray_logs_dir(context.address_info.get("session_dir") if address in (None, "local") else None)
    return logs, context.dashboard_url or None


def run_study(
    spec: JobSpec,
    address: str | None = None,
    resume: bool | str = False,
    warm_start: str | None = None,
    warm_start_accept: str | None = None,
    **options: Any,
) -> StudyResult:
    """Run (or resume) the study described by `spec`; returns its summary. Prints progress and a table.
    A study that ran but has no trial to rank (all failed or diverged) raises a one-line DynconvError.

    `warm_start`: an earlier study (name or study run id, in the same store) whose finished trials seed
    the search (`dynconv.tune.warm_start`); refused with `resume`, and when the searches differ.
    `warm_start_accept`: the groups (comma-separated: model, data, epochs, scheduler) in which the earlier
    study may have trained otherwise than this one; the study run records the difference.

    Holds the study's lock (`dynconv.tune.study_lock`) throughout: a second driver of the same study
    name refuses in one line instead of interleaving its trials with this one's.
    """
    if warm_start and resume:
        raise DynconvError(
            "--warm-start and --resume together: a resumed study's searcher already holds its history "
            "(with the trials that seeded it, if any); drop --warm-start"
        )
    if warm_start_accept and not warm_start:
        raise DynconvError("--warm-start-accept without --warm-start: there is no earlier study to accept")
    set_library_environment(options.get("verbose", False))
    spec = spec.resolved()
    uri = spec.tracking_uri()
    # The world under the study, each in one line before anything is created: the store and Ray's
    # storage (the lock lives there), the cluster at --address and its token, the experiment.
    check_writable_store(uri)
    check_storage_path(spec.storage_uri())
    check_ray_address(address)
    check_experiment(uri, spec.experiment)
    with study_lock(spec.storage_uri(), spec.study):
        if resume:  # a wrong --resume fails before the data cache is built
            exp = client(uri).get_experiment_by_name(spec.experiment)
            earlier = resume_run(spec, uri, exp.experiment_id if exp else None, resume)
            if earlier.info.status == "RUNNING":  # this driver holds the lock: the one that ran it is gone
                print(
                    f"dynconv: study run {earlier.info.run_id} was left RUNNING by a driver that is gone; "
                    "resuming it",
                    file=sys.stderr,
                )
        warm = None
        if warm_start:  # so does a --warm-start that cannot seed this search: no run created yet
            warm = load_warm_start(spec, uri, warm_start, accept=(warm_start_accept or "").split(","))
            print(warm.describe(), flush=True)
        return _run_study(spec, address, resume, warm=warm, **options)


def _run_study(
    spec: JobSpec,
    address: str | None = None,
    resume: bool | str = False,
    *,
    warm: WarmStart | None = None,
    placement_strategy: str = "PACK",
    controller_failure_limit: int = -1,
    evaluate: bool | None = None,
    verbose: bool = False,
    gpu_resource: str = "GPU",
) -> StudyResult:
    """The study itself, run under its lock (see `run_study`), one step after the other.

    `placement_strategy`, `controller_failure_limit` and `gpu_resource` (a custom Ray resource standing in
    for "GPU") exist for tests on CPU machines; users keep the defaults.
    """
    # Ray Tune and the callbacks load first, before the data cache is built (the steps import them again).
    from ray import tune  # noqa: F401

    from dynconv.tune import callbacks  # noqa: F401

    run = _prepare_study(spec, resume, verbose, warm)
    # Whatever ends the driver, the study run and its open child runs are closed with the cause.
    try:
        with closed_on_error(run.uri, run.parent, run.experiment_id), _faults_named(run):
            concurrent = _start_ray(run, address, verbose, gpu_resource)
            context = _trial_context(run, placement_strategy, controller_failure_limit, gpu_resource)
            tuner = _build_or_restore_tuner(run, context, resume, concurrent, verbose)
            grid = _fit_tuner(tuner, run.timings)
            fault = _fault_of(run, grid)
            if fault is not None:  # a full disk, a gone store: every later trial would meet it too
                raise fault
            result = _collect_results(run, grid)
            if result.interrupted:
                _close_interrupted(result)
                return result
            confirm = functools.partial(_confirm, run, context, concurrent, verbose)
            _finish_study(run, result, evaluate, context, confirm)
    finally:
        run.watch.release()  # the space held for closing the runs on a full disk
    if result.interrupted:
        return result
    if result.best is None:
        raise DynconvError(_nothing_ranked(result))
    return result


def _fault_of(run: _StudyRun, grid: Any) -> Fault | None:
    """The fault of the world that stopped the study, if one did: the recorder's (a store the writes
    could not reach for good), or the first trial's that met one (its last result names its kind; a
    DDP trial raised it)."""
    if run.recorder is not None and run.recorder.fault is not None:
        return run.recorder.fault
    for result in grid:
        last = result.metrics or {}
        fault = ended_by_fault(last, str(last.get("trial_id", "?")))
        if fault is None and result.error is not None:
            fault = world_fault(result.error, run.storage)
        if fault is not None:
            return fault
    return None


@contextlib.contextmanager
def _faults_named(run: _StudyRun) -> Iterator[None]:
    """Raise an error of the block that is a fault of the world (the store's file gone, a full disk)
    as that `Fault`, so that the study run's cause and the console say it in one line."""
    try:
        yield
    except Exception as err:
        fault = err if isinstance(err, Fault) else None
        if fault is None and not isinstance(err, DynconvError):
            fault = (run.watch.classify(err) if run.watch else None) or disk_fault(err, run.storage)
        if isinstance(fault, DiskFull) and run.watch is not None:
            run.watch.release()  # room for the writes that close the study's runs with the cause
        if fault is None or fault is err:
            raise
        raise fault from err


def confirm_study(
    study: str,
    top_k: int | None = None,
    seeds: int | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    *,
    verbose: bool = False,
    gpu_resource: str = "GPU",
) -> Any:
    """`dynconv confirm STUDY`: the confirmation phase for a study that ran without one (or with other
    `top_k`/`seeds`), on its recorded spec; returns the `ConfirmOutcome`. Run again after an interruption,
    it continues the same confirmation (its Tune experiment is named for `top_k` and `seeds`)."""
    from dynconv.spec import parse_spec, resolve_tracking_uri
    from dynconv.tracking.artifacts import load_study_spec
    from dynconv.tracking.find import find_study_run
    from dynconv.tracking.layout import TAG_TUNE_PATH
    from dynconv.tune.confirm import ranked_configurations
    from dynconv.tune.parent_run import recorded_trials
    from dynconv.tune.summary import append_confirmation_note

    set_library_environment(verbose)
    uri = resolve_tracking_uri(tracking_uri)
    parent = find_study_run(uri, study)
    recorded = load_study_spec(uri, parent)
    parent = settle_dead_study(uri, parent, recorded.storage_uri())
    if parent.info.status == "RUNNING":
        raise DynconvError(
            f"study {study!r} (run {parent.info.run_id}) is still running: confirm it once it ends"
        )
    data = recorded.to_json_dict()
    data["mlflow"]["tracking_uri"] = uri  # the recorded spec holds it masked
    confirm = data["confirm"]
    confirm.update(enabled=True, top_k=top_k or confirm["top_k"], seeds=seeds or confirm["seeds"])
    spec = parse_spec(data, source=f"study run {parent.info.run_id}")
    trials = recorded_trials(uri, parent, spec)
    ranked_configurations(uri, parent, spec, trials)  # none: one line before Ray starts
    quiet_libraries(verbose)
    with study_lock(spec.storage_uri(), spec.study):
        tune_path = parent.data.tags.get(TAG_TUNE_PATH) or str(Path(spec.storage_uri()) / spec.study)
        run = _StudyRun(
            spec,
            uri,
            spec.storage_uri(),
            prepare_for_spec(spec),
            parent.info.experiment_id,
            parent.info.run_id,
            Path(tune_path).name,
            tune_path,
            {},
        )
        concurrent = _start_ray(run, address, verbose, gpu_resource)
        outcome = _confirm(run, _trial_context(run, "PACK", -1, gpu_resource), concurrent, verbose, trials)
    if outcome.interrupted:
        again = f"dynconv confirm {study} --top-k {spec.confirm.top_k} --seeds {spec.confirm.seeds}"
        print(f"\nConfirmation interrupted. Continue it with: {again}", file=sys.stderr)
    else:
        append_confirmation_note(uri, parent.info.run_id, outcome)
    return outcome


def _nothing_ranked(result: StudyResult) -> str:
    """The one line of a study that ran but has no trial to rank (all failed, diverged or unscored)."""
    ended = result.outcomes() or "no trial ran"
    return (
        f"study {result.study!r} has no trial to rank ({ended}); the trials' lines above say why, and "
        f"the study run {result.parent_run_id} is closed FAILED"
    )


def _prepare_study(
    spec: JobSpec, resume: bool | str, verbose: bool, warm: WarmStart | None = None
) -> _StudyRun:
    """Quiet the libraries, build (or reuse) the data cache, open (or resume) the parent run (tagged with
    the study that seeds its search, `warm`). Nothing of Ray has started yet; `run_study` checked both
    stores."""
    spec = spec.resolved()
    timings: dict[str, float] = {}
    uri, storage = spec.tracking_uri(), spec.storage_uri()
    quiet_libraries(verbose)
    t0 = time.perf_counter()
    data = prepare_for_spec(spec)
    timings["data_seconds"] = time.perf_counter() - t0

    experiment_id = ensure_experiment(uri, spec.experiment)
    parent, run_name, tune_path = open_parent_run(spec, uri, experiment_id, resume, warm)
    run = _StudyRun(spec, uri, storage, data, experiment_id, parent, run_name, tune_path, timings, warm)
    run.watch = StoreWatch(uri, reserve=spec.study)
    return run


def _start_ray(run: _StudyRun, address: str | None, verbose: bool, gpu_resource: str) -> int:
    """Start (or join) Ray, refuse a study the cluster cannot place (closing the parent run FAILED) and
    print the plan. Returns how many trials run at once."""
    t0 = time.perf_counter()
    logs, dashboard = _init_ray(run.spec, address, verbose)
    run.timings["ray_start_seconds"] = time.perf_counter() - t0

    import ray

    # One line (the study run closed FAILED) instead of Ray waiting forever for a trial never placed.
    check_resources_fit(run.spec, cluster_capacity(), gpu_resource)

    concurrent = max_concurrent_trials(run.spec, ray.cluster_resources(), gpu_resource)
    where = {"ray": address or "local", "run": run.parent, "uri": masked(run.uri), "tune_path": run.tune_path}
    where["logs"] = logs
    if dashboard:
        where["dashboard"] = dashboard if "://" in dashboard else f"http://{dashboard}"
    resources = describe_trial_resources(run.spec, concurrent, gpu_resource)
    print(format_plan(run.spec, run.data, resources, ray.cluster_resources(), where), flush=True)
    return concurrent


def _trial_context(
    run: _StudyRun, placement_strategy: str, controller_failure_limit: int, gpu_resource: str
) -> TrialContext:
    """What every trial of this study gets from the driver besides the spec."""
    return TrialContext(
        run_name=run.run_name,
        cache_dir=str(run.data.cache_dir),
        cache_fingerprint=run.data.fingerprint,
        gpu_resource=gpu_resource,
        placement_strategy=placement_strategy,
        controller_failure_limit=controller_failure_limit,
    )


def _build_or_restore_tuner(
    run: _StudyRun, context: TrialContext, resume: bool | str, concurrent: int, verbose: bool
) -> Any:
    """The search's Tuner (`dynconv.tune.phase`): new, with the spec's searcher (seeded with the
    warm start's trials) and scheduler, the callbacks that record the trials in MLflow and print trial
    events; or the one of the study `--resume` continues."""
    from dynconv.tune.callbacks import ConsoleReporter
    from dynconv.tune.recorder import TrialRecorder

    spec = run.spec
    if resume:  # Tune restores its callbacks (the TrialRecorder below) with the rest of its state
        return phase_tuner(spec, context, concurrent, verbose, None)
    run.recorder = TrialRecorder(run.uri, run.experiment_id, run.parent, spec, run.data.num_classes)
    console = ConsoleReporter.for_spec(spec, list(spec.search.space), verbose)
    new = NewPhase(
        param_space(spec),
        build_searcher(spec, run.warm),
        build_scheduler(spec),
        spec.search.num_samples,
        run.recorder,
        console,
    )
    return phase_tuner(spec, context, concurrent, verbose, new)


def _fit_tuner(tuner: Any, timings: dict[str, float]) -> Any:
    """Run the trials (timed as `tune_seconds`); SIGTERM stops them the way Ctrl-C does. Returns the grid."""
    t0 = time.perf_counter()
    grid = fit_phase(tuner)
    timings["tune_seconds"] = time.perf_counter() - t0
    return grid


def _collect_results(run: _StudyRun, grid: Any) -> StudyResult:
    """The StudyResult of a finished or interrupted fit, its table printed."""
    runs = trial_run_ids(run.uri, run.experiment_id, run.parent)
    incomplete = incomplete_trials(run.uri, run.experiment_id, run.parent)
    trials = summarise_trials(grid, run.spec, runs, incomplete)
    interrupted = any(t.status == "UNFINISHED" for t in trials)
    result = StudyResult(
        study=run.spec.study,
        run_name=run.run_name,
        parent_run_id=run.parent,
        experiment_id=run.experiment_id,
        tracking_uri=run.uri,
        tune_path=run.tune_path,
        interrupted=interrupted,
        trials=trials,
        timings=run.timings,
    )
    record_trial_table(run.uri, run.parent, trials, run.spec)
    print("\n" + format_summary(result, run.spec, limit=end_table_limit(len(trials))))
    return result


def _close_interrupted(result: StudyResult) -> None:
    """An interrupted study: close its parent run KILLED (the recorder closed the trials' runs) and say
    how to continue it."""
    end_run(result.tracking_uri, result.parent_run_id, "KILLED")
    tune_path = result.tune_path
    print(
        f"\nStudy interrupted. Continue it with: dynconv tune <spec> --resume  (Tune state: {tune_path})",
        file=sys.stderr,
    )


def _finish_study(
    run: _StudyRun, result: StudyResult, evaluate: bool | None, context: TrialContext, confirm: Any
) -> None:
    """A study that ran to its end: record the best trial by the study's ranking (and the Pareto set),
    evaluate when asked, `confirm()` its best over seeds when the spec asks, describe the study on its
    parent run, log the timings, close the run and say where to browse it. Checkpoints are evaluated
    where the trials train (`dynconv.tune.remote_evaluation`).

    The run is FINISHED only when all it claims is there: FAILED when no trial scored, and FAILED when
    its evaluation, confirmation or description failed, with what is missing as the first line of its
    description and its `dynconv.failure` tag; then one line says so (`DynconvError`, a non-zero exit).
    An interrupted confirmation closes the run KILLED instead (`--resume` continues it)."""
    from dynconv.tune.summary import describe_study_run, mark_incomplete

    spec, uri, parent = run.spec, run.uri, run.parent
    best = result.best
    if best is not None:
        record_best_trial(uri, parent, best, Ranking.for_spec(spec))
    if spec.search.multi_objective:
        _record_pareto(result, spec)
    missing: list[str] = []
    evaluations: list = []
    if evaluate if evaluate is not None else spec.evaluate.enabled:
        evaluations = _evaluate(run, result, context, missing)
    if spec.confirm.enabled and best is not None:
        try:
            result.confirmation = confirm(result.trials)
        except DynconvError as err:  # the search and its record stand; `dynconv confirm` retries later
            if isinstance(err, Fault) and not err.transient:
                raise  # but the world under the study failed for good: it stops on that
            missing.append(f"confirmation ({one_line(err)}; retry: dynconv confirm {spec.study})")
        if result.confirmation is not None and result.confirmation.interrupted:
            result.interrupted = True
            _close_interrupted(result)
            return
    problem = describe_study_run(spec, result, evaluations)
    if problem is not None:
        missing.append(f"description and plots ({problem})")
    log_metrics(uri, parent, run.timings)
    if missing:
        mark_incomplete(uri, parent, missing)
    end_run(uri, parent, "FINISHED" if best is not None and not missing else "FAILED")
    print(
        f"\nBrowse it with: dynconv ui --tracking-uri {masked(uri)}   (then open "
        f"{runs_page_url('http://127.0.0.1:5000', run.experiment_id)}; study run {parent})"
    )
    if missing and best is not None:
        raise DynconvError(
            f"study {spec.study!r} ran, but its record is incomplete: {'; '.join(missing)}; the study "
            f"run {parent} is closed FAILED"
        )


def _evaluate(run: _StudyRun, result: StudyResult, context: TrialContext, missing: list[str]) -> list:
    """The end-of-study evaluation, timed; a failure (one line, from `evaluate_study`) goes to
    `missing`, never costs the study: its trials are in MLflow already."""
    from dynconv.tune.remote_evaluation import evaluator_for
    from dynconv.tune.study_evaluation import evaluate_study

    t0 = time.perf_counter()
    evaluations, problem = evaluate_study(run.spec, result, evaluator_for(run.spec, context, run.data))
    run.timings["evaluate_seconds"] = time.perf_counter() - t0
    if problem is not None:
        missing.append(f"evaluation ({problem}; retry with: dynconv evaluate {run.spec.study})")
    return evaluations


def _confirm(run: _StudyRun, context: TrialContext, concurrent: int, verbose: bool, trials: list):
    """The confirmation phase of this study (`dynconv.tune.confirm`), on the same Ray and resources, of
    the best of its ranked `trials` (`TrialSummary`s)."""
    from dynconv.tracking.find import get_run
    from dynconv.tune.confirm import ConfirmPhase, chosen_trials, ranked_configurations, run_confirmation

    spec = run.spec
    ranked = ranked_configurations(run.uri, get_run(run.uri, run.parent), spec, trials)
    phase = ConfirmPhase(
        spec,
        run.uri,
        run.experiment_id,
        run.parent,
        run.run_name,
        run.data,
        context,
        concurrent,
        verbose,
        run.timings,
        ranked,
    )
    return run_confirmation(phase, chosen_trials(spec, ranked))


def _record_pareto(result: StudyResult, spec: JobSpec) -> None:
    """Tag the parent run with the Pareto trials (Tune ids and MLflow run ids, in rank order) and print
    them."""
    front = result.pareto
    set_tags(
        result.tracking_uri,
        result.parent_run_id,
        {
            TAG_PARETO_TRIALS: ",".join(t.trial_id for t in front),
            TAG_PARETO_RUN_IDS: ",".join(t.run_id or "" for t in front),
        },
    )
    trials = ", ".join(t.trial_id for t in front) or "empty"
    print(f"\n{Ranking.for_spec(spec).describe()}, FIFO scheduler: {trials}")
