"""The sections of a job spec: one frozen pydantic model per top-level key of a `tune_jobs/*.yaml` file.

`model`, `data` (with `data.synthetic`), `train` (with `train.schedule`), `search` (with its `space` of
`ParamSpec`), `scheduler`, `resources`, `mlflow`, `failure` and `evaluate`: their fields, defaults and the
validators that look at one section alone. `dynconv.spec` assembles them into `JobSpec` (with the checks
that span sections), loads YAML and re-exports every name here, so import them from `dynconv.spec`.

Imports pydantic, `dynconv.data.channels` and `dynconv.spec.checks` (and `dynconv.models`, lazily);
never `dynconv.spec`, Ray, Optuna or MLflow.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dynconv.data.channels import SUBSET_NAMES
from dynconv.spec.checks import (
    SAFE_EXPERIMENT_PATTERN,
    check_model_args,
    check_searched_field,
    first_non_finite,
    short_repr,
)


class StrictModel(BaseModel):
    """Unknown keys are errors, sections are frozen, and no float may be inf or nan: `.inf`, `.nan` and
    `1e309` (which YAML reads as inf) are typos or attacks, never settings."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSpec(StrictModel):
    """Which registered model to build and with which constructor arguments."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from dynconv.models import list_models

        if name not in list_models():
            raise ValueError(f"unknown model {short_repr(name)}; registered: {', '.join(list_models())}")
        return name

    @field_validator("args")
    @classmethod
    def _args_fit_constructor(cls, args: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "name" in info.data:  # a valid model name (validated before args)
            check_model_args(info.data["name"], args)
        return args


class SyntheticSpec(StrictModel):
    """Settings of the embedded synthetic dataset, written on first use when `data.root` is not set."""

    dir: str = "data/synthetic"
    classes: int = Field(10, ge=2)
    per_class: int = Field(200, ge=10)
    size: int = Field(84, ge=16)
    seed: int = 0


class DataSpec(StrictModel):
    """Where the images come from and how they are cached.

    `max_pixels` is the decode budget: an image of more pixels (width x height, a JPEG at the reduced
    scale it is decoded at) is refused before it is decoded, as an unreadable image (one line, or a
    counted skip with `skip_bad`): decoding takes about 10 bytes per pixel (20 with transparency) in
    each decoding process, ~1.4 GB for a 12000 x 12000 PNG. 50 megapixels passes a 50-megapixel
    camera's photos. `dynconv data prepare --max-pixels` sets it there.
    """

    root: str | None = None
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)
    image_size: int = Field(84, ge=8, le=1024)
    cache_dir: str | None = None
    skip_bad: bool = False
    max_pixels: int = Field(50_000_000, ge=1, description="largest image decoded, width x height")


class ScheduleSpec(StrictModel):
    """Learning-rate schedule, stepped per batch: linear warm-up then cosine decay (or constant), or onecycle.

    onecycle is torch's OneCycleLR (cosine rise from lr/25 to `train.lr` over `warmup_epochs`, i.e.
    pct_start = warmup_epochs / epochs, then cosine down to lr × `min_lr_ratio`), the usual recipe for
    short budgets. `train.schedule: onecycle` is short for `train.schedule: {name: onecycle}`, and the
    search space key `schedule` (a choice of names) sets `train.schedule.name`.
    """

    name: Literal["cosine", "constant", "onecycle"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0, le=10_000, description="at most train.epochs' bound")
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainSpec(StrictModel):
    """Per-trial training settings. A field the search space names is set by the search: writing it here
    too is an error (`dynconv.spec.load_spec`), except `epochs` and `batch_size`, which every spec must
    write. The upper bounds catch values that can only be typos (`epochs: 1000000000`, `lr: 1e308`); a
    searched range or choice must lie within them as well (`dynconv.spec.checks.check_searched_field`).
    """

    epochs: int = Field(ge=1, le=10_000, description="more than 10000 epochs is surely a typo")
    batch_size: int = Field(
        ge=1, le=65_536, description="per worker; more than 65536 images per step is surely a typo"
    )
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(
        0.05,
        gt=0,
        le=10,
        description="peak learning rate; SGD and AdamW diverge far below 10, so a larger one is a typo",
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment_strength: float = Field(0.5, ge=0, le=1)
    channel_drop: float = Field(0.0, ge=0, le=1)
    seed: int = 0
    compile: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU (train/loop.py)
    val_subsets: list[str] = Field(
        default_factory=lambda: list(SUBSET_NAMES),
        description="channel subsets validated during training: val_acc_<SUBSET> and val_acc_worst",
    )
    subset_val_every: int = Field(
        1,
        ge=0,
        description="validate the subsets at epoch 1, every k-th epoch after it and the last; 0: never",
    )

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("val_subsets")
    @classmethod
    def _known_val_subsets(cls, subsets: list[str]) -> list[str]:
        bad = [s for s in subsets if s not in SUBSET_NAMES]
        if bad or not subsets or len(set(subsets)) != len(subsets):
            raise ValueError(
                f"bad subset list {short_repr(subsets)}; valid subsets: {', '.join(SUBSET_NAMES)}"
            )
        return subsets

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainSpec:
        if self.schedule.warmup_epochs >= self.epochs and self.epochs > 1:
            raise ValueError(
                f"schedule.warmup_epochs ({self.schedule.warmup_epochs}) must be < epochs ({self.epochs})"
            )
        return self


class ParamSpec(StrictModel):
    """One searched dimension. `low`/`high` for (log)uniform, `values` for choice."""

    type: Literal["loguniform", "uniform", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _valid_range(self) -> ParamSpec:
        if self.type == "choice":
            if not self.values:
                raise ValueError("choice needs a non-empty 'values' list")
            found = first_non_finite(self.values, "values")
            if found is not None:  # `values` is typed Any: allow_inf_nan does not reach it
                raise ValueError(f"{found}: Input should be a finite number")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs 'low' and 'high'")
        if self.low >= self.high:  # both finite: allow_inf_nan=False
            raise ValueError(f"empty or inverted range: low={self.low} must be < high={self.high}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        return self


REQUIRED_SEARCH_KEYS = ("lr", "augment_strength")
# Non-numeric train fields the search may choose between: search key -> the values it may take.
CHOICE_SEARCH_KEYS: dict[str, tuple[str, ...]] = {"schedule": ("cosine", "constant", "onecycle")}


class SearchSpec(StrictModel):
    """The search: which `train.*` fields are searched and how many trials run."""

    space: dict[str, ParamSpec]
    algorithm: Literal["tpe", "random", "nsga2"] = "tpe"  # nsga2: Optuna's NSGA-II (multi-objective)
    tpe_startup_trials: int = Field(
        10, ge=1, description="random trials before TPE models the results (Optuna's default is 10)"
    )
    num_samples: int = Field(4, ge=1, le=100_000, description="trials; at most 100000, as --num-samples")
    max_concurrent: int | None = Field(None, ge=1)
    seed: int = 0
    # The weights may be inf or nan here only so that `_weights` reports them with the metric's name.
    metric: str | dict[str, Annotated[float, AllowInfNan(True)]] = Field(
        "val_acc",
        description="a reported metric, or {metric: weight}: trials then report the weighted sum "
        "as `objective` and the search ranks on it",
    )
    mode: Literal["max", "min"] = "max"
    objectives: dict[str, Literal["max", "min"]] | None = Field(
        None,
        description="multi-objective search (a Pareto set): [metric, ...] (each with search.mode) or "
        "{metric: max|min}; needs scheduler.name: none",
    )

    @field_validator("metric")
    @classmethod
    def _weights(cls, metric: str | dict[str, float]) -> str | dict[str, float]:
        if isinstance(metric, dict):
            if not metric:
                raise ValueError("a weighted metric needs at least one {metric: weight}")
            bad = {k: w for k, w in metric.items() if not math.isfinite(w) or w == 0}
            if bad:
                raise ValueError(f"weights must be finite and non-zero, got {short_repr(bad)}")
        return metric

    @model_validator(mode="before")
    @classmethod
    def _objectives_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("objectives"), list):
            mode = data.get("mode", "max")
            data = {**data, "objectives": {name: mode for name in data["objectives"]}}
        return data

    @model_validator(mode="after")
    def _objectives_alone(self) -> SearchSpec:
        if self.objectives is None:
            return self
        if len(self.objectives) < 2:
            raise ValueError("search.objectives needs at least two metrics (one metric: use search.metric)")
        if self.metric != "val_acc":  # the default (also what a dumped spec carries) is ignored then
            raise ValueError("set search.metric or search.objectives, not both")
        return self

    # -- derived: what Tune and Optuna are told ------------------------------------------------------------

    @property
    def multi_objective(self) -> bool:
        return self.objectives is not None

    @property
    def tune_metric(self) -> str:
        """The one metric ranked on: `objective` for a weighted mix, else `metric`; the first objective
        of a multi-objective search (what `dynconv.spec.ranking` ranks on: the table, `best`, `--top-k`
        and the parent's `best_<metric>`)."""
        if self.objectives is not None:
            return next(iter(self.objectives))
        return "objective" if isinstance(self.metric, dict) else self.metric

    @property
    def tune_mode(self) -> str:
        return self.objectives[self.tune_metric] if self.objectives is not None else self.mode

    def metric_names(self) -> list[str]:
        """Every reported metric the search refers to (validated against the reported metrics)."""
        if self.objectives is not None:
            return list(self.objectives)
        return list(self.metric) if isinstance(self.metric, dict) else [self.metric]

    @field_validator("space")
    @classmethod
    def _space_keys(cls, space: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        missing = [k for k in REQUIRED_SEARCH_KEYS if k not in space]
        if missing:
            raise ValueError(f"search.space must include {', '.join(missing)}")
        searchable = {
            name
            for name, field in TrainSpec.model_fields.items()
            if field.annotation in (float, int, "float", "int")
        }
        for key, param in space.items():
            if key in CHOICE_SEARCH_KEYS:
                allowed = CHOICE_SEARCH_KEYS[key]
                if param.type != "choice" or not set(param.values or []) <= set(allowed):
                    raise ValueError(f"{short_repr(key)} is searched as a choice among {', '.join(allowed)}")
            elif key not in searchable:
                known = sorted(searchable | set(CHOICE_SEARCH_KEYS))
                raise ValueError(f"{short_repr(key)} is not a numeric train field; searchable: {known}")
            else:
                check_searched_field(key, TrainSpec.model_fields[key], param)
        return space


class SchedulerSpec(StrictModel):
    """Early stopping of weak trials. ASHA's time unit is the reported `epoch` (monotonic across restarts)."""

    name: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class ResourcesSpec(StrictModel):
    """What one trial occupies: a driver (Tune trial actor) plus `workers_per_trial` DDP workers."""

    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpu: bool = False
    gpus_per_worker: float | None = Field(
        None,
        description="GPUs per DDP worker when gpu is true: a fraction in (0, 1) packs several trials on one "
        "GPU, a whole number 1-8 reserves that many (a worker trains on the first). Unset: 1",
    )
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="extra custom resources per DDP worker (e.g. an accelerator type)"
    )
    driver_cpus: float = Field(0.25, gt=0)
    driver_resource: str | None = Field(
        None, description="custom resource (e.g. 'trial_driver') that keeps trial drivers on the head node"
    )
    ray_train: Literal["auto", "always"] = Field(
        "auto",
        description="auto: a one-worker trial trains in its Tune trial actor (starts in ~2 s instead of "
        "~11 s); always: every trial runs a Ray Train TorchTrainer (worker group, NCCL/Gloo process "
        "group), e.g. to exercise the DDP path on one GPU",
    )

    @model_validator(mode="after")
    def _gpu_amount(self) -> ResourcesSpec:
        x = self.gpus_per_worker
        if x is None:
            return self
        if not self.gpu:
            raise ValueError(f"gpus_per_worker ({x:g}) needs gpu: true")
        if not (math.isfinite(x) and (0 < x < 1 or (x == int(x) and 1 <= x <= 8))):
            raise ValueError(f"gpus_per_worker must be a fraction in (0, 1) or a whole number 1-8, got {x:g}")
        if x < 1 and self.workers_per_trial > 1:
            raise ValueError(
                f"gpus_per_worker {x:g} with workers_per_trial {self.workers_per_trial}: Ray may put a "
                "trial's DDP ranks on one GPU, which NCCL refuses; use whole GPUs or workers_per_trial: 1"
            )
        return self

    @property
    def gpus(self) -> float:
        """GPUs one DDP worker reserves: 0 without `gpu`, else `gpus_per_worker` (1 when unset)."""
        if not self.gpu:
            return 0.0
        return 1.0 if self.gpus_per_worker is None else float(self.gpus_per_worker)


class MlflowSpec(StrictModel):
    """Tracking store. `tracking_uri` unset: $MLFLOW_TRACKING_URI, else ./mlflow.db (embedded sqlite)."""

    tracking_uri: str | None = None
    experiment: str | None = None

    @field_validator("experiment")
    @classmethod
    def _safe_experiment(cls, name: str | None) -> str | None:
        if name is None:
            return None
        return safe_name(name, SAFE_EXPERIMENT_PATTERN, "letters, digits, ' _.,:+=@-'", 200)


class FailureSpec(StrictModel):
    """Retries: a trial (Tune) and a worker group within a trial (Train), each resuming from checkpoints.

    `report_poll_s` is how often Ray Train's controller collects the workers' reports (Ray's default is
    2 s). A worker's `ray.train.report` blocks until its previous report was collected, and a checkpoint
    counts for recovery only once collected, so a short interval keeps short epochs from waiting and
    bounds what a crash can lose to the epoch in flight.
    """

    trial_max_failures: int = Field(1, ge=0)
    worker_max_failures: int = Field(2, ge=0)
    report_poll_s: float = Field(0.5, gt=0, le=60)
    keep_checkpoints: int = Field(2, ge=1, description="latest Train checkpoints kept per trial")


class EvaluateSpec(StrictModel):
    """Channel-subset evaluation run at the end of a study."""

    enabled: bool = True
    top_k: int = Field(1, ge=1)
    subsets: list[str] = Field(default_factory=lambda: list(SUBSET_NAMES))
    split: Literal["train", "val", "test"] = "test"
    speed_subsets: list[str] | None = Field(
        None,
        description="the subsets whose latency and throughput are measured (the others show '-'); "
        "default: every evaluated subset; [] measures none",
    )

    @field_validator("subsets")
    @classmethod
    def _known_subsets(cls, subsets: list[str]) -> list[str]:
        bad = [s for s in subsets if s not in SUBSET_NAMES]
        if bad or not subsets:
            raise ValueError(
                f"unknown subset(s) {short_repr(bad or subsets)}; valid: {', '.join(SUBSET_NAMES)}"
            )
        return subsets

    @model_validator(mode="after")
    def _speed_subsets_evaluated(self) -> EvaluateSpec:
        """A speed measured on a subset the evaluation skips would never be taken: name it."""
        missing = [s for s in self.speed_subsets or [] if s not in self.subsets]
        if missing:
            raise ValueError(
                f"speed_subsets {short_repr(missing)} not among the evaluated subsets "
                f"({', '.join(self.subsets)})"
            )
        return self


class ConfirmSpec(StrictModel):
    """Confirmation over seeds after the search: the `top_k` best configurations by the study's ranking
    are trained again with `seeds` new seeds each, and the champion is decided on their means (see
    `dynconv.tune.champion`). Off by default: it multiplies the study's cost by top_k x seeds runs."""

    enabled: bool = False
    top_k: int = Field(3, ge=1, le=100, description="configurations confirmed; at least 2 to compare")
    seeds: int = Field(3, ge=2, le=100, description="new seeds per configuration; at least 2 for an interval")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the champion's verdict")


def safe_name(name: str, pattern: str, allowed: str, max_len: int) -> str:
    """Names that become directories (Tune storage, MLflow artifact root) must not escape them."""
    if not re.fullmatch(pattern, name):
        raise ValueError(
            f"{short_repr(name)} is not a safe name: use {allowed}, starting with a letter or digit, "
            f"no '..', no '/', no control characters, at most {max_len} characters"
        )
    return name
