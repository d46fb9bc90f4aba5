"""`dynconv tune SPEC --warm-start STUDY`: an earlier study's trials, read back from MLflow, seed this
study's Optuna search.

They reach Optuna through Ray's own mechanism (`OptunaSearch(points_to_evaluate=..., evaluated_rewards=
...)`, see `dynconv.tune.search.build_searcher`): Optuna holds them as COMPLETE trials, with their
parameters and values, before its first suggestion, and Tune runs none of them again.

Which trials seed the search, and with which value, is the study's own ranking
(`dynconv.tune.ranking.Ranking.for_spec` of the NEW spec): trials that ran all their epochs (outcome
`finished`) and are `rankable` (a finite last value of the ranked metric, or of every objective); the
value is that last value, as OptunaSearch tells Optuna at the end of a trial.

The two searches must be compatible, or the study is refused in one line before anything is created:
the same ranked metric(s) and mode(s) (a weighted mix: the same weights), the same searched
parameters (none missing, none extra) and each of the same type. A trial whose value lies outside a
narrowed range (or is a choice the new space dropped) is skipped and counted, as Optuna itself cannot
hold it in the new distribution; when no trial is left, the study is refused.

Reads MLflow through `dynconv.tracking` only; imports no Ray, Optuna nor `mlflow`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dynconv.errors import DynconvError
from dynconv.spec import JobSpec
from dynconv.spec.sections import ParamSpec
from dynconv.tracking.artifacts import load_study_spec
from dynconv.tracking.find import TrialInfo, find_study_run, list_trials
from dynconv.tracking.layout import TAG_STUDY
from dynconv.tune.ranking import Ranking

NOT_FINISHED = "not finished"  # stopped early, failed, diverged or interrupted: outcome other than `finished`


@dataclass(frozen=True)
class WarmStart:
    """The trials of an earlier study that seed this study's search."""

    study: str  # the earlier study's name
    run_id: str  # its study (parent) run id
    points: tuple[dict[str, Any], ...]  # each trial's searched values, keyed as the new space
    rewards: tuple[float | list[float], ...]  # its last value (a list: one per objective, in order)
    skipped: Mapping[str, int]  # why trials were left out -> how many

    def describe(self) -> str:
        """The one line the study prints when its search is seeded."""
        n = len(self.points)
        trials = f"{n} trials" if n != 1 else "1 trial"
        line = f"warm start: {trials} of study {self.study!r} (run {self.run_id}) seed{'s' if n == 1 else ''}"
        line += " the search"
        if self.skipped:
            line += f" ({_counted(self.skipped)} skipped: {_reasons(self.skipped)})"
        return line


def load_warm_start(spec: JobSpec, uri: str, study: str) -> WarmStart:
    """The seed of `spec`'s search from the earlier study `study` (a study name, or its study run id, in
    the store `uri`), or a one-line DynconvError: study not found, searches not compatible, no trial
    left to seed with."""
    parent = find_study_run(uri, study)
    name = parent.data.tags.get(TAG_STUDY, study)
    check_compatible(spec, load_study_spec(uri, parent), name)
    ranking = Ranking.for_spec(spec)
    trials = list_trials(uri, parent, ranking.metric, [m for m, _ in ranking.objectives])
    return seed_from(spec, trials, name, parent.info.run_id)


