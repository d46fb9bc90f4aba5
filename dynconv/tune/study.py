"""`dynconv tune`: prepare data and tracking, run the Tuner, summarise, evaluate.

The study driver is the only process that talks to Tune. It writes the MLflow parent run; trials write
their own child runs (see `dynconv.tune.trial`), and the `TrialRunCloser` callback closes them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dynconv import tracking
from dynconv.datasets import prepare_for_spec
from dynconv.errors import DynconvError
from dynconv.names import one_study_run
from dynconv.spec import JobSpec
from dynconv.spec_checks import check_resources_fit, spec_diff
from dynconv.store_access import check_uri_scheme
from dynconv.tune.capacity import cluster_capacity
from dynconv.tune.console import format_plan, quiet_libraries, ray_init_kwargs, ray_logs_dir
from dynconv.tune.incomplete import check_mlflow_runs
from dynconv.tune.pareto import TAG_PARETO_RUN_IDS, TAG_PARETO_TRIALS, pareto_front
from dynconv.tune.resources import describe_trial_resources
from dynconv.tune.search import (
    build_scheduler,
    build_searcher,
    describe_space,
    max_concurrent_trials,
    param_space,
    tune_metric_mode,
)
from dynconv.tune.study_lock import study_lock
from dynconv.tune.trial import run_trial, trains_in_trial_actor, trial_resources, tune_max_failures

TUNE_STATE_PERIOD_S = 2
"""Seconds between saves of Tune's experiment state: what a SIGKILLed driver can lose at most."""


@dataclass
class TrialSummary:
    """One row of the end-of-study table."""

    trial_id: str
    params: dict[str, Any]
    best_val_acc: float | None
    epochs: int
    status: str
    run_id: str | None
    objectives: dict[str, float | None] = field(default_factory=dict)  # multi-objective: last reported
    pareto: bool = False


@dataclass
class StudyResult:
    """What a study produced: where to find it and how its trials ended."""

    study: str
    run_name: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    tune_path: str
    interrupted: bool
    trials: list[TrialSummary] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    incomplete_runs: list[str] = field(default_factory=list)

    @property
    def best(self) -> TrialSummary | None:
        """The trial best on the ranked metric; in a multi-objective study, the Pareto trial best on
        the first objective."""
        pool = self.pareto or self.trials
        scored = [t for t in pool if t.best_val_acc is not None]
        return max(scored, key=lambda t: t.best_val_acc) if scored else None

    @property
    def pareto(self) -> list[TrialSummary]:
        """The Pareto set of a multi-objective study (empty for a single objective)."""
        return [t for t in self.trials if t.pareto]


def _init_ray(address: str | None, tracking_uri: str, verbose: bool = False) -> None:
    """Connect to `address` (a cluster) or start a local Ray; workers get the tracking URI in their env."""
    import ray

    # Tune saves its experiment state at most every TUNE_GLOBAL_CHECKPOINT_S ("auto": 10 s or more); a
    # SIGKILLed driver loses what happened since, so save often (small JSON files; override by env).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(TUNE_STATE_PERIOD_S))
    if ray.is_initialized():
        return
    ray.init(
        address=address,
        runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri}},
        **ray_init_kwargs(verbose),
    )


def _open_parent_run(spec: JobSpec, uri: str, experiment_id: str, resume: bool | str) -> tuple[str, str, str]:
    """(parent_run_id, run_name, tune_path): a new study run, or the one of this study to resume.

    `resume` is True (the study's only run) or a study run id (when the name matches several runs).
    """
    if resume:
        run = _resume_run(spec, uri, experiment_id, resume)
        _refuse_changed_spec(spec, uri, run.info.run_id)
        tune_path = run.data.tags.get(tracking.TAG_TUNE_PATH, "")
        if not Path(tune_path).exists() and "://" not in tune_path:
            raise DynconvError(f"--resume: the study's Tune state {tune_path!r} is gone; start a new study")
        tracking.client(uri).update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, Path(tune_path).name, tune_path
    run_name = f"{spec.study}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"  # never collides
    tune_path = f"{spec.storage_uri().rstrip('/')}/{run_name}"
    params = {**describe_space(spec), "model": spec.model.name, "num_samples": spec.search.num_samples}
    parent = tracking.start_study_run(uri, experiment_id, spec.study, params)
    tracking.set_tags(uri, parent, {tracking.TAG_TUNE_PATH: tune_path, "dynconv.run_name": run_name})
    with tempfile.TemporaryDirectory(prefix="dynconv_spec_") as tmp:
        spec_file = Path(tmp) / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(spec.to_json_dict(), sort_keys=False))
        tracking.log_artifact(uri, parent, spec_file)
    return parent, run_name, tune_path


