"""A Tune phase of a study, the search or a confirmation: one builder of its Tuner, new or restored.

Both phases train the same trainable (`dynconv.tune.trial.run_trial` with the study's spec and its
`TrialContext`, holding a trial's resources), under the same storage, failure and checkpoint settings
(`dynconv.tune.search.run_config`), recorded by a `TrialRecorder` whose stopper ends the phase on a
fault of the world, printed by a `ConsoleReporter`. What differs is what a new phase searches
(`NewPhase`): the study's searcher and scheduler, or a confirmation's fixed points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynconv.spec import JobSpec
from dynconv.tune.trial import TrialContext


@dataclass(frozen=True)
class NewPhase:
    """What a phase that starts (is not restored) searches, and who records and prints it."""

    param_space: dict[str, Any]
    search_alg: Any  # a Tune Searcher (the study's Optuna search, a confirmation's fixed points)
    scheduler: Any  # a Tune TrialScheduler, or None for FIFO
    num_samples: int
    recorder: Any  # dynconv.tune.recorder.TrialRecorder
    console: Any  # dynconv.tune.callbacks.ConsoleReporter


def phase_path(spec: JobSpec, name: str) -> str:
    """Where the Tune experiment `name` of a study keeps its state (local path or storage URI)."""
    return f"{spec.storage_uri().rstrip('/')}/{name}"


def phase_tuner(
    spec: JobSpec, context: TrialContext, concurrent: int, verbose: bool, new: NewPhase | None
) -> Any:
    """The Tuner of the phase `context.run_name` names: `new` (with `concurrent` trials at once), or,
    when `new` is None, the one saved there, restored to continue (Tune restores its callbacks too)."""
    from ray import tune

    from dynconv.tune.parent_run import recorded_spec
    from dynconv.tune.resources import trains_in_trial_actor, trial_resources
    from dynconv.tune.search import run_config, tune_metric_mode
    from dynconv.tune.trial import run_trial

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec_json=recorded_spec(spec), context=context),
        trial_resources(spec, context.gpu_resource),
    )
    if new is None:
        path = phase_path(spec, context.run_name)
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    metric, mode = tune_metric_mode(spec)
    return tune.Tuner(
        trainable,
        param_space=new.param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            search_alg=new.search_alg,
            scheduler=new.scheduler,
            num_samples=new.num_samples,
            max_concurrent_trials=concurrent,
            # A trial that trains in its actor leaves torch and the model code imported there for the
            # next trial; a TorchTrainer trial's actor is only a thin driver.
            reuse_actors=trains_in_trial_actor(spec),
        ),
        run_config=run_config(
            spec, context.run_name, [new.recorder, new.console], verbose, new.recorder.stopper()
        ),
    )


def fit_phase(tuner: Any) -> Any:
    """Run the phase's trials (SIGTERM stops them the way Ctrl-C does); its ResultGrid."""
    from dynconv.tune.console import sigterm_as_sigint

    with sigterm_as_sigint():
        return tuner.fit()
