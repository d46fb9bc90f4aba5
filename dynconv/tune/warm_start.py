"""`dynconv tune SPEC --warm-start STUDY`: an earlier study's trials, read back from MLflow, seed this
study's Optuna search (as `OptunaSearch(points_to_evaluate=..., evaluated_rewards=...)`: COMPLETE trials
before its first suggestion, none run again).

Owns three decisions:
- which trials seed it, with which value: those the NEW spec's ranking would rank among trials that
  ran all their epochs, with their last value (what OptunaSearch tells Optuna); a value outside a
  narrowed range or a dropped choice is skipped and counted;
- whether the two studies are comparable: the same ranked metric(s), mode(s) and weights, and the same
  searched parameters and types (else refused), trained the same way (model, data, epochs, scheduler:
  each difference named with both values, unless `--warm-start-accept` accepts its group, which the
  new study run records);
- the sampler's seed: from `search.seed` and the earlier run id (numpy's `SeedSequence`), since the
  seeded trials consume no random draws and the earlier seed would repeat its first suggestions.

Reads MLflow through `dynconv.tracking` only; imports no Ray, Optuna nor `mlflow`.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dynconv.errors import DynconvError
from dynconv.spec import JobSpec, absolute_path
from dynconv.spec.ranking import Ranking
from dynconv.spec.sections import ParamSpec
from dynconv.tracking.artifacts import load_study_spec
from dynconv.tracking.find import TrialInfo, find_study_run, list_trials
from dynconv.tracking.layout import (
    PARAM_WARM_START_SAMPLER_SEED,
    PARAM_WARM_START_TRIALS,
    TAG_STUDY,
    TAG_WARM_START,
    TAG_WARM_START_ACCEPTED,
)

NOT_FINISHED = "not finished"  # stopped early, failed, diverged or interrupted: outcome other than `finished`
ACCEPTABLE = ("model", "data", "epochs", "scheduler")  # what `--warm-start-accept` may let differ


@dataclass(frozen=True)
class WarmStart:
    """The trials of an earlier study that seed this study's search."""

    study: str  # the earlier study's name
    run_id: str  # its study (parent) run id
    points: tuple[dict[str, Any], ...]  # each trial's searched values, keyed as the new space
    rewards: tuple[float | list[float], ...]  # its last value (a list: one per objective, in order)
    skipped: Mapping[str, int]  # why trials were left out -> how many
    accepted: Mapping[str, str] = field(default_factory=dict)  # field -> "X there, Y here" (accepted)

    def describe(self) -> str:
        """The one line the study prints when its search is seeded."""
        n = len(self.points)
        trials = f"{n} trials" if n != 1 else "1 trial"
        line = f"warm start: {trials} of study {self.study!r} (run {self.run_id}) seed{'s' if n == 1 else ''}"
        line += " the search"
        if self.skipped:
            line += f" ({_counted(self.skipped)} skipped: {_reasons(self.skipped)})"
        if self.accepted:
            line += f"; accepted: {self.differences()}"
        return line

    def differences(self) -> str:
        """What the earlier study's training differs in, accepted: `train.epochs 2 there, 3 here; ...`."""
        return "; ".join(f"{key} {both}" for key, both in self.accepted.items())

    def sampler_seed(self, seed: int) -> int:
        """The seed of this search's sampler: drawn from `seed` (`search.seed`) and the earlier study
        run's id, so that it neither replays the earlier study's draws nor depends on anything the
        study run does not record."""
        key = int(hashlib.sha256(self.run_id.encode()).hexdigest(), 16)
        return int(np.random.SeedSequence(seed, spawn_key=(key,)).generate_state(1)[0])

    def run_params(self, seed: int) -> dict[str, Any]:
        """The new study run's params: how many trials seeded it, its sampler's seed (`sampler_seed`)."""
        return {
            PARAM_WARM_START_TRIALS: len(self.points),
            PARAM_WARM_START_SAMPLER_SEED: self.sampler_seed(seed),
        }

    def run_tags(self) -> dict[str, str]:
        """The new study run's tags: the earlier study run, and any accepted difference in training."""
        tags = {TAG_WARM_START: self.run_id}
        if self.accepted:
            tags[TAG_WARM_START_ACCEPTED] = self.differences()[:5000]
        return tags