def check_compatible(spec: JobSpec, earlier_spec: JobSpec, study: str) -> None:
    """Refuse, in one line naming what differs, an earlier study (`earlier_spec`, named `study`) whose
    trials cannot seed the search of `spec`."""
    new, earlier = spec.search, earlier_spec.search
    here, there = Ranking.for_spec(spec), Ranking.for_spec(earlier_spec)
    if here != there:
        raise DynconvError(
            f"--warm-start: study {study!r} ranked its trials on {there.describe()}, this search ranks on "
            f"{here.describe()}; "
            "values of another metric or mode cannot seed this search"
        )
    missing = [k for k in new.space if k not in earlier.space]
    if missing:
        raise DynconvError(
            f"--warm-start: {_params(missing)} of this search {_was(missing)} not searched by study "
            f"{study!r} (it searched {', '.join(earlier.space)}), so its trials have no value to seed "
            f"{'it' if len(missing) == 1 else 'them'} with"
        )
    extra = [k for k in earlier.space if k not in new.space]
    if extra:
        raise DynconvError(
            f"--warm-start: study {study!r} also searched {_params(extra)}, which this search does not; "
            "its values shaped the trials' results, so they cannot seed a search that holds "
            f"{'it' if len(extra) == 1 else 'them'} fixed"
        )
    for key, param in new.space.items():
        if param.type != earlier.space[key].type:
            raise DynconvError(
                f"--warm-start: parameter {key!r} is searched {param.type} here but was "
                f"{earlier.space[key].type} in study {study!r}; Optuna cannot seed one with the other"
            )


def seed_from(spec: JobSpec, trials: Iterable[TrialInfo], study: str, run_id: str) -> WarmStart:
    """The trials of `trials` (of the study `study`, run `run_id`) that seed the search of `spec`, by its
    ranking's rule, with their values; a one-line DynconvError when none is left."""
    ranking = Ranking.for_spec(spec)
    points: list[dict[str, Any]] = []
    rewards: list[float | list[float]] = []
    skipped: Counter[str] = Counter()
    for trial in sorted(trials, key=lambda t: t.trial_id):
        if not trial.completed:
            skipped[NOT_FINISHED] += 1
            continue
        if not ranking.rankable(trial):
            skipped[f"without a finite {_metrics(ranking)}"] += 1
            continue
        point, outside = _point(spec.search.space, trial)
        if point is None:
            skipped[outside] += 1
            continue
        points.append(point)
        if ranking.objectives:
            rewards.append([float(trial.objectives[m]) for m, _ in ranking.objectives])  # type: ignore[arg-type]
        else:
            rewards.append(float(trial.value))  # type: ignore[arg-type]
    if not points:
        n = _counted(skipped)
        why = f"{n} trial{'s' if n != 1 else ''}: {_reasons(skipped)}" if n else "it recorded no trial"
        raise DynconvError(
            f"--warm-start: no trial of study {study!r} (run {run_id}) can seed this search ({why})"
        )
    return WarmStart(study, run_id, tuple(points), tuple(rewards), dict(skipped))


def _point(space: Mapping[str, ParamSpec], trial: TrialInfo) -> tuple[dict[str, Any] | None, str]:
    """The trial's searched values as the new space takes them, or (None, why not)."""
    point: dict[str, Any] = {}
    for key, param in space.items():
        if param.type == "choice":
            logged = trial.params.get(key)
            same = [v for v in param.values or [] if _same_choice(v, logged)]
            if not same:
                return None, f"with {key} not among {param.values}" if logged else f"without {key}"
            point[key] = same[0]
            continue
        value = trial.param(key)
        if value is None or not math.isfinite(value):
            return None, f"without {key}"
        if not param.low <= value <= param.high:  # type: ignore[operator]
            return None, f"with {key} outside [{param.low:g}, {param.high:g}]"
        point[key] = value
    return point, ""


def _same_choice(choice: Any, logged: str | None) -> bool:
    """Whether a trial run's param `logged` (MLflow keeps params as text) is the choice `choice`."""
    if logged is None:
        return False
    if str(choice) == logged:
        return True
    if isinstance(choice, (int, float)) and not isinstance(choice, bool):
        try:
            return float(logged) == float(choice)
        except ValueError:
            return False
    return False


def _metrics(ranking: Ranking) -> str:
    return " or ".join(m for m, _ in ranking.objectives) if ranking.objectives else ranking.metric


def _params(keys: list[str]) -> str:
    return f"parameter {keys[0]!r}" if len(keys) == 1 else "parameters " + ", ".join(repr(k) for k in keys)


def _was(keys: list[str]) -> str:
    return "was" if len(keys) == 1 else "were"


def _counted(counts: Mapping[str, int]) -> int:
    return sum(counts.values())


def _reasons(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {why}" for why, n in counts.items())
