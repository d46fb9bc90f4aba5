"""The job spec: one validated, frozen object built from a `tune_jobs/*.yaml` file.

Every layer (study driver, trial driver, training workers, evaluation, rerun) receives this object or
its JSON form; there are no hidden defaults deeper down. Unknown keys, wrong types, empty or inverted
ranges and unknown model names are reported as one line naming the file and the key, before Ray starts.

This module holds `JobSpec` (the whole study, the checks that span its sections, the derived values),
`SpecError` and the loading: YAML, `--set` overrides, one-line error messages. The sections themselves
(`TrainSpec`, `SearchSpec`, ...) live in `dynconv.spec_sections` and are re-exported here: import every
spec name from `dynconv.spec`. Imports pydantic, yaml, `dynconv.spec_sections`, `dynconv.spec_checks`
(and `dynconv.metrics`, lazily); never Ray, Optuna or MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from dynconv.errors import DynconvError
from dynconv.spec_checks import SAFE_NAME_PATTERN, check_metrics
from dynconv.spec_sections import (
    CHOICE_SEARCH_KEYS,
    REQUIRED_SEARCH_KEYS,
    DataSpec,
    EvaluateSpec,
    FailureSpec,
    MlflowSpec,
    ModelSpec,
    ParamSpec,
    ResourcesSpec,
    SchedulerSpec,
    ScheduleSpec,
    SearchSpec,
    SyntheticSpec,
    TrainSpec,
    _safe_name,
    _Strict,
)

__all__ = [
    "CHOICE_SEARCH_KEYS",
    "REQUIRED_SEARCH_KEYS",
    "DataSpec",
    "EvaluateSpec",
    "FailureSpec",
    "JobSpec",
    "MlflowSpec",
    "ModelSpec",
    "ParamSpec",
    "ResourcesSpec",
    "ScheduleSpec",
    "SchedulerSpec",
    "SearchSpec",
    "SpecError",
    "SyntheticSpec",
    "TrainSpec",
    "absolute_tracking_uri",
    "load_spec",
    "parse_spec",
]


class SpecError(DynconvError, ValueError):
    """A job spec that does not validate."""


class JobSpec(_Strict):
    """A whole study, as written in a tune_jobs/*.yaml file."""

    study: str
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    train: TrainSpec
    search: SearchSpec
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    storage_path: str = "ray_results"

    @field_validator("study")
    @classmethod
    def _safe_study(cls, name: str) -> str:
        return _safe_name(name, SAFE_NAME_PATTERN, "letters, digits, '_.-'", 100)

    @model_validator(mode="after")
    def _grace_fits(self) -> JobSpec:
        if self.scheduler.name == "asha" and self.scheduler.grace_period > self.train.epochs:
            raise ValueError(
                f"scheduler.grace_period ({self.scheduler.grace_period}) exceeds "
                f"train.epochs ({self.train.epochs})"
            )
        return self

    @model_validator(mode="after")
    def _search_metrics_reported(self) -> JobSpec:
        from dynconv.metrics import reported_metrics

        t = self.train
        known = reported_metrics(t.val_subsets, t.subset_val_every, isinstance(self.search.metric, dict))
        field = "objectives" if self.search.multi_objective else "metric"
        check_metrics(f"search.{field}", self.search.metric_names(), known)
        if self.search.multi_objective and self.scheduler.name != "none":
            raise ValueError(
                "search.objectives: ASHA ranks trials on one metric and would stop the ones that trade RGB "
                "accuracy for robustness; set scheduler.name: none (every trial runs all epochs)"
            )
        return self

    # -- derived values: computed here once so every layer agrees -------------------------------------------

    @property
    def experiment(self) -> str:
        """MLflow experiment name (defaults to the study name)."""
        return self.mlflow.experiment or self.study

    def tracking_uri(self) -> str:
        """Resolved MLflow tracking URI: spec, then $MLFLOW_TRACKING_URI, then ./mlflow.db (absolute)."""
        uri = self.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        return absolute_tracking_uri(uri or "sqlite:///mlflow.db")

    def storage_uri(self) -> str:
        """Absolute Ray storage path (cloud URIs are passed through)."""
        if "://" in self.storage_path:
            return self.storage_path
        return str(Path(self.storage_path).expanduser().resolve())

    def with_params(self, params: dict[str, Any]) -> JobSpec:
        """A copy with searched `train.*` values applied, validated again."""
        data = self.model_dump(mode="json")
        for key, value in params.items():
            if key not in self.search.space and key not in data["train"]:
                raise SpecError(f"unknown trial parameter {key!r}")
            if key == "schedule" and isinstance(value, str):  # a searched schedule name keeps the warm-up
                data["train"]["schedule"]["name"] = value
            else:
                data["train"][key] = value
        return JobSpec.model_validate(data)

    def resolved(self) -> JobSpec:
        """A copy with every path and the tracking URI made absolute against the current directory.

        Done once in the study driver: Ray runs trial actors and workers in other working directories,
        where a relative `ray_results` or `data/synthetic` would point somewhere else.
        """
        data = self.model_dump(mode="json")

        def absolute(p: str | None) -> str | None:
            return None if p is None or "://" in p else str(Path(p).expanduser().resolve())

        data["storage_path"] = self.storage_uri()
        data["mlflow"]["tracking_uri"] = self.tracking_uri()
        for key in ("root", "cache_dir"):
            data["data"][key] = absolute(data["data"][key])
        data["data"]["synthetic"]["dir"] = absolute(data["data"]["synthetic"]["dir"])
        return JobSpec.model_validate(data)

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, the form that travels to Ray workers and into MLflow and checkpoints."""
        return self.model_dump(mode="json")


def absolute_tracking_uri(uri: str) -> str:
    """Make a relative sqlite/file store absolute: Ray workers run in other working directories."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def _format_validation_error(source: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{key}: {msg}")
    return f"{source}: " + "; ".join(parts)


def parse_spec(data: dict[str, Any], source: str = "<spec>") -> JobSpec:
    """Validate a dict into a JobSpec, turning pydantic's report into one line naming file and keys."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_validation_error(source, err)) from None


def load_spec(path: Path, overrides: list[str] | None = None, num_samples: int | None = None) -> JobSpec:
    """Read a YAML job spec, apply `--set key=value` overrides, validate."""
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec must be a mapping of sections")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            why = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise SpecError(f"--set {item!r}: the value is not valid YAML ({why})") from None
        _set_dotted(data, key.strip(), value)
    if num_samples is not None:
        _set_dotted(data, "search.num_samples", num_samples)
    return parse_spec(data, source=str(path))
