"""`dynconv tune`: prepare data and tracking, run the Tuner, summarise, evaluate.

The study driver is the only process that talks to Tune. It writes the MLflow parent run; trials write
their own child runs (see `dynconv.tune.trial`), and the `TrialRunCloser` callback closes them.
"""

from __future__ import annotations

import contextlib
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
from dynconv.spec import JobSpec
from dynconv.tune.resources import describe_trial_resources
from dynconv.tune.search import (
    build_scheduler,
    build_searcher,
    describe_space,
    max_concurrent_trials,
    param_space,
    trial_resources,
)
from dynconv.tune.trial import run_trial


@dataclass
class TrialSummary:
    """One row of the end-of-study table."""

    trial_id: str
    params: dict[str, Any]
    best_val_acc: float | None
    epochs: int
    status: str
    run_id: str | None


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

    @property
    def best(self) -> TrialSummary | None:
        scored = [t for t in self.trials if t.best_val_acc is not None]
        return max(scored, key=lambda t: t.best_val_acc) if scored else None


def _init_ray(address: str | None, tracking_uri: str) -> None:
    """Connect to `address` (a cluster) or start a local Ray; workers get the tracking URI in their env."""
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address=address,
        runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri}},
        logging_level="WARNING",
        log_to_driver=True,
    )


def _open_parent_run(spec: JobSpec, uri: str, experiment_id: str, resume: bool) -> tuple[str, str, str]:
    """(parent_run_id, run_name, tune_path): a new study run, or the latest one of this study to resume."""
    if resume:
        runs = tracking.find_runs(uri, experiment_id, role="study", study=spec.study)
        if not runs:
            raise DynconvError(
                f"--resume: no earlier study named {spec.study!r} in experiment {spec.experiment!r}"
            )
        run = runs[0]
        tune_path = run.data.tags.get(tracking.TAG_TUNE_PATH, "")
        if not Path(tune_path).exists() and "://" not in tune_path:
            raise DynconvError(f"--resume: the study's Tune state {tune_path!r} is gone; start a new study")
        tracking.client(uri).update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, Path(tune_path).name, tune_path
    run_name = f"{spec.study}-{time.strftime('%Y%m%d-%H%M%S')}"
    tune_path = f"{spec.storage_uri().rstrip('/')}/{run_name}"
    params = {**describe_space(spec), "model": spec.model.name, "num_samples": spec.search.num_samples}
    parent = tracking.start_study_run(uri, experiment_id, spec.study, params)
    tracking.set_tags(uri, parent, {tracking.TAG_TUNE_PATH: tune_path, "dynconv.run_name": run_name})
    spec_file = Path(tempfile.mkdtemp(prefix="dynconv_spec_")) / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.to_json_dict(), sort_keys=False))
    tracking.log_artifact(uri, parent, spec_file)
    return parent, run_name, tune_path


def _build_tuner(spec: JobSpec, trainable: Any, run_name: str, callbacks: list, concurrent: int):
    from ray import tune

    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.search.metric,
            mode=spec.search.mode,
            search_alg=build_searcher(spec),
            scheduler=build_scheduler(spec),
            num_samples=spec.search.num_samples,
            max_concurrent_trials=concurrent,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=spec.storage_uri(),
            failure_config=tune.FailureConfig(max_failures=spec.failure.trial_max_failures),
            callbacks=callbacks,
            verbose=1,
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
        best = float(df[spec.search.metric].max()) if df is not None and spec.search.metric in df else None
        epochs = int(df["epoch"].max()) if df is not None and "epoch" in df else 0
        if result.error is not None:
            status = "FAILED"
        elif epochs >= spec.train.epochs:
            status = "FINISHED"
        else:
            status = "STOPPED" if metrics.get("done") else "UNFINISHED"
        params = {k: result.config.get(k) for k in spec.search.space}
        rows.append(TrialSummary(trial_id, params, best, epochs, status, runs.get(trial_id)))
    return rows


def format_summary(result: StudyResult, spec: JobSpec) -> str:
    """The end-of-study table: trial, searched values, best val acc, epochs, outcome, MLflow run."""
    keys = list(spec.search.space)
    head = ["trial", *keys, "best val acc", "epochs", "outcome", "mlflow run"]
    body = []
    for t in sorted(result.trials, key=lambda t: -(t.best_val_acc or -1)):
        vals = [
            f"{t.params.get(k):.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k))
            for k in keys
        ]
        acc = "-" if t.best_val_acc is None else f"{t.best_val_acc:.4f}"
        body.append([t.trial_id, *vals, acc, str(t.epochs), t.status, t.run_id or "-"])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_study(
    spec: JobSpec,
    address: str | None = None,
    resume: bool = False,
    *,
    placement_strategy: str = "PACK",
    controller_failure_limit: int = -1,
    evaluate: bool | None = None,
    gpu_resource: str = "GPU",
) -> StudyResult:
    """Run (or resume) the study described by `spec`; returns its summary. Prints progress and a table.

    `placement_strategy`, `controller_failure_limit` and `gpu_resource` (a custom Ray resource standing in
    for "GPU") exist for tests on CPU machines; users keep the defaults.
    """
    from ray import tune

    from dynconv.tune.callbacks import TrialRunCloser

    spec = spec.resolved()
    timings: dict[str, float] = {}
    uri, storage = spec.tracking_uri(), spec.storage_uri()
    tracking.check_tracking_store(uri)
    tracking.check_storage_path(storage)

    t0 = time.perf_counter()
    data = prepare_for_spec(spec)
    timings["data_seconds"] = time.perf_counter() - t0

    experiment_id = tracking.ensure_experiment(uri, spec.experiment)
    parent, run_name, tune_path = _open_parent_run(spec, uri, experiment_id, resume)

    t0 = time.perf_counter()
    _init_ray(address, uri)
    timings["ray_start_seconds"] = time.perf_counter() - t0

    import ray

    study_ctx = {
        "tracking_uri": uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent,
        "run_name": run_name,
        "cache_dir": str(data.cache_dir),
        "num_classes": data.num_classes,
        "placement_strategy": placement_strategy,
        "controller_failure_limit": controller_failure_limit,
        "gpu_resource": gpu_resource,
    }
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec_json=spec.to_json_dict(), study=study_ctx), trial_resources(spec)
    )
    if resume:  # Tune restores its callbacks (the TrialRunCloser below) with the rest of its state
        tuner = tune.Tuner.restore(
            tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        concurrent = max_concurrent_trials(spec, ray.cluster_resources(), gpu_resource)
        print(describe_trial_resources(spec, concurrent, gpu_resource))
        callbacks = [TrialRunCloser(uri, experiment_id, parent, spec.train.epochs)]
        tuner = _build_tuner(spec, trainable, run_name, callbacks, concurrent)

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
    if evaluate if evaluate is not None else spec.evaluate.enabled:
        t0 = time.perf_counter()
        from dynconv.evaluate import evaluate_study

        evaluate_study(spec, result)
        timings["evaluate_seconds"] = time.perf_counter() - t0
    tracking.log_metrics(uri, parent, timings)
    tracking.end_run(uri, parent, "FINISHED" if best is not None else "FAILED")
    print(f"\nMLflow: experiment {spec.experiment!r}, study run {parent} in {uri}")
    print(f"Browse it with: dynconv ui --tracking-uri {uri}   (then open http://127.0.0.1:5000)")
    return result


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
