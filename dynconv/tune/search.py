"""Spec → Ray Tune objects, in one place: the search space, the searcher and the trial scheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynconv.spec import JobSpec
from dynconv.spec.metrics import diverged, ended_by_error
from dynconv.spec.sections import ParamSpec
from dynconv.tune.trial import tune_max_failures

if TYPE_CHECKING:
    from dynconv.tune.warm_start import WarmStart


def tune_domain(param: ParamSpec) -> Any:
    """The Ray Tune sampling domain for one searched parameter."""
    from ray import tune

    if param.type == "loguniform":
        return tune.loguniform(param.low, param.high)
    if param.type == "uniform":
        return tune.uniform(param.low, param.high)
    return tune.choice(list(param.values or []))


def param_space(spec: JobSpec) -> dict[str, Any]:
    """Searched `train.*` fields → Tune domains; keys are train field names (lr, augment_strength, ...)."""
    return {key: tune_domain(p) for key, p in spec.search.space.items()}


def describe_space(spec: JobSpec) -> dict[str, str]:
    """Human-readable search space and what it optimises, logged as params of the study's parent run."""
    out = {}
    for key, p in spec.search.space.items():
        rng = f"{p.values}" if p.type == "choice" else f"[{p.low:g}, {p.high:g}]"
        out[f"space.{key}"] = f"{p.type}{rng}"
    if spec.search.objectives is not None:
        out["search.objectives"] = ", ".join(f"{m}:{mode}" for m, mode in spec.search.objectives.items())
    elif isinstance(spec.search.metric, dict):
        out["search.metric"] = " + ".join(f"{w:g}*{m}" for m, w in spec.search.metric.items())
    return out


def _sampler(spec: JobSpec, warm: WarmStart | None = None):
    """The spec's Optuna sampler, seeded with `search.seed`; a warm-started search with a seed of its own
    (`WarmStart.sampler_seed`), so that it does not draw the seeding study's configurations again."""
    import optuna

    seed = spec.search.seed if warm is None else warm.sampler_seed(spec.search.seed)
    if spec.search.algorithm == "tpe":  # TPE handles several objectives too (Optuna's MOTPE)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.search.tpe_startup_trials)
    if spec.search.algorithm == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def build_searcher(spec: JobSpec, warm: WarmStart | None = None):
    """Seeded Optuna TPE / NSGA-II (or random, the benchmark's baseline) through Ray Tune's OptunaSearch.

    Single objective: metric and mode reach the searcher from `TuneConfig` (`tune_metric_mode`). Several
    objectives: the searcher itself gets the lists, and `TuneConfig` none (Ray's rule for OptunaSearch).
    `warm`: an earlier study's trials (`dynconv.tune.warm_start`), given to OptunaSearch as its
    `points_to_evaluate` with their `evaluated_rewards`: Optuna holds them as COMPLETE trials before its
    first suggestion, and Tune runs none of them again; its sampler draws from a seed of its own.
    """
    from dynconv.tune.searcher import EpochOptunaSearch

    objectives, epochs = spec.search.objectives, spec.train.epochs
    seeds: dict[str, Any] = {}
    if warm is not None:
        seeds = {"points_to_evaluate": list(warm.points), "evaluated_rewards": list(warm.rewards)}
    sampler = _sampler(spec, warm)
    if objectives is not None:
        metric, mode = list(objectives), list(objectives.values())
        return EpochOptunaSearch(sampler=sampler, epochs=epochs, metric=metric, mode=mode, **seeds)
    return EpochOptunaSearch(sampler=sampler, epochs=epochs, **seeds)


def stop_diverged(trial_id: str, result: dict[str, Any]) -> bool:
    """Tune's stopper (`RunConfig(stop=...)`): stop a trial at the first epoch whose loss is not finite
    (`dynconv.spec.metrics.diverged`); the recorder, the console and the searcher then call it diverged."""
    return diverged(result) is not None or ended_by_error(result) is not None


def tune_metric_mode(spec: JobSpec) -> tuple[str | None, str | None]:
    """`TuneConfig`'s metric and mode: the ranked metric (`objective` for a weighted mix), or
    (None, None) for a multi-objective search, whose metrics only the searcher knows."""
    if spec.search.multi_objective:
        return None, None
    return spec.search.tune_metric, spec.search.tune_mode


def build_scheduler(spec: JobSpec):
    """ASHA on the reported `epoch` (monotonic across restarts, unlike `training_iteration`), or FIFO.

    A multi-objective search always has FIFO: the spec refuses ASHA there, since ASHA ranks on one metric.
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.name == "none" or spec.search.multi_objective:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",
        max_t=spec.train.epochs,
        grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor,
    )


def max_concurrent_trials(spec: JobSpec, cluster: dict[str, float], gpu_resource: str = "GPU") -> int:
    """How many trials fit at once: driver + workers per trial against the cluster's CPUs and GPUs.

    A fractional `gpus_per_worker` counts as such: at 0.25, four one-worker trials fit on one GPU.
    """
    from dynconv.tune.resources import trial_demand

    if spec.search.max_concurrent:
        return spec.search.max_concurrent
    demand = trial_demand(spec, gpu_resource)
    fits = int(cluster.get("CPU", 1) // demand.pop("CPU"))
    for (
        name,
        need,
    ) in demand.items():  # a small tolerance: Ray keeps resources in 1e-4 units, 3 x (1/3) fit in 1
        fits = min(fits, int(cluster.get(name, 0) / need + 1e-6))
    return max(1, min(fits, spec.search.num_samples))


def run_config(spec: JobSpec, name: str, callbacks: list, verbose: bool = False, stopper: Any = None):
    """Tune's `RunConfig` of a study phase (the search, the confirmation): its storage, failure and
    checkpoint settings, the callbacks that record and print it, the divergence stopper, and `stopper`
    (the recorder's, which ends the phase on a fault of the world: `TrialRecorder.stopper`)."""
    from ray import tune
    from ray.tune.stopper import CombinedStopper, FunctionStopper

    stop = stop_diverged if stopper is None else CombinedStopper(FunctionStopper(stop_diverged), stopper)

    return tune.RunConfig(
        name=name,
        storage_path=spec.storage_uri(),
        failure_config=tune.FailureConfig(max_failures=tune_max_failures(spec)),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.failure.keep_checkpoints),
        callbacks=callbacks,
        stop=stop,
        verbose=1 if verbose else 0,  # quiet: the ConsoleReporter callback prints the trial events
    )
