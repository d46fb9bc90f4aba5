"""The report's input: per study, its best complete evaluation run with the study's spec, read through
`dynconv.tracking`.

Which evaluation stands for a study (its parent run): among its FINISHED evaluation runs (an interrupted
or failed one is KILLED or FAILED and holds only part of its metrics), the one of the best rank (the
`dynconv.rank` tag: the evaluated trial's place in the study's ranking, 1 unless the best trial had no
checkpoint; "manual" evaluations of a trial chosen by run id never stand for a study); among those, the
newest. Evaluating a study twice therefore counts it once.

No YAML file and no checkpoint is read: the study's `spec.yaml` artifact (which model, which stem), the
evaluated trial's `train.channel_drop` param, and the evaluation run's `evaluation.json` and
`predictions/predictions_<S>.npz`. Imports `dynconv.tracking`
(never `mlflow` directly) and `dynconv.report.roles`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dynconv.data.channels import SUBSET_NAMES
from dynconv.errors import DynconvError
from dynconv.models.resnet import DEFAULT_STEM
from dynconv.tracking.artifacts import download_yaml, load_predictions
from dynconv.tracking.find import experiments as find_experiments
from dynconv.tracking.find import search_runs, try_get_run
from dynconv.tracking.layout import (
    CONFIRMATION_ARTIFACT,
    TAG_DYNAMIC,
    TAG_PARENT,
    TAG_RANK,
    TAG_SOURCE_RUN,
    TAG_STUDY,
    TAG_VERDICT,
)


@dataclass
class EvalRecord:
    """One evaluation run (a study's best trial over the subsets), as the report reads it from MLflow."""

    study: str
    experiment: str
    parent_run_id: str
    eval_run_id: str
    source_run_id: str
    model: str
    model_args: dict[str, Any]
    dynamic: bool
    started_ms: int
    summary: dict[str, Any]
    metrics: dict[str, float]
    dataset: str
    uri: str = field(repr=False)
    channel_drop: float | None = None  # train.channel_drop of the evaluated trial (None: unknown)
    confirmation: dict[str, Any] | None = None  # the study's confirmation over seeds, when it has one
    _correct: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _y_true: np.ndarray | None = field(default=None, repr=False)

    @property
    def stem(self) -> str | None:
        if self.model.startswith("resnet"):
            return str(self.model_args.get("stem", DEFAULT_STEM))
        return self.model_args.get("stem")

    @property
    def test_set_id(self) -> str:
        return str(self.summary.get("test_set_id", "unknown"))

    @property
    def n(self) -> int:
        return int(self.metrics.get("n_test", self.summary.get("n", 0)))

    @property
    def subsets(self) -> list[str]:
        return [s for s in SUBSET_NAMES if f"acc_{s}" in self.metrics]

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in sorted(self.model_args.items()))
        return f"{self.model}[{args}]" if args else self.model

    def m(self, measure: str, subset: str = "RGB") -> float | None:
        return self.metrics.get(f"{measure}_{subset}")

    def _load_predictions(self) -> None:
        for subset, (y_true, y_pred) in load_predictions(self.uri, self.eval_run_id).items():
            self._correct[subset] = y_true == y_pred
            self._y_true = y_true

    def correct(self, subset: str = "RGB") -> np.ndarray:
        """Per-image correctness on `subset` (downloaded once from the run's predictions artifact)."""
        if not self._correct:
            self._load_predictions()
        if subset not in self._correct:
            raise DynconvError(f"evaluation run {self.eval_run_id} has no predictions for subset {subset}")
        return self._correct[subset]

    def y_true(self) -> np.ndarray:
        if self._y_true is None:
            self._load_predictions()
        return self._y_true if self._y_true is not None else np.zeros(0, np.int64)


def _dataset_label(spec_data: dict[str, Any] | None) -> str:
    if not spec_data:
        return "unknown dataset"
    if spec_data.get("root"):
        return str(spec_data["root"])
    syn = spec_data.get("synthetic") or {}
    return (
        f"synthetic ({syn.get('classes')} classes, {syn.get('per_class')} per class, seed {syn.get('seed')})"
    )


