"""Confirmation over seeds: the search's top-k configurations trained again with new seeds, as a second
Ray Tune phase of the study on the same cluster and resources.

Each confirmation run is a child of the study run (`dynconv.role=confirmation`, `dynconv.confirms=<the
trial run it retrains>`), written by the same `TrialRecorder` as the search's trials. Once trained,
each run's final checkpoint is evaluated over the channel subsets (its `<split>_acc_<subset>` metrics),
the champion is decided (`dynconv.tune.champion`), recorded on the study run (`confirmation.json`,
`dynconv.verdict`, `dynconv.champion_run_id`) and registered in MLflow's Model Registry under the
study's name, as `@champion` when the verdict is significant and `@candidate` when it is not.

Resumable: the phase is a Tune experiment of its own (`<study run name>-confirm-k<K>-s<N>`), restored
when it exists, so an interrupted confirmation continues where it stopped: no seed is trained twice, a
run already evaluated is not evaluated again, and the registry reuses the version made from a run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dynconv.errors import DynconvError, one_line
from dynconv.spec import JobSpec
from dynconv.spec.metrics import WORST_SUBSET_METRIC, metric_bounds
from dynconv.tracking.find import TrialInfo, search_runs
from dynconv.tracking.layout import (
    CONFIRMATION_ARTIFACT,
    TAG_CHAMPION_RUN,
    TAG_CONFIRMATION,
    TAG_CONFIRMS,
    TAG_OUTCOME,
    TAG_TEST_SET,
    TAG_VERDICT,
    log_dict,
    log_metrics,
    set_tags,
)
from dynconv.tune.champion import Configuration, SeedRun, Verdict, decide
from dynconv.tune.ranking import Ranking
from dynconv.tune.trial import CONFIRMS, TrialContext

NO_SPEED = {"warmup": 0, "latency_iters": 0, "throughput_iters": 0}  # accuracy only: timing is the eval's


@dataclass
class ConfirmPhase:
    """What the confirmation needs of its study (the study driver or `dynconv confirm` builds it)."""

    spec: JobSpec  # resolved, with the confirm section to use
    uri: str
    experiment_id: str
    parent_run_id: str
    run_name: str  # the study's Tune experiment name
    data: Any  # dynconv.data.cache_files.PreparedData
    context: TrialContext  # what the study's trials get besides the spec
    concurrent: int
    verbose: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tune_name(self) -> str:
        c = self.spec.confirm
        return f"{self.run_name}-confirm-k{c.top_k}-s{c.seeds}"


@dataclass
class ConfirmOutcome:
    """A finished confirmation: its configurations and verdict (None when interrupted)."""

    configurations: list[Configuration]
    verdict: Verdict | None
    interrupted: bool = False
    registry: str = ""  # the registry's one line (registered, alias kept or moved, or why not)


def confirmation_seeds(spec: JobSpec) -> list[int]:
    """The new seeds: `train.seed + 1 .. + N`, never the search's own seed."""
    return [spec.train.seed + i for i in range(1, spec.confirm.seeds + 1)]


def chosen_trials(spec: JobSpec, trials: list[TrialInfo]) -> list[tuple[int, TrialInfo]]:
    """The first `confirm.top_k` trials of the study's ranking, with their ranks; one line when none."""
    ranked = Ranking.for_spec(spec).rank(trials)
    if not ranked:
        ended = ", ".join(sorted({t.status.lower() for t in trials})) or "no trial runs"
        raise DynconvError(f"study {spec.study!r} has no finished trial to confirm (trials: {ended})")
    return list(enumerate(ranked[: spec.confirm.top_k], start=1))


def searched_values(spec: JobSpec, trial: TrialInfo) -> dict[str, Any]:
    """A trial's searched values, typed as its space says (MLflow keeps params as text)."""
    out: dict[str, Any] = {}
    for key, p in spec.search.space.items():
        text = trial.params.get(key, trial.params.get(f"train.{key}"))
        if text is None:
            raise DynconvError(f"trial run {trial.run_id} has no logged value of {key!r} to confirm")
        if p.type == "choice":
            out[key] = next((v for v in p.values or [] if str(v) == text), text)
        else:
            out[key] = float(text)
    return out


def confirmation_points(spec: JobSpec, chosen: list[tuple[int, TrialInfo]]) -> list[dict[str, Any]]:
    """One trial config per (configuration, new seed): the searched values, the seed, the run it confirms."""
    return [
        {**searched_values(spec, t), "seed": seed, CONFIRMS: t.run_id}
        for _, t in chosen
        for seed in confirmation_seeds(spec)
    ]


