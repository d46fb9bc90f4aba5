"""The job spec: one validated, frozen object built from a `tune_jobs/*.yaml` file.

Every layer (study driver, trial driver, training workers, evaluation, rerun) receives this object or
its JSON form; there are no hidden defaults deeper down. Unknown keys, wrong types, empty or inverted
ranges, non-finite numbers, unknown model names, repeated YAML keys, YAML aliases and a `train.*` value
the search would override are reported as one line naming the file and the key, before Ray starts;
quoted values are shortened (`dynconv.spec.checks.short_repr`).

This module holds `JobSpec` (the whole study, the checks that span its sections, the derived values),
`SpecError` and the loading: YAML, `--set` overrides, one-line error messages. The sections themselves
(`TrainSpec`, `SearchSpec`, ...) live in `dynconv.spec.sections` and are re-exported here: import every
spec name from `dynconv.spec`. Imports pydantic, yaml, `dynconv.spec.sections`, `dynconv.spec.checks`
(and `dynconv.spec.metrics`, lazily); never Ray, Optuna or MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from dynconv.errors import DynconvError, one_line
from dynconv.spec.checks import SAFE_NAME_PATTERN, check_metrics, short_repr, shorten
from dynconv.spec.sections import (
    ConfirmSpec,
    DataSpec,
    EvaluateSpec,
    FailureSpec,
    MlflowSpec,
    ModelSpec,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
    StrictModel,
    TrainSpec,
    safe_name,
)

__all__ = ["JobSpec", "SpecError", "absolute_path", "load_spec", "parse_spec", "resolve_tracking_uri"]


class SpecError(DynconvError, ValueError):
    """A job spec that does not validate."""


class JobSpec(StrictModel):
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
    confirm: ConfirmSpec = Field(default_factory=ConfirmSpec)
    storage_path: str = "ray_results"

    @field_validator("study")
    @classmethod
    def _safe_study(cls, name: str) -> str:
        return safe_name(name, SAFE_NAME_PATTERN, "letters, digits, '_.-'", 100)

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
        from dynconv.spec.metrics import reported_metrics

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
        """The study's MLflow tracking URI (`resolve_tracking_uri` of `mlflow.tracking_uri`)."""
        return resolve_tracking_uri(self.mlflow.tracking_uri)

    def storage_uri(self) -> str:
        """Absolute Ray storage path (cloud URIs are passed through)."""
        if "://" in self.storage_path:
            return self.storage_path
        return str(absolute_path(self.storage_path, "storage_path"))

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

        def absolute(p: str | None, key: str) -> str | None:
            return None if p is None or "://" in p else str(absolute_path(p, key))

        data["storage_path"] = self.storage_uri()
        data["mlflow"]["tracking_uri"] = self.tracking_uri()
        for key in ("root", "cache_dir"):
            data["data"][key] = absolute(data["data"][key], f"data.{key}")
        data["data"]["synthetic"]["dir"] = absolute(data["data"]["synthetic"]["dir"], "data.synthetic.dir")
        return JobSpec.model_validate(data)

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, the form that travels to Ray workers and into MLflow and checkpoints."""
        return self.model_dump(mode="json")


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking store a study or command uses, in one place: `uri` (the spec's `mlflow.tracking_uri`
    or `--tracking-uri`), else $MLFLOW_TRACKING_URI, else ./mlflow.db (embedded sqlite). A relative
    sqlite path or a plain directory is made absolute: Ray workers run in other working directories."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(absolute_path(uri[len("sqlite:///") :], "MLflow tracking URI"))
    if "://" not in uri:
        return absolute_path(uri, "MLflow tracking URI").as_uri()
    return uri


def absolute_path(path: str, what: str) -> Path:
    """`path` (`~` expanded) made absolute with its symlinks resolved; a symlink loop (`ln -s x x`),
    which Python 3.11's `resolve` raises RuntimeError for, is a one-line error naming `what`."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError):
        raise SpecError(f"{what}: {path} is a symlink loop (it never leads to a file or directory)") from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def _format_validation_error(source: str, err: ValidationError) -> str:
    """One line: `SOURCE: KEY: message; KEY: message`. Keys come from the spec (an unknown key may be
    huge), so each part of a key is shortened like a quoted value."""
    parts = []
    for e in err.errors():
        key = ".".join(shorten(str(p)) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{key}: {msg}")
    return f"{source}: " + "; ".join(parts)


def _refuse_searched_values(spec: JobSpec, source: str) -> None:
    """Refuse a `train.*` value the spec sets while the search space searches it: the search would
    silently replace it. "Set" is what pydantic records as given (`model_fields_set`), not a comparison
    with the default, so `train.lr: 0.05` (the default) beside `search.space.lr` is refused too.

    Applied to what a user wrote (`load_spec`: the YAML file and `--set`), never in `parse_spec`: a
    spec dumped to JSON (trial specs, checkpoints, the study's spec artifact) carries every field.
    `train.epochs` and `train.batch_size` are required, so writing them is no error even when searched.
    """
    train = spec.train
    for name in spec.search.space:
        if name == "schedule":  # the search sets train.schedule.name and keeps the warm-up
            given = "schedule" in train.model_fields_set and "name" in train.schedule.model_fields_set
            key, value = "train.schedule.name", train.schedule.name
        else:
            given = name in train.model_fields_set and not TrainSpec.model_fields[name].is_required()
            key, value = f"train.{name}", getattr(train, name)
        if given:
            raise SpecError(
                f"{source}: {key}={short_repr(value)} is set but search.space.{name} searches it, so the "
                f"value would be ignored; remove one (to fix it, search one value: "
                f"{{type: choice, values: [{value}]}})"
            )


def _refuse_confirm_left_off(spec: JobSpec, source: str) -> None:
    """Refuse a `confirm` section that sizes a confirmation (top_k, seeds, alpha) but never says
    `enabled`: it is off by default, so the sizes would be silently ignored. An explicit
    `enabled: false` (or `--set confirm.enabled=false`) is respected. Applied to what a user wrote, as
    `_refuse_searched_values`."""
    given = spec.confirm.model_fields_set
    sized = sorted(given - {"enabled"})
    if sized and "enabled" not in given:
        keys = ", ".join(f"confirm.{k}" for k in sized)
        raise SpecError(
            f"{source}: {keys} set, but confirm.enabled is not, and a confirmation is off by default, so "
            "the values would be ignored; add confirm.enabled: true (or enabled: false to keep it off)"
        )


def parse_spec(data: dict[str, Any], source: str = "<spec>") -> JobSpec:
    """Validate a dict into a JobSpec, turning pydantic's report into one line naming file and keys."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_validation_error(source, err)) from None


class _RefusedYAML(yaml.MarkedYAMLError):
    """Valid YAML that a spec may not contain: a repeated key, an alias (see `_SpecLoader`)."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader refusing aliases (`*name`).

    A spec is a short hand-written file: an anchor saves nothing that writing the value out would not,
    while aliases are how a kilobyte of YAML becomes gigabytes (a "billion laughs" document: nine levels
    of ten aliases each are 10^9 values) in everything that walks the value: the repr in an error
    message, the JSON sent to workers, the MLflow params. Capping their number would not bound that
    growth (90 aliases suffice), so a spec may hold none; the first one is refused with its line.
    """

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _RefusedYAML(
                f"alias *{shorten(str(event.anchor))}: a spec may not use YAML aliases (one alias can "
                "expand a small file into gigabytes); write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def _refuse_duplicate_keys(node: yaml.Node, path: str) -> None:
    """A key repeated in one mapping is an error naming it and both lines: YAML's loaders keep the last
    one silently (a second `study:` line renamed the study). Walks the composed nodes, so the dotted
    key is known; without aliases the nodes form a tree and the walk is linear."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{path}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            _refuse_duplicate_keys(value_node, path)  # pydantic refuses such keys; `<<:` merges
            continue
        dotted = shorten(f"{path}.{key_node.value}" if path else key_node.value)
        if key_node.value in first_line:
            raise _RefusedYAML(
                f"duplicate key {dotted} (first on line {first_line[key_node.value]}); YAML would keep "
                "only the last one",
                key_node.start_mark,
            )
        first_line[key_node.value] = key_node.start_mark.line + 1
        _refuse_duplicate_keys(value_node, dotted)


def _load_yaml(text: str) -> Any:
    """`text` parsed as one YAML document like `yaml.safe_load`, refusing aliases and repeated keys."""
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, "")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_spec(path: Path, overrides: list[str] | None = None, num_samples: int | None = None) -> JobSpec:
    """Read a YAML job spec, apply `--set key=value` overrides, validate, and refuse a `train.*` value
    the search would override (`_refuse_searched_values`)."""
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        data = _load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read ({err.strerror or err})") from None
    except _RefusedYAML as err:
        raise SpecError(f"{path}: line {err.problem_mark.line + 1}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML ({one_line(err)})") from None
    except RecursionError:
        raise SpecError(f"{path}: not valid YAML (nested too deeply)") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec must be a mapping of sections")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {short_repr(item)}: expected KEY=VALUE")
        try:
            value = _load_yaml(raw)
        except _RefusedYAML as err:
            raise SpecError(f"--set {short_repr(item)}: {err.problem}") from None
        except yaml.YAMLError as err:
            why = getattr(err, "problem", None) or one_line(err)
            raise SpecError(f"--set {short_repr(item)}: the value is not valid YAML ({why})") from None
        _set_dotted(data, key.strip(), value)
    if num_samples is not None:
        _set_dotted(data, "search.num_samples", num_samples)
    spec = parse_spec(data, source=str(path))
    _refuse_searched_values(spec, source=str(path))
    _refuse_confirm_left_off(spec, source=str(path))
    return spec