def _channel_drop(uri: str, source_run_id: str, spec: dict[str, Any]) -> float | None:
    """The channel drop the evaluated trial trained with: its run's param (it may have been searched),
    else the study spec's; None when neither says."""
    trial = try_get_run(uri, source_run_id) if source_run_id else None
    value = trial.data.params.get("train.channel_drop") if trial is not None else None
    if value is None:
        value = (spec.get("train") or {}).get("channel_drop")
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _record(uri: str, run: Any, experiment: str, parent: Any, spec: dict[str, Any]) -> EvalRecord:
    """One evaluation run as a record: model from the study's spec (else the evaluation's own summary)."""
    tags = run.data.tags
    summary = download_yaml(uri, run.info.run_id, "evaluation.json") or {}
    params = run.data.params
    model = (spec.get("model") or {}).get("name") or summary.get("model") or params.get("model", "?")
    args = (spec.get("model") or {}).get("args") or summary.get("model_args") or {}
    return EvalRecord(
        study=tags.get(TAG_STUDY, "?"),
        experiment=experiment,
        parent_run_id=tags.get(TAG_PARENT, ""),
        eval_run_id=run.info.run_id,
        source_run_id=tags.get(TAG_SOURCE_RUN, ""),
        model=model,
        model_args=dict(args),
        dynamic=tags.get(TAG_DYNAMIC) == "true",
        started_ms=(parent.info.start_time if parent is not None else run.info.start_time) or 0,
        summary=summary,
        metrics=dict(run.data.metrics),
        dataset=_dataset_label(spec.get("data")),
        uri=uri,
        channel_drop=_channel_drop(uri, tags.get(TAG_SOURCE_RUN, ""), spec),
    )


def _rank(run: Any) -> int | None:
    """The evaluated trial's rank in its study (runs from before the tag existed were rank 1); None for
    a manual evaluation."""
    rank = run.data.tags.get(TAG_RANK, "1")
    return int(rank) if rank.isdigit() else None


def best_evaluations(runs: Sequence[Any]) -> list[Any]:
    """Per study (parent run), the evaluation run of the best rank, the newest of them (`runs` come
    newest first); manual evaluations left out. The runs must already be the complete (FINISHED) ones."""
    chosen: dict[str, tuple[int, Any]] = {}
    for run in runs:
        rank = _rank(run)
        study = run.data.tags.get(TAG_PARENT) or run.info.run_id
        if rank is not None and (study not in chosen or rank < chosen[study][0]):
            chosen[study] = (rank, run)
    return [run for _, run in chosen.values()]


def load_records(uri: str, experiments: Sequence[str] | None = None) -> list[EvalRecord]:
    """Per study in the experiments (default: all), its best complete evaluation (see the module doc),
    newest study first."""
    exps = find_experiments(uri, experiments)
    if not exps:
        return []
    names = {e.experiment_id: e.name for e in exps}
    runs = search_runs(
        uri, "tags.`dynconv.role` = 'evaluation' and attributes.status = 'FINISHED'", list(names)
    )
    parents: dict[str, Any] = {}
    specs: dict[str, Any] = {}
    confirmations: dict[str, Any] = {}
    records = []
    for run in best_evaluations(runs):
        tags = run.data.tags
        parent_id = tags.get(TAG_PARENT, "")
        if parent_id not in parents:
            parents[parent_id] = try_get_run(uri, parent_id)
            specs[parent_id] = download_yaml(uri, parent_id, "spec.yaml") if parents[parent_id] else None
            confirmed = parents[parent_id] and TAG_VERDICT in parents[parent_id].data.tags
            confirmations[parent_id] = (
                download_yaml(uri, parent_id, CONFIRMATION_ARTIFACT) if confirmed else None
            )
        experiment = names.get(run.info.experiment_id, run.info.experiment_id)
        record = _record(uri, run, experiment, parents[parent_id], specs[parent_id] or {})
        record.confirmation = confirmations[parent_id]
        records.append(record)
    records.sort(key=lambda r: r.started_ms, reverse=True)
    return records