def _refuse_changed_spec(spec: JobSpec, uri: str, run_id: str) -> None:
    """`--resume` continues the same study: a spec changed in anything but search.num_samples is refused
    (a mixed study would compare trials trained differently). Compared with the parent run's spec.yaml."""
    with tempfile.TemporaryDirectory(prefix="dynconv_spec_") as tmp:
        try:
            path = tracking.client(uri).download_artifacts(run_id, "spec.yaml", tmp)
            logged = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DynconvError(f"--resume: study run {run_id} has no readable spec.yaml ({first})") from None
    changed = spec_diff(logged, spec.to_json_dict())
    if changed:
        raise DynconvError(
            f"--resume: the spec changed since the study started ({', '.join(changed)}); only "
            "search.num_samples may change - undo the change, or start a fresh study: run without --resume"
        )


def _resume_run(spec: JobSpec, uri: str, experiment_id: str | None, resume: bool | str) -> Any:
    """The one study run `--resume` [RUN_ID] means, or a one-line error (none, or several by that name)."""
    runs = (
        []
        if experiment_id is None
        else tracking.find_runs(uri, experiment_id, role="study", study=spec.study)
    )
    if isinstance(resume, str):
        runs = [r for r in runs if r.info.run_id == resume]
    if not runs:
        which = f" with run id {resume}" if isinstance(resume, str) else ""
        raise DynconvError(
            f"--resume: no earlier study named {spec.study!r}{which} in experiment {spec.experiment!r}"
        )
    return one_study_run(runs, spec.study, "choose one with --resume RUN_ID")


def _build_tuner(
    spec: JobSpec, trainable: Any, run_name: str, callbacks: list, concurrent: int, verbose: bool = False
):
    from ray import tune

    metric, mode = tune_metric_mode(spec)
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            search_alg=build_searcher(spec),
            scheduler=build_scheduler(spec),
            num_samples=spec.search.num_samples,
            max_concurrent_trials=concurrent,
            # A trial that trains in its actor leaves torch, MLflow and the model code imported there for
            # the next trial; a TorchTrainer trial's actor is only a thin driver.
            reuse_actors=trains_in_trial_actor(spec),
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=spec.storage_uri(),
            failure_config=tune.FailureConfig(max_failures=tune_max_failures(spec)),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.failure.keep_checkpoints),
            callbacks=callbacks,
            verbose=1 if verbose else 0,  # quiet: the ConsoleReporter callback prints the trial events
        ),
    )


def _summarise(grid: Any, spec: JobSpec, uri: str, experiment_id: str, parent: str) -> list[TrialSummary]:
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


def format_summary(result: StudyResult, spec: JobSpec) -> str:
    """The end-of-study table: trial, searched values, best val acc, epochs, outcome, MLflow run."""
    keys = list(spec.search.space)
    objectives = list(spec.search.objectives or {})  # multi-objective: last values and a Pareto mark
    extra = [*(f"last {m}" for m in objectives), "pareto"] if objectives else []
    head = ["trial", *keys, "best val acc", *extra, "epochs", "outcome", "mlflow run"]
    body = []
    for t in sorted(result.trials, key=lambda t: -(t.best_val_acc or -1)):
        vals = [
            f"{t.params.get(k):.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k))
            for k in keys
        ]
        acc = "-" if t.best_val_acc is None else f"{t.best_val_acc:.4f}"
        last = [_fmt(t.objectives.get(m)) for m in objectives] + (
            ["*" if t.pareto else ""] if objectives else []
        )
        body.append([t.trial_id, *vals, acc, *last, str(t.epochs), t.status, t.run_id or "-"])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run_study(
    spec: JobSpec, address: str | None = None, resume: bool | str = False, **options: Any
) -> StudyResult:
    """Run (or resume) the study described by `spec`; returns its summary. Prints progress and a table.

    Holds the study's lock (`dynconv.tune.study_lock`) throughout: a second driver of the same study
    name refuses in one line instead of interleaving its trials with this one's.
    """
    spec = spec.resolved()
    uri = spec.tracking_uri()
    check_uri_scheme(uri)
    tracking.check_tracking_store(uri)  # before anything is created (the lock lives in the storage path)
    tracking.check_storage_path(spec.storage_uri())
    with study_lock(spec.storage_uri(), spec.study):
        if resume:  # a wrong --resume fails before the data cache is built
            exp = tracking.client(uri).get_experiment_by_name(spec.experiment)
            _resume_run(spec, uri, exp.experiment_id if exp else None, resume)
        return _run_study(spec, address, resume, **options)