def run_confirmation(phase: ConfirmPhase, chosen: list[tuple[int, TrialInfo]]) -> ConfirmOutcome:
    """Train the chosen configurations with new seeds (or continue that), evaluate, decide, record,
    register. Prints progress, the table and the verdict."""
    spec = phase.spec
    points = confirmation_points(spec, chosen)
    n = spec.confirm
    print(
        f"\nConfirming the top {len(chosen)} configurations with {n.seeds} new seeds each "
        f"({len(points)} runs, seeds {confirmation_seeds(spec)}; Tune experiment {phase.tune_name})",
        flush=True,
    )
    t0 = time.perf_counter()
    grid = _fit(phase, points)
    phase.timings["confirm_seconds"] = time.perf_counter() - t0
    if len(grid) < len(points) or any(_unfinished(r, spec) for r in grid):
        return ConfirmOutcome([], None, interrupted=True)
    _evaluate_runs(phase, _confirmation_runs(phase))
    configs = configurations(spec, chosen, _confirmation_runs(phase))
    ranking = Ranking.for_spec(spec)
    verdict = decide(configs, ranking.metric, ranking.mode, n.alpha)
    record_verdict(phase.uri, phase.parent_run_id, verdict, configs)
    print(format_confirmation(configs, verdict, spec.evaluate.split), flush=True)
    return ConfirmOutcome(configs, verdict, registry=register(phase, verdict))


def _fit(phase: ConfirmPhase, points: list[dict[str, Any]]) -> Any:
    """The confirmation's Tune experiment: new, or restored to continue; its ResultGrid."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from dynconv.tune.callbacks import ConsoleReporter
    from dynconv.tune.console import sigterm_as_sigint
    from dynconv.tune.parent_run import recorded_spec
    from dynconv.tune.recorder import TrialRecorder
    from dynconv.tune.resources import trains_in_trial_actor, trial_resources
    from dynconv.tune.search import run_config, tune_metric_mode
    from dynconv.tune.trial import run_trial

    spec = phase.spec
    context = replace(phase.context, run_name=phase.tune_name)  # where the runs' checkpoints live
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec_json=recorded_spec(spec), context=context),
        trial_resources(spec, context.gpu_resource),
    )
    path = Path(spec.storage_uri()) / phase.tune_name
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(
            str(path), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        metric, mode = tune_metric_mode(spec)
        recorder = TrialRecorder(
            phase.uri,
            phase.experiment_id,
            phase.parent_run_id,
            spec,
            phase.data.num_classes,
            role="confirmation",
            run_tags={TAG_CONFIRMATION: phase.tune_name},
        )
        keys = [*spec.search.space, "seed"]
        console = ConsoleReporter(spec.train.epochs, spec.search.tune_metric, spec.search.tune_mode, keys)
        tuner = tune.Tuner(
            trainable,
            param_space=dict.fromkeys(points[0]),  # the keys the points fill in
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                search_alg=BasicVariantGenerator(points_to_evaluate=points),
                num_samples=len(points),
                max_concurrent_trials=phase.concurrent,
                reuse_actors=trains_in_trial_actor(spec),
            ),
            run_config=run_config(spec, phase.tune_name, [recorder, console], phase.verbose),
        )
    with sigterm_as_sigint():
        return tuner.fit()


def _unfinished(result: Any, spec: JobSpec) -> bool:
    """A confirmation trial the interruption left short: no error, not diverged, fewer epochs than asked."""
    from dynconv.spec.metrics import diverged, ended_by_error

    metrics = result.metrics or {}
    if result.error is not None or diverged(metrics) is not None or ended_by_error(metrics) is not None:
        return False
    return int(metrics.get("epoch", 0)) < spec.train.epochs


def _confirmation_runs(phase: ConfirmPhase) -> list[Any]:
    """The MLflow runs of this confirmation (not of another `top_k` x `seeds` confirmation of the study),
    a run lost by a killed driver (`orphaned`) left out."""
    runs = search_runs(
        phase.uri,
        f"tags.`mlflow.parentRunId` = '{phase.parent_run_id}' and tags.`dynconv.role` = 'confirmation' "
        f"and tags.`{TAG_CONFIRMATION}` = '{phase.tune_name}'",
        [phase.experiment_id],
    )
    return [r for r in runs if r.data.tags.get(TAG_OUTCOME) != "orphaned"]


def _acc_key(split: str, subset: str) -> str:
    return f"{split}_acc_{subset}"


def _evaluate_runs(phase: ConfirmPhase, runs: list[Any]) -> None:
    """Evaluate every finished confirmation run not yet evaluated over the spec's subsets, logging
    `<split>_acc_<subset>` on the run itself (all at once: a run holds all of them or none)."""
    from dynconv.evaluation.results import SpeedConfig
    from dynconv.tracking.artifacts import load_checkpoint
    from dynconv.tune.remote_evaluation import evaluator_for

    spec, evaluate = phase.spec, evaluator_for(phase.spec, phase.context, phase.data)
    split, subsets = spec.evaluate.split, spec.evaluate.subsets
    todo = [
        r
        for r in runs
        if r.data.tags.get(TAG_OUTCOME) == "finished" and _acc_key(split, subsets[-1]) not in r.data.metrics
    ]
    for i, run in enumerate(todo, start=1):
        rid = run.info.run_id
        ev = evaluate(load_checkpoint(phase.uri, rid), rid, subsets, split, SpeedConfig(**NO_SPEED))
        log_metrics(phase.uri, rid, {_acc_key(split, r.subset): r.accuracy for r in ev.results})
        set_tags(phase.uri, rid, {TAG_TEST_SET: ev.test_set_id})
        shown = ", ".join(f"{r.subset} {r.accuracy:.3f}" for r in ev.results[:3])
        print(f"confirmation run {i}/{len(todo)} evaluated on {split} ({run.info.run_name}): {shown}, ...")


def configurations(
    spec: JobSpec, chosen: list[tuple[int, TrialInfo]], runs: list[Any]
) -> list[Configuration]:
    """The chosen configurations with their confirmation `runs` as MLflow holds them (a failed or
    diverged seed counts with no value: it did not score)."""
    metric, prefix = Ranking.for_spec(spec).metric, f"{spec.evaluate.split}_acc_"

    def finished(run: Any) -> bool:
        return run.data.tags.get(TAG_OUTCOME) == "finished"

    out = []
    for rank, trial in chosen:
        mine = sorted(
            (r for r in runs if r.data.tags.get(TAG_CONFIRMS) == trial.run_id),
            key=lambda r: float(r.data.params.get("train.seed", "0")),
        )
        seeds = [
            SeedRun(
                run_id=r.info.run_id,
                seed=int(float(r.data.params.get("train.seed", "0"))),
                value=r.data.metrics.get(metric) if finished(r) else None,
                test_acc={k[len(prefix) :]: v for k, v in r.data.metrics.items() if k.startswith(prefix)},
                val_worst=r.data.metrics.get(WORST_SUBSET_METRIC) if finished(r) else None,
            )
            for r in mine
        ]
        flops = next((r.data.metrics["flops"] for r in mine if "flops" in r.data.metrics), None)
        params = searched_values(spec, trial)
        out.append(Configuration(trial.run_id, trial.name, rank, params, flops, seeds, metric_bounds(metric)))
    return out


def record_verdict(uri: str, parent_run_id: str, verdict: Verdict, configs: list[Configuration]) -> None:
    """The verdict on the study run: the configurations x seeds table with its intervals and the verdict
    (`confirmation.json`), the verdict in one line, the champion's run, its mean and interval."""
    data = {**verdict.to_json(), "configurations": [c.to_json() for c in configs]}
    data = json.loads(json.dumps(data), parse_constant=lambda _: None)  # NaN -> null: JSON, and YAML
    log_dict(uri, parent_run_id, data, CONFIRMATION_ARTIFACT)
    score = verdict.champion.score()
    name = f"confirmed_{verdict.metric}"
    values = {name: score.mean, f"{name}_low": score.low, f"{name}_high": score.high}
    log_metrics(uri, parent_run_id, {k: v for k, v in values.items() if math.isfinite(v)})
    set_tags(
        uri,
        parent_run_id,
        {TAG_VERDICT: verdict.one_line()[:5000], TAG_CHAMPION_RUN: verdict.champion.representative().run_id},
    )


