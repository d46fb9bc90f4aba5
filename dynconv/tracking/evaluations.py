"""Recording an evaluation: its child run, params, metrics, tables, predictions and plots.

MLflow layout of an evaluation run (`dynconv.role=evaluation`, a child of the study run): metrics
`acc_<S>`, `acc_low_<S>`, `acc_high_<S>`, `precision_<S>`, `recall_<S>`, `f1_<S>`, `top5_<S>`,
`flops_<S>`, `latency_ms_<S>`, `throughput_<S>`, `params`; artifacts `subsets.csv`, `subsets.md`,
`subsets.json` (MLflow table), `evaluation.json`, `predictions/predictions_<S>.npz` (per-image labels,
predictions, top-5 hits and the test-set id, so `dynconv report` can pair models image by image),
and `plots/` (accuracy by subset with CIs, confusion matrices; on the best evaluated trial's run also
learning curves of the top-ranked trials and lr / augment strength against validation accuracy for all
trials). An evaluation run is FINISHED only once all of that is logged; one cut short is closed KILLED
(interrupted) or FAILED (error), and readers skip it.

Imports `dynconv.tracking.*`, the result types and table files of `dynconv.evaluation` (which know
nothing of MLflow) and `dynconv.plots`; never `dynconv.tune.study_evaluation` (that imports this module).
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynconv.evaluation.results import Evaluation
from dynconv.evaluation.tables import write_table_files
from dynconv.tracking.find import TrialInfo
from dynconv.tracking.layout import (
    TAG_DYNAMIC,
    TAG_MODEL,
    TAG_RANK,
    TAG_ROLE,
    TAG_SOURCE_RUN,
    TAG_STUDY,
    TAG_TEST_SET,
    closed_on_error,
    create_child_run,
    log_artifact,
    log_metrics,
    log_params,
)
from dynconv.tracking.store import client


def log_evaluation(uri: str, run_id: str, ev: Evaluation, title: str = "") -> None:
    """Metrics, tables, predictions and per-evaluation plots of `ev` into MLflow run `run_id`."""
    from dynconv import plots

    c = client(uri)
    log_metrics(uri, run_id, ev.metrics())
    with tempfile.TemporaryDirectory(prefix="dynconv_eval_") as tmp:
        out = Path(tmp)
        files = write_table_files(ev, out)
        for key in ("csv", "md", "json"):
            log_artifact(uri, run_id, files[key])
        c.log_artifacts(run_id, str(files["predictions"]), "predictions")
        with warnings.catch_warnings():  # pandas deprecation noise from inside mlflow
            warnings.simplefilter("ignore")
            c.log_table(run_id, data=_columns([r.row() for r in ev.results]), artifact_file="subsets.json")
        plot_dir = out / "plots"
        plots.accuracy_by_subset([r.row() for r in ev.results], plot_dir / "accuracy_by_subset.png", title)
        plots.confusion_grid(
            {r.subset: r.confusion for r in ev.results}, plot_dir / "confusion.png", ev.class_names, title
        )
        c.log_artifacts(run_id, str(plot_dir), "plots")


def _columns(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Row dicts -> column dict (what `MlflowClient.log_table` takes), NaN/None as None."""
    keys = list(rows[0]) if rows else []

    def clean(v: Any) -> Any:
        return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v

    return {k: [clean(r[k]) for r in rows] for k in keys}


def log_study_plots(
    uri: str, run_id: str, ranked: Sequence[TrialInfo], trials: Sequence[TrialInfo], metric: str, top: int = 5
) -> None:
    """Learning curves of the `top` first of `ranked` (the study's ranking, best first; labelled with
    their last value of the ranked `metric`) and lr / strength vs best val_acc of all `trials`."""
    from dynconv import plots

    with tempfile.TemporaryDirectory(prefix="dynconv_plots_") as tmp:
        out = Path(tmp)
        plots.learning_curves(
            {f"{t.name} ({metric} {t.value:.3f})": t.curves for t in ranked[:top]},
            out / "learning_curves.png",
        )
        points = [
            {
                "lr": t.param("lr"),
                "augment_strength": t.param("augment_strength"),
                "val_acc": t.best_val_acc,
                "outcome": t.outcome,
            }
            for t in trials
        ]
        plots.hyperparameter_scatter(points, out / "search.png")
        client(uri).log_artifacts(run_id, str(out), "plots")


def record_evaluation(
    uri: str,
    experiment_id: str,
    parent_run_id: str,
    study: str,
    ev: Evaluation,
    *,
    source_run_id: str,
    rank: str = "1",
    run_name: str = "evaluation",
    params: dict[str, Any] | None = None,
    title: str = "",
) -> str:
    """A new evaluation child run of the study holding `ev`, left RUNNING: the caller logs what else it
    claims and closes it FINISHED. Interrupted while logging, it is closed KILLED (FAILED on an error)."""
    run_id = create_child_run(
        uri,
        experiment_id,
        parent_run_id,
        run_name=run_name,
        tags={
            TAG_ROLE: "evaluation",
            TAG_STUDY: study,
            TAG_SOURCE_RUN: source_run_id,
            TAG_MODEL: ev.model_name,
            TAG_DYNAMIC: str(ev.dynamic).lower(),
            TAG_RANK: rank,
            TAG_TEST_SET: ev.test_set_id,
        },
    )
    with closed_on_error(uri, run_id):
        log_params(uri, run_id, {**evaluation_params(ev), **(params or {})})
        log_evaluation(uri, run_id, ev, title)
    return run_id


def evaluation_params(ev: Evaluation) -> dict[str, Any]:
    """Params of an evaluation run: what model, which input mode, which images."""
    params: dict[str, Any] = {
        "model": ev.model_name,
        **{f"model.{k}": v for k, v in ev.model_args.items()},
        "split": ev.split,
        "subsets": ",".join(r.subset for r in ev.results),
        "input": "subset channels + indices" if ev.dynamic else "zero-filled",
        "device": ev.device,
        "image_size": ev.image_size,
        "test_set_id": ev.test_set_id,
    }
    return params
