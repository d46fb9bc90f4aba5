"""What a study produced: `StudyResult` (with one `TrialSummary` per trial) and `format_summary`, the
end-of-study table.

Plain data and formatting: built by the study driver (`dynconv.tune.study`) and read by the evaluation,
the study summary and the UI. Must not import Ray, Optuna, MLflow or `dynconv.tracking`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dynconv.spec import JobSpec


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
    """A last objective value for the table: 4 decimals, or "-" when the trial never reported it."""
    return "-" if value is None else f"{value:.4f}"
