"""One ranking of a study's trials: the rule that says which trial is the study's best.

The study driver ranks once, from Tune's results (`dynconv.tune.study_result.summarise_trials`), and
records the ranking as the study run's trial table; the evaluation, the confirmation, `rerun STUDY`, the
report and `dynconv trials` read that record instead of ranking MLflow's metric histories again. The
console's running best and warm start's choice of trials apply the same rule to what they see.

What is ranked: each trial's LAST reported value of the ranked metric (`search.metric`, or `objective`
for a weighted `{metric: weight}` mix, see `dynconv.spec.metrics`) in `search.mode`. The last value is what
the evaluated final checkpoint scores and what OptunaSearch told Optuna; the best epoch's value is
neither.

The rule:

1. FAILED, DIVERGED (a loss that stopped being finite, `dynconv.spec.metrics.diverged`) and INCOMPLETE
   trials (their MLflow record lost a write) and trials without a finite value are never ranked (a
   multi-objective trial needs a finite last value of every objective).
2. Trials that ran all their epochs come before trials that stopped early (ASHA stopped those for being
   worse at a rung, on a smaller budget).
3. Within each group, by the ranked value in its mode (`max`: higher first, `min`: lower first).
4. Ties by trial id, so the order is the same on every call.

Multi-objective (`search.objectives`): the Pareto trials (`pareto_front`, over the ranked trials' last
objective values: a trial is on the front when no other is at least as good on every objective and
strictly better on one) come first, then the others; within each of those, rule 2, then the objectives
compared one after the other, each in its own mode (first objective first: the tie rule), then rule 4.

Pure (no Ray, Optuna or MLflow): a function of the spec's search section, ranking any object with the
attributes of `RankedTrial`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

Point = Sequence[float] | None


def _usable(point: Point, n: int) -> bool:
    return point is not None and len(point) == n and all(v is not None and math.isfinite(v) for v in point)


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Whether `a` is at least as good as `b` on every objective and strictly better on one."""
    sign = [1.0 if m == "max" else -1.0 for m in modes]
    ge = all(s * x >= s * y for s, x, y in zip(sign, a, b, strict=True))
    return ge and any(s * x > s * y for s, x, y in zip(sign, a, b, strict=True))


def pareto_front(points: Sequence[Point], modes: Sequence[str]) -> list[int]:
    """Indices (in input order) of the non-dominated points. A point that is None, of the wrong
    length or holds a NaN (a failed trial, a metric never reported) is never on the front; equal
    points are all on it."""
    if any(m not in ("max", "min") for m in modes):
        raise ValueError(f"modes must be 'max' or 'min', got {list(modes)}")
    ok = [i for i, p in enumerate(points) if _usable(p, len(modes))]
    return [
        i
        for i in ok
        if not any(dominates(points[j], points[i], modes) for j in ok if j != i)  # type: ignore[arg-type]
    ]


UNRANKED_STATUSES = ("FAILED", "DIVERGED", "INCOMPLETE")
"""A failed trial has no result; a diverged one has garbage weights, whatever its accuracy says; an
incomplete one lost part of its MLflow record (an epoch, its checkpoint), which readers would miss."""


class RankedTrial(Protocol):
    """What the ranking reads of a trial."""

    @property
    def trial_id(self) -> str: ...  # Tune's trial id: the tie-break

    @property
    def status(self) -> str: ...  # UNRANKED_STATUSES are never ranked

    @property
    def completed(self) -> bool: ...  # ran all its epochs (False: stopped early)

    @property
    def value(self) -> float | None: ...  # last reported value of the ranked metric

    @property
    def objectives(self) -> Mapping[str, float | None]: ...  # last values of the objectives (multi)


T = TypeVar("T", bound=RankedTrial)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass(frozen=True)
class Ranking:
    """How a study ranks its trials: the ranked metric and its mode; `objectives` ((metric, mode) in the
    spec's order) for a multi-objective study, whose ranked metric is the first objective."""

    metric: str
    mode: str
    objectives: tuple[tuple[str, str], ...] = ()
    weights: tuple[tuple[str, float], ...] = ()  # the mix behind `objective` (a weighted search)

    def __post_init__(self) -> None:
        modes = [self.mode, *(m for _, m in self.objectives)]
        if any(m not in ("max", "min") for m in modes):
            raise ValueError(f"modes must be 'max' or 'min', got {modes}")

    @classmethod
    def for_spec(cls, spec: Any) -> Ranking:
        """The ranking of the study `spec` describes (`search.tune_metric`, `tune_mode`, `objectives`)."""
        search = spec.search
        weights = tuple(search.metric.items()) if isinstance(search.metric, dict) else ()
        return cls(search.tune_metric, search.tune_mode, tuple((search.objectives or {}).items()), weights)

    @property
    def best_metric(self) -> str:
        """The parent run's metric holding the best trial's value: `best_val_acc`, `best_val_loss`, ..."""
        return f"best_{self.metric}"

    def describe(self) -> str:
        """What the trials are ranked on, in words, wherever it is shown (the plan, the parent run's
        `dynconv.ranked_on`, the description, warm start): `val_loss (min)`, `objective = 0.5*val_acc +
        0.5*val_acc_worst (max)`, or `Pareto set on val_loss (min), val_acc (max)` (the tie rule follows
        the objectives' order)."""
        if self.objectives:
            return "Pareto set on " + ", ".join(f"{m} ({mode})" for m, mode in self.objectives)
        if self.weights:
            mix = " + ".join(f"{w:g}*{m}" for m, w in self.weights)
            return f"{self.metric} = {mix} ({self.mode})"
        return f"{self.metric} ({self.mode})"

    def rankable(self, trial: RankedTrial) -> bool:
        """Whether `trial` takes part in the ranking (rule 1 of the module doc)."""
        if trial.status in UNRANKED_STATUSES:
            return False
        if self.objectives:
            return all(_finite(trial.objectives.get(m)) for m, _ in self.objectives)
        return _finite(trial.value)

    def rank(self, trials: Iterable[T]) -> list[T]:
        """The rankable trials of `trials`, best first (the rule of the module doc)."""
        pool = [t for t in trials if self.rankable(t)]
        front = {id(pool[i]) for i in self._front_indices(pool)}
        return sorted(pool, key=lambda t: (id(t) not in front, not t.completed, *self._key(t), t.trial_id))

    def front(self, trials: Iterable[T]) -> list[T]:
        """The Pareto set of a multi-objective study, in rank order ([] for a single objective)."""
        ranked = self.rank(trials)
        return [ranked[i] for i in self._front_indices(ranked)]

    def _front_indices(self, pool: list[T]) -> list[int]:
        if not self.objectives:
            return []
        points = [[float(t.objectives[m]) for m, _ in self.objectives] for t in pool]  # type: ignore[arg-type]
        return pareto_front(points, [mode for _, mode in self.objectives])

    def _key(self, trial: RankedTrial) -> tuple[float, ...]:
        """The values compared, each signed so that smaller sorts first (better)."""
        pairs = (
            [(trial.objectives[m], mode) for m, mode in self.objectives]
            if self.objectives
            else [(trial.value, self.mode)]
        )
        return tuple(-float(v) if mode == "max" else float(v) for v, mode in pairs)  # type: ignore[arg-type]
