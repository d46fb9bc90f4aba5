"""Confirmation over seeds: the search's top-k configurations trained again with new seeds, as a second
Ray Tune phase of the study on the same cluster and resources.

Each confirmation run is a child of the study run (`dynconv.role=confirmation`, `dynconv.confirms=<the
trial run it retrains>`), written by the same `TrialRecorder` as the search's trials. Once trained,
each run's final checkpoint is evaluated over the channel subsets (its `<split>_acc_<subset>` metrics),
the champion is decided (`dynconv.tune.champion`), recorded on the study run (`confirmation.json`,
`dynconv.verdict`, `dynconv.champion_run_id`) and registered in MLflow's Model Registry under the
study's name, as `@champion` when the verdict is significant and `@candidate` when it is not.

No silent repeats (issue 28): a confirmation trains only the (configuration, seed) pairs that no
earlier confirmation of the study trained to an end (`finished`, `failed`, `diverged`), whatever its
`top_k` and `seeds`; its verdict covers every configuration the study's confirmations trained, with
every seed (one run per pair); and a configuration keeps the registry version it was registered with
(`Configuration.registered_run`): more seeds change its score, not its model.

Resumable: the phase is a Tune experiment of its own (`<study run name>-confirm-k<K>-s<N>`), restored
when it exists, so an interrupted confirmation continues where it stopped: no seed is trained twice, a
run already evaluated is not evaluated again, and the registry reuses the version made from a run.
While one is under way the study run names it (`dynconv.confirming`); another confirmation of the
study (other `top_k` or `seeds`) is refused until it is continued, as it would train its pairs again.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dynconv.errors import DynconvError, one_line
from dynconv.spec import JobSpec
from dynconv.spec.metrics import WORST_SUBSET_METRIC, metric_bounds
from dynconv.spec.ranking import Ranking
from dynconv.tracking.find import TrialInfo, get_run, list_trials, search_runs
from dynconv.tracking.layout import (
    CONFIRMATION_ARTIFACT,
    TAG_CHAMPION_RUN,
    TAG_CONFIRMATION,
    TAG_CONFIRMING,
    TAG_CONFIRMS,
    TAG_OUTCOME,
    TAG_REGISTRY_ERROR,
    TAG_TEST_SET,
    TAG_VERDICT,
    delete_tag,
    log_dict,
    log_metrics,
    log_together,
    set_tags,
)
from dynconv.tune.champion import Configuration, SeedRun, Verdict, decide
from dynconv.tune.study_evaluation import ranked_runs
from dynconv.tune.study_result import TrialSummary
from dynconv.tune.trial import CONFIRMS, TrialContext

NO_SPEED = {"warmup": 0, "latency_iters": 0, "throughput_iters": 0}  # accuracy only: timing is the eval's
ENDED = ("finished", "stopped_early", "failed", "diverged")  # a run that trained its seed to an end
_SIZES = re.compile(r"-confirm-k(\d+)-s(\d+)$")  # a confirmation's Tune experiment name: its top_k, seeds


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
    ranked: list[tuple[int, TrialInfo]] = field(default_factory=list)  # `ranked_configurations`

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


def ranked_configurations(
    uri: str, parent_run: Any, spec: JobSpec, trials: Sequence[TrialSummary]
) -> list[tuple[int, TrialInfo]]:
    """The configurations a confirmation may retrain: the study's ranked `trials` (its one ranking),
    best first, each with its rank and trial run; one line when there are none."""
    ranking = Ranking.for_spec(spec)
    runs = list_trials(uri, parent_run, ranking.metric, [m for m, _ in ranking.objectives])
    ranked = [(row.rank or 0, run) for row, run in ranked_runs(trials, runs) if run is not None]
    if not ranked:
        ended = ", ".join(sorted({t.status.lower() for t in trials})) or "no trial runs"
        raise DynconvError(f"study {spec.study!r} has no finished trial to confirm (trials: {ended})")
    return ranked


def chosen_trials(spec: JobSpec, ranked: list[tuple[int, TrialInfo]]) -> list[tuple[int, TrialInfo]]:
    """The first `confirm.top_k` of the study's `ranked_configurations`."""
    return ranked[: spec.confirm.top_k]


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
    """Train the chosen configurations with the new seeds no earlier confirmation of the study trained
    (or continue that), evaluate, decide over every seed the study's confirmations trained, record,
    register. Prints progress, the table and the verdict."""
    spec = phase.spec
    wanted = confirmation_points(spec, chosen)
    trained = _trained(_confirmation_runs(phase))
    points = [p for p in wanted if _pair(p) not in trained]
    n = spec.confirm
    before = f"; {len(wanted) - len(points)} trained before" if len(points) < len(wanted) else ""
    print(
        f"\nConfirming the top {len(chosen)} configurations with {n.seeds} new seeds each "
        f"({len(points)} runs to train{before}, seeds {confirmation_seeds(spec)}; "
        f"Tune experiment {phase.tune_name})",
        flush=True,
    )
    if points:
        t0 = time.perf_counter()
        grid = _fit(phase, points)
        phase.timings["confirm_seconds"] = time.perf_counter() - t0
        trained = _trained(_confirmation_runs(phase))
        if any(_unfinished(r, spec) for r in grid) or any(_pair(p) not in trained for p in wanted):
            return ConfirmOutcome([], None, interrupted=True)
    _under_way(phase, "")
    chosen = _with_earlier_configurations(phase, chosen, _confirmation_runs(phase))
    runs, _ = _verdict_runs(phase, chosen)
    _evaluate_runs(phase, runs)
    runs, registered = _verdict_runs(phase, chosen)  # with the accuracies just logged
    configs = configurations(spec, chosen, runs, registered)
    ranking = Ranking.for_spec(spec)
    verdict = decide(configs, ranking.metric, ranking.mode, n.alpha)
    record_verdict(phase.uri, phase.parent_run_id, verdict, configs)
    print(format_confirmation(configs, verdict, spec.evaluate.split), flush=True)
    return ConfirmOutcome(configs, verdict, registry=register(phase, verdict))