def load_warm_start(spec: JobSpec, uri: str, study: str, accept: Iterable[str] = ()) -> WarmStart:
    """The seed of `spec`'s search from the earlier study `study` (a study name, or its study run id, in
    the store `uri`), or a one-line DynconvError: study not found, searches not compatible, trained
    otherwise in a group not in `accept` (names of `ACCEPTABLE`), no trial left to seed with."""
    groups = _accepted_groups(accept)
    parent = find_study_run(uri, study)
    name = parent.data.tags.get(TAG_STUDY, study)
    earlier = load_study_spec(uri, parent)
    check_compatible(spec, earlier, name)
    accepted = check_same_training(spec, earlier, name, groups)
    ranking = Ranking.for_spec(spec)
    trials = list_trials(uri, parent, ranking.metric, [m for m, _ in ranking.objectives])
    return seed_from(spec, trials, name, parent.info.run_id, accepted)


def _accepted_groups(accept: Iterable[str]) -> frozenset[str]:
    """The groups `--warm-start-accept` names (blank names ignored); one line for an unknown one."""
    groups = frozenset(a.strip() for a in accept if a.strip())
    unknown = sorted(groups - set(ACCEPTABLE))
    if unknown:
        raise DynconvError(
            f"--warm-start-accept: unknown {', '.join(map(repr, unknown))}; "
            f"choose among {', '.join(ACCEPTABLE)}"
        )
    return groups


def training_fields(spec: JobSpec) -> dict[str, tuple[str, Any]]:
    """The settings a warm start compares, besides the searched values: dotted field -> (the
    `ACCEPTABLE` group that may let it differ, its value). The dataset is its root (None: the synthetic
    set, then named by its settings; where it is written does not change it) and image size;
    `train.epochs` counts unless the search sets it; the scheduler's settings unless it is `none`.
    Other `train.*` settings (batch size, optimizer, learning-rate schedule) are not compared."""
    data, scheduler = spec.data, spec.scheduler
    fields: dict[str, tuple[str, Any]] = {
        "model.name": ("model", spec.model.name),
        "model.args": ("model", dict(spec.model.args)),
        "data.root": ("data", str(absolute_path(data.root, "data.root")) if data.root else None),
        "data.image_size": ("data", data.image_size),
        "scheduler.name": ("scheduler", scheduler.name),
    }
    if data.root is None:
        for key in ("classes", "per_class", "size", "seed"):
            fields[f"data.synthetic.{key}"] = ("data", getattr(data.synthetic, key))
    if "epochs" not in spec.search.space:
        fields["train.epochs"] = ("epochs", spec.train.epochs)
    if scheduler.name != "none":
        fields["scheduler.grace_period"] = ("scheduler", scheduler.grace_period)
        fields["scheduler.reduction_factor"] = ("scheduler", scheduler.reduction_factor)
    return fields


def check_same_training(
    spec: JobSpec, earlier_spec: JobSpec, study: str, accept: frozenset[str] = frozenset()
) -> dict[str, str]:
    """The fields of `training_fields` in which the earlier study `study` trained otherwise than `spec`
    will (field -> "X there, Y here"), when every one is in an `accept`ed group; else a one-line
    refusal naming each field with both values and the groups that would accept them. A field only
    one side has follows from one both have (a synthetic set's settings from `data.root`)."""
    here, there = training_fields(spec), training_fields(earlier_spec)
    differ = {
        key: (group, there[key][1], value)
        for key, (group, value) in here.items()
        if key in there and not _same_value(there[key][1], value)
    }
    refused = [key for key, (group, _, _) in differ.items() if group not in accept]
    if refused:
        shown = "; ".join(f"{key} {_both(*differ[key][1:])}" for key in refused)
        groups = ",".join(dict.fromkeys(differ[key][0] for key in refused))
        raise DynconvError(
            f"--warm-start: study {study!r} trained otherwise than this study will ({shown}), so its "
            f"values would seed this search as if they measured its configurations; to seed it anyway, "
            f"add --warm-start-accept {groups}"
        )
    return {key: _both(there_value, value) for key, (_, there_value, value) in differ.items()}


def _same_value(a: Any, b: Any) -> bool:
    """Equal as a spec holds them; numbers by value (2 == 2.0, as YAML may read them back)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _both(there: Any, here: Any) -> str:
    return f"{there!r} there, {here!r} here"


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


def seed_from(
    spec: JobSpec,
    trials: Iterable[TrialInfo],
    study: str,
    run_id: str,
    accepted: Mapping[str, str] | None = None,
) -> WarmStart:
    """The trials of `trials` (of the study `study`, run `run_id`) that seed the search of `spec`, by its
    ranking's rule, with their values; a one-line DynconvError when none is left. `accepted`: what the
    study's training differs in (`check_same_training`), recorded on the WarmStart."""
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
    return WarmStart(study, run_id, tuple(points), tuple(rewards), dict(skipped), dict(accepted or {}))


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