def format_confirmation(configs: list[Configuration], verdict: Verdict, split: str) -> str:
    """The configurations x seeds table (ranked metric and per-subset accuracy: mean [95% CI]) and the
    verdict, as the console prints them."""
    subsets = configs[0].subsets() if configs else []
    head = ["search rank", "trial", "seeds", f"{verdict.metric} mean [95% CI]"]
    head += [f"{split} {s}" for s in subsets]
    rows = [head]
    for c in configs:
        s = c.score()
        row = [str(c.rank), c.source_name, f"{s.n}/{len(c.runs)}", _ci(s.mean, s.low, s.high)]
        row += [_ci(*c.test(sub)[1:]) for sub in subsets]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    table = "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)
    return f"\nConfirmation over seeds\n{table}\n\nVerdict\n" + "\n".join(
        f"  {line}" for line in verdict.lines()
    )


def _ci(mean: float, low: float, high: float) -> str:
    if not math.isfinite(mean):
        return "-"
    if not math.isfinite(low):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def register(phase: ConfirmPhase, verdict: Verdict) -> str:
    """Log the champion's representative seed run as an MLflow model and register it under the study's
    name with the verdict's alias. Any registry problem is one printed line (and a tag on the study
    run): the study and its verdict stand without it."""
    from dynconv.tune.registration import register_champion_run

    try:
        line = register_champion_run(phase.uri, phase.spec, verdict)
    except DynconvError as err:
        line = f"registry: not registered: {one_line(err)}"
        set_tags(phase.uri, phase.parent_run_id, {"dynconv.registry_error": str(err)[:5000]})
    print(line, flush=True)
    return line