def _pair(point: dict[str, Any]) -> tuple[str, int]:
    """A confirmation point's (configuration: the trial run it confirms, seed)."""
    return point[CONFIRMS], int(point["seed"])


def _run_pair(run: Any) -> tuple[str, int]:
    """A confirmation run's (configuration, seed), as `_pair` of the point it trained."""
    return run.data.tags.get(TAG_CONFIRMS, ""), int(float(run.data.params.get("train.seed", "-1")))


def _trained(runs: list[Any]) -> set[tuple[str, int]]:
    """The (configuration, seed) pairs these confirmation runs trained to an end (`ENDED`)."""
    return {_run_pair(r) for r in runs if r.data.tags.get(TAG_OUTCOME) in ENDED}


def _under_way(phase: ConfirmPhase, name: str) -> None:
    """Name the confirmation under way on the study run (`name`), or ("") say this one is done."""
    if name or get_run(phase.uri, phase.parent_run_id).data.tags.get(TAG_CONFIRMING) == phase.tune_name:
        set_tags(phase.uri, phase.parent_run_id, {TAG_CONFIRMING: name})


def _refuse_another_under_way(phase: ConfirmPhase) -> None:
    """One line when the study run names another confirmation under way whose Tune state is still
    there: continued later, it would train the pairs this one is about to train."""
    from ray import tune

    other = get_run(phase.uri, phase.parent_run_id).data.tags.get(TAG_CONFIRMING, "")
    if not other or other == phase.tune_name:
        return
    if not tune.Tuner.can_restore(str(Path(phase.spec.storage_uri()) / other)):
        return  # its state is gone: it can never be continued, so nothing would be trained twice
    sizes = _SIZES.search(other)
    again = f" --top-k {sizes[1]} --seeds {sizes[2]}" if sizes else ""
    study = phase.spec.study
    raise DynconvError(
        f"confirmation {other} of study {study!r} was interrupted; continue it first "
        f"(dynconv confirm {study}{again}), then confirm with other sizes: it would otherwise train "
        "its configurations and seeds a second time"
    )


def _with_earlier_configurations(
    phase: ConfirmPhase, chosen: list[tuple[int, TrialInfo]], runs: list[Any]
) -> list[tuple[int, TrialInfo]]:
    """`chosen` and, at their search rank, the configurations earlier confirmations of the study trained
    that `chosen` leaves out (a smaller `top_k`): the verdict covers every seed trained."""
    mine = {t.run_id for _, t in chosen}
    extra = {config for config, _ in _trained(runs)} - mine
    return chosen + [(rank, t) for rank, t in phase.ranked if t.run_id in extra]


def _verdict_runs(
    phase: ConfirmPhase, chosen: list[tuple[int, TrialInfo]]
) -> tuple[list[Any], dict[str, str]]:
    """(the runs the verdict counts, the run registered for each configuration): one run per
    (configuration, seed) of `chosen` that trained to an end (a store written before issue 28 may hold
    two; the registered one, else the first that finished, else the first, is kept), and
    configuration -> its seed run whose model the registry holds (`_registered_runs`)."""
    mine = {t.run_id for _, t in chosen}
    runs = [r for r in _confirmation_runs(phase) if r.data.tags.get(TAG_OUTCOME) in ENDED]
    runs = [r for r in runs if _run_pair(r)[0] in mine]
    registered = _registered_runs(phase, runs)
    kept = set(registered.values())
    first = sorted(
        runs,
        key=lambda r: (
            r.info.run_id not in kept,
            r.data.tags.get(TAG_OUTCOME) != "finished",
            r.info.start_time or 0,
        ),
    )
    one: dict[tuple[str, int], Any] = {}
    for run in first:
        one.setdefault(_run_pair(run), run)
    return list(one.values()), registered


