"""The study run's face in MLflow: its description, a learning-curve plot and the hyperparameter importances.

Called once at the end of `dynconv tune`. The description goes into the run's `mlflow.note.content` tag,
which the MLflow UI shows as the run's description; the plots are artifacts of the study run.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any

from dynconv.errors import one_line
from dynconv.spec import JobSpec
from dynconv.spec.ranking import Ranking
from dynconv.tracking.layout import TAG_FAILURE, log_artifact, log_metrics, set_tags
from dynconv.tracking.store import client, masked, store_errors

NOTE_TAG = "mlflow.note.content"
MIN_TRIALS_FOR_IMPORTANCE = 4


def study_note(spec: JobSpec, result: Any, evaluations: list[tuple[str, Any]]) -> str:
    """Markdown: what the study is, how its trials ended, the best trial (by the study's ranking, as in
    the console table and the parent run's tags) and its subset accuracies."""
    ranking = Ranking.for_spec(spec)
    space = ", ".join(
        f"{k} ({p.type} {p.values if p.type == 'choice' else f'{p.low:g}..{p.high:g}'})"
        for k, p in spec.search.space.items()
    )
    ended = result.outcomes()
    sched = "ASHA early stopping" if spec.scheduler.name == "asha" else "no early stopping"
    lines = [
        f"**Study `{spec.study}`**: {spec.search.algorithm.upper()} search over {space} for "
        f"`{spec.model.name}` {spec.model.args or ''}, {spec.train.epochs} epochs per trial, {sched} "
        f"on {ranking.describe()}.",
        "",
        f"**{len(result.trials)} trials** ({ended}).",
    ]
    best = result.best
    if best is not None:
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()
        )
        lines += [
            "",
            f"**Best trial** `{best.trial_id}` (run `{best.run_id}`): last {ranking.metric} "
            f"{best.value:.4f} after {best.epochs} epochs; {params}.",
        ]
    if evaluations:
        run_id, ev = evaluations[0]
        lines += [
            "",
            f"**Channel subsets** ({ev.split} split, {ev.results[0].n} images; evaluation run `{run_id}`):",
            "",
            "| subset | accuracy % |",
            "|---|---:|",
        ]
        lines += [f"| {r.subset} | {100 * r.accuracy:.2f} |" for r in ev.results]
    lines += confirmation_note(getattr(result, "confirmation", None))
    lines += [
        "",
        "Plots: `study/learning_curves.png`, `study/param_importances.png` (from "
        f"{MIN_TRIALS_FOR_IMPORTANCE} scored trials on, stopped ones with their partial value).",
    ]
    return "\n".join(lines)


def confirmation_note(outcome: Any) -> list[str]:
    """The description's lines on a confirmation over seeds: its verdict and what the registry did."""
    if outcome is None or outcome.verdict is None:
        return []
    lines = ["", "**Confirmation over seeds** (`confirmation.json`; the search's own trials left out):", ""]
    lines += [f"- {line}" for line in outcome.verdict.lines()]
    return lines + ([f"- {outcome.registry}"] if outcome.registry else [])


def append_confirmation_note(uri: str, run_id: str, outcome: Any) -> None:
    """Add a later confirmation's lines to a study run's description (`dynconv confirm`)."""
    note = client(uri).get_run(run_id).data.tags.get(NOTE_TAG, "")
    set_tags(uri, run_id, {NOTE_TAG: note + "\n" + "\n".join(confirmation_note(outcome))})


def trial_curves(uri: str, result: Any, metric: str) -> dict[str, list[tuple[int, float]]]:
    """Each trial's `metric` history from MLflow as (epoch, value) points."""
    c = client(uri)
    return {
        t.trial_id: [(int(m.step), float(m.value)) for m in c.get_metric_history(t.run_id, metric)]
        for t in result.trials
        if t.run_id
    }


def importances(spec: JobSpec, result: Any) -> dict[str, float] | None:
    """`optuna.importance.get_param_importances` over the ranked trials (None if fewer than 4).

    Each trial enters with the value the ranking uses, its LAST value of the ranked metric, which is
    what OptunaSearch told Optuna: ASHA-stopped trials count with their partial budget, as the search
    itself saw them. The direction is the ranking's mode.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    ranking = Ranking.for_spec(spec)
    scored = result.ranked
    if len(scored) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    dists = {
        k: CategoricalDistribution(p.values)
        if p.type == "choice"
        else FloatDistribution(p.low, p.high, log=p.type == "loguniform")
        for k, p in spec.search.space.items()
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if ranking.mode == "max" else "minimize")
    for t in scored:
        study.add_trial(optuna.trial.create_trial(params=t.params, distributions=dists, value=t.value))
    return dict(optuna.importance.get_param_importances(study))


def write_study_summary(spec: JobSpec, result: Any, evaluations: list[tuple[str, Any]]) -> None:
    """Description tag + learning curves + importances on the study run."""
    from dynconv.plots import param_importances, study_learning_curves

    uri, parent = result.tracking_uri, result.parent_run_id
    set_tags(uri, parent, {NOTE_TAG: study_note(spec, result, evaluations)})
    metric = Ranking.for_spec(spec).metric  # the reported metric ranked on (`objective` for weights)
    best = result.best.trial_id if result.best else None
    with tempfile.TemporaryDirectory(prefix="dynconv_study_") as tmp:
        curves = trial_curves(uri, result, metric)
        png = study_learning_curves(
            curves, Path(tmp) / "learning_curves.png", metric, best, f"{spec.study}: {metric}"
        )
        log_artifact(uri, parent, png, "study")
        scores = importances(spec, result)
        if scores is not None:
            title = f"{spec.study}: importance for {metric} ({len(result.trials)} trials)"
            log_artifact(
                uri, parent, param_importances(scores, Path(tmp) / "param_importances.png", title), "study"
            )
            log_metrics(uri, parent, {f"importance.{k}": v for k, v in scores.items()})


def describe_study_run(spec: JobSpec, result: Any, evaluations: list[tuple[str, Any]]) -> str | None:
    """`write_study_summary`; a failure is returned as its one line (and printed), never raised: the
    trials, checkpoints and evaluation are in MLflow already."""
    try:
        write_study_summary(spec, result, evaluations)
    except Exception as exc:
        what = f"{type(exc).__name__}: {masked(one_line(exc, limit=None))}"
        print(f"dynconv: study description/plots failed: {what}", file=sys.stderr)
        return one_line(what)
    return None


def mark_incomplete(uri: str, run_id: str, missing: list[str]) -> None:
    """Put what a study run is missing first in its description and in its `dynconv.failure` tag (best
    effort: the store may be what failed)."""
    line = "Incomplete: " + "; ".join(missing)
    with contextlib.suppress(*store_errors()):
        note = client(uri).get_run(run_id).data.tags.get(NOTE_TAG, "")
        set_tags(uri, run_id, {NOTE_TAG: f"**{line}**\n\n{note}".strip(), TAG_FAILURE: line[:5000]})