def _run_study(
    spec: JobSpec,
    address: str | None = None,
    resume: bool | str = False,
    *,
    placement_strategy: str = "PACK",
    controller_failure_limit: int = -1,
    evaluate: bool | None = None,
    verbose: bool = False,
    gpu_resource: str = "GPU",
) -> StudyResult:
    """The study itself, run under its lock (see `run_study`).

    `placement_strategy`, `controller_failure_limit` and `gpu_resource` (a custom Ray resource standing in
    for "GPU") exist for tests on CPU machines; users keep the defaults.
    """
    from ray import tune

    from dynconv.tune.callbacks import ConsoleReporter, TrialRunCloser

    spec = spec.resolved()
    timings: dict[str, float] = {}
    uri, storage = spec.tracking_uri(), spec.storage_uri()
    tracking.check_tracking_store(uri)
    tracking.check_storage_path(storage)

    quiet_libraries(verbose)
    t0 = time.perf_counter()
    data = prepare_for_spec(spec)
    timings["data_seconds"] = time.perf_counter() - t0

    experiment_id = tracking.ensure_experiment(uri, spec.experiment)
    parent, run_name, tune_path = _open_parent_run(spec, uri, experiment_id, resume)

    t0 = time.perf_counter()
    _init_ray(address, uri, verbose)
    timings["ray_start_seconds"] = time.perf_counter() - t0

    import ray

    try:  # one line instead of Ray waiting forever for a trial that can never be placed
        check_resources_fit(spec, cluster_capacity(), gpu_resource)
    except DynconvError:
        tracking.end_run(uri, parent, "FAILED")
        raise

    concurrent = max_concurrent_trials(spec, ray.cluster_resources(), gpu_resource)
    where = {"ray": address or "local", "run": parent, "uri": uri, "tune_path": tune_path}
    where["logs"] = ray_logs_dir(address)
    resources = describe_trial_resources(spec, concurrent, gpu_resource)
    print(format_plan(spec, data, resources, ray.cluster_resources(), where), flush=True)

    study_ctx = {
        "tracking_uri": uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent,
        "run_name": run_name,
        "cache_dir": str(data.cache_dir),
        "cache_fingerprint": data.fingerprint,
        "num_classes": data.num_classes,
        "placement_strategy": placement_strategy,
        "controller_failure_limit": controller_failure_limit,
        "gpu_resource": gpu_resource,
    }
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec_json=spec.to_json_dict(), study=study_ctx),
        trial_resources(spec, gpu_resource),
    )
    if resume:  # Tune restores its callbacks (the TrialRunCloser below) with the rest of its state
        tuner = tune.Tuner.restore(
            tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        callbacks = [
            TrialRunCloser(uri, experiment_id, parent, spec.train.epochs),
            ConsoleReporter(
                spec.train.epochs, spec.search.tune_metric, spec.search.tune_mode, list(spec.search.space)
            ),
        ]
        tuner = _build_tuner(spec, trainable, run_name, callbacks, concurrent, verbose)

    t0 = time.perf_counter()
    with _sigterm_as_sigint():
        grid = tuner.fit()
    timings["tune_seconds"] = time.perf_counter() - t0

    trials = _summarise(grid, spec, uri, experiment_id, parent)
    interrupted = any(t.status == "UNFINISHED" for t in trials)
    result = StudyResult(
        spec.study, run_name, parent, experiment_id, uri, tune_path, interrupted, trials, timings
    )
    print("\n" + format_summary(result, spec))
    result.incomplete_runs = check_mlflow_runs(uri, storage, experiment_id, parent, trials, resume)

    if interrupted:
        for run in tracking.find_runs(uri, experiment_id, role="trial"):
            if run.data.tags.get(tracking.TAG_PARENT) == parent and run.info.status == "RUNNING":
                tracking.end_run(uri, run.info.run_id, "KILLED")
        tracking.end_run(uri, parent, "KILLED")
        print(
            f"\nStudy interrupted. Continue it with: dynconv tune <spec> --resume  (Tune state: {tune_path})"
        )
        return result

    best = result.best
    if best is not None:
        tracking.log_metrics(uri, parent, {"best_val_acc": best.best_val_acc})
        tracking.set_tags(
            uri, parent, {"dynconv.best_trial_id": best.trial_id, "dynconv.best_run_id": best.run_id}
        )
    if spec.search.multi_objective:
        _record_pareto(result, spec)
    evaluations: list = []
    if evaluate if evaluate is not None else spec.evaluate.enabled:
        t0 = time.perf_counter()
        from dynconv.evaluation.study import evaluate_study

        evaluations = evaluate_study(spec, result)
        timings["evaluate_seconds"] = time.perf_counter() - t0
    from dynconv.study_summary import describe_study_run

    describe_study_run(spec, result, evaluations)
    tracking.log_metrics(uri, parent, timings)
    tracking.end_run(uri, parent, "FINISHED" if best is not None else "FAILED")
    print(
        f"\nBrowse it with: dynconv ui --tracking-uri {uri}   (then open "
        f"{tracking.runs_page_url('http://127.0.0.1:5000', experiment_id)}; study run {parent})"
    )
    return result


def _record_pareto(result: StudyResult, spec: JobSpec) -> None:
    """Tag the parent run with the Pareto trials (Tune ids and MLflow run ids) and print them."""
    front = result.pareto
    tracking.set_tags(
        result.tracking_uri,
        result.parent_run_id,
        {
            TAG_PARETO_TRIALS: ",".join(t.trial_id for t in front),
            TAG_PARETO_RUN_IDS: ",".join(t.run_id or "" for t in front),
        },
    )
    names = " and ".join(f"{m} ({mode})" for m, mode in (spec.search.objectives or {}).items())
    print(f"\nPareto set on {names}, FIFO scheduler: {', '.join(t.trial_id for t in front) or 'empty'}")


@contextlib.contextmanager
def _sigterm_as_sigint() -> Iterator[None]:
    """Let SIGTERM (a scheduler or `kill`) stop the study the way Ctrl-C does: Tune saves its state first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
