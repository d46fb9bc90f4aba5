"""What a study produced: `StudyResult`, with one `TrialSummary` per trial, ranked once from Tune's
ResultGrid (`summarise_trials`); the trial table that records that ranking on the study run
(`table_rows`, read back by `trials_from_rows`); and `format_summary`, the printed table.

Plain data and formatting: reads the grid by attribute; imports no Ray, Optuna, MLflow or
`dynconv.tracking`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynconv.spec import JobSpec
from dynconv.spec.metrics import trial_outcome
from dynconv.spec.ranking import Ranking


@dataclass
class TrialSummary:
    """One row of the end-of-study table; ranked by `dynconv.spec.ranking` (it is a `RankedTrial`)."""

    trial_id: str
    params: dict[str, Any]
    value: float | None  # the LAST reported value of the ranked metric (None: never reported)
    epochs: int
    status: str  # FINISHED (all epochs), STOPPED (by ASHA), UNFINISHED (interrupted), FAILED, INCOMPLETE
    run_id: str | None
    objectives: dict[str, float | None] = field(default_factory=dict)  # multi-objective: last reported
    pareto: bool = False
    rank: int | None = None  # 1 = best (`apply_ranking`); None: not ranked (failed, never scored)

    @property
    def completed(self) -> bool:
        """Whether the trial ran all its epochs."""
        return self.status == "FINISHED"


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
    confirmation: Any = None  # dynconv.tune.confirm.ConfirmOutcome, when the study confirmed its best

    @property
    def ranked(self) -> list[TrialSummary]:
        """The ranked trials, best first (their `rank`, see `apply_ranking`; unranked ones left out)."""
        return sorted((t for t in self.trials if t.rank is not None), key=lambda t: t.rank or 0)

    @property
    def best(self) -> TrialSummary | None:
        """The first of `ranked` (in a multi-objective study, the first Pareto trial by the tie rule)."""
        ranked = self.ranked
        return ranked[0] if ranked else None

    @property
    def pareto(self) -> list[TrialSummary]:
        """The Pareto set of a multi-objective study in rank order (empty for a single objective)."""
        return [t for t in self.ranked if t.pareto]

    def outcomes(self) -> str:
        """How the trials ended, counted: "2 finished, 1 stopped" ("" without trials)."""
        counts: dict[str, int] = {}
        for t in self.trials:
            counts[t.status.lower()] = counts.get(t.status.lower(), 0) + 1
        return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def apply_ranking(trials: list[TrialSummary], ranking: Ranking) -> None:
    """Set each trial's `rank` (1 = best, by `ranking`; None when it is not ranked) and, in a
    multi-objective study, its `pareto` mark."""
    ranked = ranking.rank(trials)
    front = {id(t) for t in ranking.front(ranked)}
    order = {id(t): i for i, t in enumerate(ranked, start=1)}
    for t in trials:
        t.rank = order.get(id(t))
        t.pareto = id(t) in front


def summarise_trials(
    grid: Any, spec: JobSpec, runs: dict[str, str], incomplete: set[str] | frozenset[str] = frozenset()
) -> list[TrialSummary]:
    """One TrialSummary per trial of `grid` (last value of the ranked metric, epochs, outcome, its MLflow
    run id from `runs`, by trial id), ranked (`rank`), and in a multi-objective study the Pareto trials
    marked. A trial in `incomplete` (its MLflow record lost a write) is INCOMPLETE and never ranked."""
    ranking = Ranking.for_spec(spec)
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        value = _last_values(df, [ranking.metric])[ranking.metric]
        epochs = int(df["epoch"].max()) if df is not None and "epoch" in df else 0
        outcome = trial_outcome(metrics, epochs, spec.train.epochs, result.error is not None)
        if outcome == "stopped_early":  # or interrupted, when Tune never saw it end
            status = "STOPPED" if metrics.get("done") else "UNFINISHED"
        else:
            status = {"failed": "FAILED", "diverged": "DIVERGED", "finished": "FINISHED"}[outcome]
        if trial_id in incomplete:
            status = "INCOMPLETE"
        params = {k: result.config.get(k) for k in spec.search.space}
        objectives = _last_values(df, [m for m, _ in ranking.objectives])
        rows.append(TrialSummary(trial_id, params, value, epochs, status, runs.get(trial_id), objectives))
    apply_ranking(rows, ranking)
    return rows


def _last_values(df: Any, names: list[str]) -> dict[str, float | None]:
    """Each metric's last reported value (what Optuna was told and what the final checkpoint scores)."""
    out: dict[str, float | None] = {}
    for name in names:
        col = df[name].dropna() if df is not None and name in df else []
        out[name] = float(col.iloc[-1]) if len(col) else None
    return out