def _registered_runs(phase: ConfirmPhase, runs: list[Any]) -> dict[str, str]:
    """Configuration (the trial run it confirms) -> the confirmation run the study's registered model
    holds a version of (the newest, if a store written before issue 28 holds several). Empty when the
    store has no registry or the name belongs to no version of this study: registration says why."""
    from dynconv.tracking.registry import study_versions

    try:
        versions = study_versions(phase.uri, phase.spec.study, phase.spec.study)
    except DynconvError:
        return {}
    configuration = {r.info.run_id: _run_pair(r)[0] for r in runs}
    return {
        configuration[v.source_run_id]: v.source_run_id for v in versions if v.source_run_id in configuration
    }


def _fit(phase: ConfirmPhase, points: list[dict[str, Any]]) -> Any:
    """The confirmation's Tune experiment (`dynconv.tune.phase`): new, or restored to continue; its
    ResultGrid. A fault of the world that stopped it (a full disk, a gone store) is raised."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from dynconv.tune.callbacks import ConsoleReporter
    from dynconv.tune.phase import NewPhase, fit_phase, phase_path, phase_tuner
    from dynconv.tune.recorder import TrialRecorder

    spec = phase.spec
    context = replace(phase.context, run_name=phase.tune_name)  # where the runs' checkpoints live
    new = None  # a restored Tuner brings its own recorder (its fault then shows in the runs it closed)
    if not tune.Tuner.can_restore(phase_path(spec, phase.tune_name)):
        _refuse_another_under_way(phase)
        _under_way(phase, phase.tune_name)
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
        console = ConsoleReporter.for_spec(spec, keys, phase.verbose)
        search = BasicVariantGenerator(points_to_evaluate=points)
        # the keys the points fill in; no scheduler: every seed trains all its epochs
        new = NewPhase(dict.fromkeys(points[0]), search, None, len(points), recorder, console)
    grid = fit_phase(phase_tuner(spec, context, phase.concurrent, phase.verbose, new))
    if new is not None and new.recorder.fault is not None:  # a full disk, a gone store: stopped by it
        raise new.recorder.fault
    return grid


def _unfinished(result: Any, spec: JobSpec) -> bool:
    """A confirmation trial the interruption left short: no error, not diverged, fewer epochs than asked."""
    from dynconv.spec.metrics import diverged, ended_by_error

    metrics = result.metrics or {}
    if result.error is not None or diverged(metrics) is not None or ended_by_error(metrics) is not None:
        return False
    return int(metrics.get("epoch", 0)) < spec.train.epochs


def _confirmation_runs(phase: ConfirmPhase) -> list[Any]:
    """The MLflow confirmation runs of the study, of every `top_k` x `seeds` confirmation, a run lost by
    a killed driver (`orphaned`) left out."""
    runs = search_runs(
        phase.uri,
        f"tags.`mlflow.parentRunId` = '{phase.parent_run_id}' and tags.`dynconv.role` = 'confirmation'",
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
    spec: JobSpec,
    chosen: list[tuple[int, TrialInfo]],
    runs: list[Any],
    registered: dict[str, str] | None = None,
) -> list[Configuration]:
    """The chosen configurations with their confirmation `runs` as MLflow holds them (a failed or
    diverged seed counts with no value: it did not score), each with the seed run the registry holds
    of it (`registered`: configuration -> run), if any."""
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
        bounds = metric_bounds(metric)
        held = (registered or {}).get(trial.run_id)
        out.append(Configuration(trial.run_id, trial.name, rank, params, flops, seeds, bounds, held))
    return out


def record_verdict(uri: str, parent_run_id: str, verdict: Verdict, configs: list[Configuration]) -> None:
    """The verdict on the study run: the configurations x seeds table with its intervals and the verdict
    (`confirmation.json`), the verdict in one line, the champion's run, its mean and interval.

    Complete or absent: the verdict tag is what readers look for, so an earlier one is removed first,
    and it is written last, with the champion and its interval in the same batch. An interruption in
    between leaves a study with no verdict, never a verdict beside another confirmation's file."""
    data = {**verdict.to_json(), "configurations": [c.to_json() for c in configs]}
    data = json.loads(json.dumps(data), parse_constant=lambda _: None)  # NaN -> null: JSON, and YAML
    delete_tag(uri, parent_run_id, TAG_VERDICT)
    log_dict(uri, parent_run_id, data, CONFIRMATION_ARTIFACT)
    score = verdict.champion.score()
    name = f"confirmed_{verdict.metric}"
    values = {name: score.mean, f"{name}_low": score.low, f"{name}_high": score.high}
    tags = {
        TAG_VERDICT: verdict.one_line()[:5000],
        TAG_CHAMPION_RUN: verdict.champion.representative().run_id,
    }
    log_together(uri, parent_run_id, {k: v for k, v in values.items() if math.isfinite(v)}, tags)


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
        names = phase.data.class_names if phase.data is not None else None
        line = register_champion_run(phase.uri, phase.spec, verdict, names)
    except DynconvError as err:
        line = f"registry: not registered: {one_line(err)}"
        set_tags(phase.uri, phase.parent_run_id, {TAG_REGISTRY_ERROR: str(err)[:5000]})
    print(line, flush=True)
    return line