def table_rows(trials: list[TrialSummary], spec: JobSpec) -> list[dict[str, Any]]:
    """The trials as the rows of the study's recorded trial table, ranked ones first in rank order:
    rank (empty: not ranked), trial id, the searched values, the last value of the ranked metric (of
    each objective, and the Pareto mark, in a multi-objective study), epochs, outcome, MLflow run id."""
    ranking = Ranking.for_spec(spec)
    metrics = [m for m, _ in ranking.objectives] or [ranking.metric]
    rows = []
    for t in _in_table_order(trials):
        values = {m: t.value for m in metrics} if not ranking.objectives else dict(t.objectives)
        row: dict[str, Any] = {"rank": t.rank if t.rank is not None else "", "trial_id": t.trial_id}
        row |= {k: t.params.get(k) for k in spec.search.space}
        row |= {m: "" if values.get(m) is None else values[m] for m in metrics}
        if ranking.objectives:
            row["pareto"] = int(t.pareto)
        row |= {"epochs": t.epochs, "outcome": t.status, "run_id": t.run_id or ""}
        rows.append(row)
    return rows


def trials_from_rows(rows: list[dict[str, str]], spec: JobSpec) -> list[TrialSummary]:
    """The study's trials, with the ranks it recorded, from its trial table's rows (CSV text)."""
    ranking = Ranking.for_spec(spec)
    trials = []
    for row in rows:
        objectives = {m: _number(row.get(m)) for m, _ in ranking.objectives}
        trials.append(
            TrialSummary(
                trial_id=row["trial_id"],
                params={k: _typed(row.get(k)) for k in spec.search.space},
                value=_number(row.get(ranking.metric)),
                epochs=int(row.get("epochs") or 0),
                status=row["outcome"],
                run_id=row.get("run_id") or None,
                objectives=objectives,
                pareto=row.get("pareto") == "1",
                rank=int(row["rank"]) if row.get("rank") else None,
            )
        )
    return trials


def _number(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def _typed(text: str | None) -> Any:
    """A searched value read back from CSV text: a number when it is one (a choice may be text)."""
    if text in (None, ""):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _in_table_order(trials: list[TrialSummary]) -> list[TrialSummary]:
    """Ranked trials by rank, then the unranked ones by trial id."""
    ranked = sorted((t for t in trials if t.rank is not None), key=lambda t: t.rank or 0)
    return ranked + sorted((t for t in trials if t.rank is None), key=lambda t: t.trial_id)


FULL_TABLE_TRIALS = 40  # a table of this many rows still fits a screen
SHORT_TABLE_TRIALS = 10


def end_table_limit(trials: int) -> int | None:
    """How many rows the end-of-study table of `trials` trials prints: all of them while they fit a
    screen, else the first `SHORT_TABLE_TRIALS` (the whole table is the study run's `trials.csv`, and
    `dynconv trials STUDY` prints it)."""
    return None if trials <= FULL_TABLE_TRIALS else SHORT_TABLE_TRIALS


def format_summary(result: StudyResult, spec: JobSpec, limit: int | None = None) -> str:
    """The trial table, best trial first (unranked trials last, by id): trial, searched values, last
    value of the ranked metric (of each objective, with a Pareto mark, in a multi-objective study),
    epochs, outcome, MLflow run. `limit`: at most that many rows, then the counts per outcome and where
    the whole table is."""
    ranking = Ranking.for_spec(spec)
    keys = list(spec.search.space)
    objectives = [m for m, _ in ranking.objectives]  # multi-objective: last values and a Pareto mark
    ranked = [f"last {ranking.metric}"] if not objectives else []
    extra = [*(f"last {m}" for m in objectives), "pareto"] if objectives else []
    head = ["trial", *keys, *ranked, *extra, "epochs", "outcome", "mlflow run"]
    order = _in_table_order(result.trials)
    cut = limit is not None and len(order) > limit
    if cut:
        order = order[:limit]
    body = []
    for t in order:
        vals = [
            f"{t.params.get(k):.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k))
            for k in keys
        ]
        value = [_fmt(t.value)] if not objectives else []
        last = [_fmt(t.objectives.get(m)) for m in objectives] + (
            ["*" if t.pareto else ""] if objectives else []
        )
        body.append([t.trial_id, *vals, *value, *last, str(t.epochs), t.status, t.run_id or "-"])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if cut:
        lines.append(
            f"... the first {limit} of {len(result.trials)} trials ({result.outcomes()}); all of them: "
            f"dynconv trials {result.study} (or the study run's trials.csv)"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    """A last value for the table: 4 decimals, or "-" when the trial never reported it."""
    return "-" if value is None else f"{value:.4f}"
