"""Everything a spec can get wrong is a one-line error from `load_spec`, before Ray starts: model args
against the registered constructor, searched ranges against the field's bounds and type, the metric,
safe names; the trial's resources against the cluster; a changed spec on `--resume`. (~8 s, no Ray.)"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynconv.errors import DynconvError
from dynconv.spec import JobSpec, SpecError, load_spec, parse_spec
from dynconv.spec.checks import spec_diff
from dynconv.spec.metrics import reported_metrics
from dynconv.tune.resources import ResourcesError, check_resources_fit
from tests.conftest import TINY_SPEC


def _spec(**changes: Any) -> dict[str, Any]:
    """TINY_SPEC with dotted-key changes applied (`search.space.lr` etc.)."""
    data = copy.deepcopy(TINY_SPEC)
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return data


def _error(data: dict[str, Any], tmp_path: Path) -> str:
    """The one-line error load_spec gives for `data` written as a YAML file."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


BAD_INPUTS = {
    "model arg typo": (
        {"model__args": {"stem": "small", "wdith": 4}},
        "model.args: unknown argument 'wdith' for resnet18_dynamic; did you mean 'width'?",
    ),
    "unknown stem": (
        {"model__args": {"stem": "cifar", "width": 4}},
        "model.args: resnet18_dynamic refuses these args: unknown stem 'cifar'; choose one of imagenet",
    ),
    "model arg of the wrong type": ({"model__args": {"width": 4.5}}, "model.args: width=4.5: Input should"),
    "model arg the entry sets": ({"model__args": {"dynamic": False}}, "multiple values for keyword"),
    "range beyond the field's bound": (
        {"search__space__augment_strength": {"type": "uniform", "low": 0, "high": 2}},
        "search.space: augment_strength.high=2.0 is not a valid train.augment_strength: "
        "Input should be less than or equal to 1",
    ),
    "integer field searched as a float": (
        {"search__space__batch_size": {"type": "uniform", "low": 8, "high": 64}},
        "search.space: batch_size is an integer field: search it with type 'choice' over integers",
    ),
    "integer field with a float choice": (
        {"search__space__batch_size": {"type": "choice", "values": [8, 16.5]}},
        "batch_size.values[1]=16.5 is not a valid train.batch_size",
    ),
    "lr choice over strings": (
        {"search__space__lr": {"type": "choice", "values": ["0.1", "0.01"]}},
        "search.space: lr.values[0]='0.1' is not a valid train.lr: Input should be a valid number",
    ),
    "choice beyond an open bound": (
        {"search__space__momentum": {"type": "choice", "values": [0.9, 1.0]}},
        "momentum.values[1]=1.0 is not a valid train.momentum: Input should be less than 1",
    ),
    "metric typo": (
        {"search__metric": "val_accuracy"},
        "search.metric: 'val_accuracy' is not a metric trials report (did you mean 'val_acc'?)",
    ),
    "study with a path": ({"study": "../evil"}, "study: '../evil' is not a safe name"),
    "study with dots": ({"study": "a..b"}, "study: 'a..b' is not a safe name"),
    "experiment escaping the store": ({"mlflow": {"experiment": "../.."}}, "mlflow.experiment: '../..' is"),
    "experiment with a slash": ({"mlflow": {"experiment": "a/b"}}, "mlflow.experiment: 'a/b' is not a safe"),
    "experiment with a control char": ({"mlflow": {"experiment": "a\tb"}}, "is not a safe name"),
    "overlong study name": ({"study": "s" * 101}, "at most 100 characters"),
    # issue 23: every float finite, and bounds where a value can only be a typo
    "lr of 1e308": ({"train__lr": 1e308}, "train.lr: Input should be less than or equal to 10"),
    "lr of .inf": ({"train__lr": float("inf")}, "train.lr: Input should be a finite number"),
    "lr of .nan": ({"train__lr": float("nan")}, "train.lr: Input should be a finite number"),
    "warm-up of .inf": (
        {"train__schedule": {"warmup_epochs": float("inf")}},
        "warmup_epochs: Input should be a",
    ),
    "a billion epochs": (
        {"train__epochs": 10**9},
        "train.epochs: Input should be less than or equal to 10000",
    ),
    "huge batch": (
        {"train__batch_size": 10**6},
        "train.batch_size: Input should be less than or equal to 65536",
    ),
    "too many trials": (
        {"search__num_samples": 10**7},
        "search.num_samples: Input should be less than or equal",
    ),
    ".inf in a choice": (
        {"search__space__weight_decay": {"type": "choice", "values": [0.1, float("inf")]}},
        "search.space.weight_decay: values[1]: Input should be a finite number",
    ),
    ".nan as a range bound": (
        {"search__space__lr": {"type": "loguniform", "low": float("nan"), "high": 0.1}},
        "search.space.lr.low: Input should be a finite number",
    ),
    ".inf as a range bound": (
        {"search__space__lr": {"type": "loguniform", "low": 0.01, "high": float("inf")}},
        "search.space.lr.high: Input should be a finite number",
    ),
    "searched lr beyond its bound": (
        {"search__space__lr": {"type": "loguniform", "low": 0.01, "high": 100}},
        "search.space: lr.high=100.0 is not a valid train.lr: Input should be less than or equal to 10",
    ),
    "searched epochs beyond their bound": (
        {"search__space__epochs": {"type": "choice", "values": [2, 10**6]}},
        "epochs.values[1]=1000000 is not a valid train.epochs: Input should be less than or equal to 10000",
    ),
    "model arg of .nan": (
        {"model": {"name": "simple_cnn", "args": {"dropout": float("nan")}}},
        "model.args: dropout=nan: Input should be a finite number",
    ),
    "worker resource of .nan": (
        {"resources__worker_resources": {"A100": float("nan")}},
        "resources.worker_resources.A100: Input should be a finite number",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_spec_is_one_line_before_ray(case: str, tmp_path: Path) -> None:
    changes, expected = BAD_INPUTS[case]
    assert expected in _error(_spec(**changes), tmp_path)


def test_good_variants_still_load() -> None:
    ok = _spec(
        model__args={"stem": "seed", "width": 8, "zero_init_residual": True},
        search__space__batch_size={"type": "choice", "values": [8, 16]},
        search__space__momentum={"type": "uniform", "low": 0.5, "high": 0.95},
        search__metric="val_loss",
        search__mode="min",
        mlflow={"experiment": "Dynamic stem, 84 px: run 2"},
        study="resnet18-dynamic_v2.1",
    )
    spec = parse_spec(ok)
    assert spec.search.space["batch_size"].values == [8, 16] and spec.experiment.startswith("Dynamic")
    cnn = _spec(model={"name": "simple_cnn_dynamic", "args": {"width": 16, "growth": 8, "dense_padding": 1}})
    assert parse_spec(cnn).model.args["dense_padding"] == 1


def test_every_listed_metric_is_reported_by_a_trial(tiny_dataset: Path, tmp_path: Path) -> None:
    """`reported_metrics` is what `search.metric` may name: each must really come out of `fit`."""
    from dynconv.data.cache import prepare
    from dynconv.train.loop import fit
    from dynconv.train.session import LocalSession

    spec = JobSpec.model_validate(_spec(train__epochs=1, scheduler={"name": "none"}))
    data = prepare(tiny_dataset, size=16, cache_dir=tmp_path / "cache", workers=1, progress=False)
    session = LocalSession(device="cpu")
    fit(spec, session, data)
    t = spec.train
    reported = reported_metrics(t.val_subsets, t.subset_val_every, weighted=False)
    assert set(reported) <= set(session.history[-1])


# ------------------------------------------------------------------------------ resources


def test_resources_that_cannot_fit_are_one_line() -> None:
    big = JobSpec.model_validate(_spec(resources={"workers_per_trial": 64, "cpus_per_worker": 1.0}))
    with pytest.raises(ResourcesError) as err:
        check_resources_fit(big, {"CPU": 2.0, "memory": 1e9})
    message = str(err.value)
    assert "\n" not in message
    assert "64 workers x 1 CPU + 0.25 driver CPU = 64.25 CPU but the cluster has at most 2; lower" in message
    gpu = JobSpec.model_validate(_spec(resources={"workers_per_trial": 2, "gpu": True}))
    with pytest.raises(ResourcesError, match="2 workers x 1 GPU = 2 GPU but the cluster has at most 0"):
        check_resources_fit(gpu, {"CPU": 16.0})
    check_resources_fit(gpu, {"CPU": 16.0, "GPU": 2.0})  # fits exactly
    custom = {"worker_resources": {"A100": 1}, "driver_resource": "drv"}
    ddp = JobSpec.model_validate(_spec(resources={"workers_per_trial": 2, **custom}))
    with pytest.raises(ResourcesError, match="resource 'drv'"):
        check_resources_fit(ddp, {"CPU": 4.0, "A100": 2.0})
    # one worker trains in its trial actor, which goes where a worker goes and does not ask for 'drv'
    check_resources_fit(JobSpec.model_validate(_spec(resources=custom)), {"CPU": 4.0, "A100": 1.0})
    check_resources_fit(JobSpec.model_validate(TINY_SPEC), {"CPU": 2.0})  # the tests' own spec fits 2 CPUs


def test_cluster_capacity_counts_the_autoscalers_nodes(monkeypatch) -> None:
    import ray
    from ray._private import state

    from dynconv.tune.resources import cluster_capacity

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "trial_driver": 16.0})
    monkeypatch.setattr(state.state, "get_max_resources_from_cluster_config", lambda: {"CPU": 40, "GPU": 8})
    assert cluster_capacity() == {"CPU": 40.0, "GPU": 8.0, "trial_driver": 16.0}
    monkeypatch.setattr(state.state, "get_max_resources_from_cluster_config", lambda: None)
    assert cluster_capacity() == {"CPU": 8.0, "trial_driver": 16.0}


# ---------------------------------------------------------------------------------- resume


def test_spec_diff_names_changed_keys_and_ignores_num_samples() -> None:
    a = JobSpec.model_validate(TINY_SPEC).to_json_dict()
    assert spec_diff(a, copy.deepcopy(a)) == []
    b = JobSpec.model_validate(
        _spec(search__num_samples=9, search__space__lr={"type": "loguniform", "low": 0.01, "high": 0.3})
    ).to_json_dict()
    assert spec_diff(a, b) == ["search.space.lr.high"]
    c = _spec(train__epochs=3, model__args={"stem": "small", "width": 8})
    c = JobSpec.model_validate(c).to_json_dict()
    assert spec_diff(a, c) == ["model.args.width", "train.epochs"]
    assert spec_diff(a, yaml.safe_load(yaml.safe_dump(a))) == []  # the logged artifact reads back equal
    assert spec_diff({"x": 1}, {"x": 1.0}) == [] and spec_diff({"x": 1}, {"x": True}) == ["x"]
    assert spec_diff({"x": {"y": 1}}, {"x": {}}) == ["x.y"]


def test_resume_with_a_changed_spec_refuses_in_one_line(tmp_path: Path) -> None:
    from dynconv.tracking.layout import end_run, ensure_experiment
    from dynconv.tracking.store import client
    from dynconv.tune.parent_run import open_parent_run

    store = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    data = _spec(mlflow=store, storage_path=str(tmp_path / "rr"))
    spec = JobSpec.model_validate(data).resolved()
    uri = spec.tracking_uri()
    exp = ensure_experiment(uri, spec.experiment)
    parent, _, tune_path = open_parent_run(spec, uri, exp, resume=False)
    Path(tune_path).mkdir(parents=True)  # the Tune state the resume would restore
    end_run(uri, parent, "KILLED")
    changed = JobSpec.model_validate({**data, "train": {**data["train"], "epochs": 4}}).resolved()
    with pytest.raises(DynconvError) as err:
        open_parent_run(changed, uri, exp, resume=True)
    message = str(err.value)
    assert "\n" not in message and "spec changed since the study started (train.epochs)" in message
    assert "run without --resume" in message
    assert client(uri).get_run(parent).info.status == "KILLED"  # untouched by the refusal
    more = JobSpec.model_validate({**data, "search": {**data["search"], "num_samples": 6}}).resolved()
    assert open_parent_run(more, uri, exp, resume=True)[0] == parent  # more samples: resumes


def test_resume_of_a_study_recorded_before_a_spec_field_existed(tmp_path: Path) -> None:
    """A field added to the spec since the study started (with its default) is no change: the recorded
    spec is read by today's schema before it is compared."""
    from dynconv.tracking.artifacts import read_yaml
    from dynconv.tracking.layout import SPEC_ARTIFACT, end_run, ensure_experiment, log_artifact
    from dynconv.tune.parent_run import open_parent_run

    data = _spec(
        mlflow={"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}, storage_path=str(tmp_path / "rr")
    )
    spec = JobSpec.model_validate(data).resolved()
    uri = spec.tracking_uri()
    exp = ensure_experiment(uri, spec.experiment)
    parent, _, tune_path = open_parent_run(spec, uri, exp, resume=False)
    Path(tune_path).mkdir(parents=True)
    old = read_yaml(uri, parent, SPEC_ARTIFACT)
    del old["data"]["max_pixels"]  # as a study recorded before the pixel budget existed
    (tmp_path / SPEC_ARTIFACT).write_text(yaml.safe_dump(old))
    log_artifact(uri, parent, tmp_path / SPEC_ARTIFACT)
    end_run(uri, parent, "KILLED")
    assert open_parent_run(spec, uri, exp, resume=True)[0] == parent


# ----------------------------------------------------------- values the spec would silently ignore


def _load(tmp_path: Path, data: dict[str, Any] | str, overrides: list[str] | None = None) -> JobSpec:
    path = tmp_path / "job.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return load_spec(path, overrides)


def _load_error(tmp_path: Path, data: dict[str, Any] | str, overrides: list[str] | None = None) -> str:
    with pytest.raises(SpecError) as err:
        _load(tmp_path, data, overrides)
    message = str(err.value)
    assert "\n" not in message
    return message


SEARCHED = {"type": "choice", "values": ["cosine", "onecycle"]}


@pytest.mark.parametrize(
    ("data", "overrides", "needle"),
    [
        (_spec(train__lr=0.01), None, "train.lr=0.01 is set but search.space.lr searches it"),
        (_spec(train__lr=0.05), None, "train.lr=0.05 is set but search.space.lr"),  # the default, written
        (_spec(), ["train.lr=0.01"], "train.lr=0.01 is set but search.space.lr searches it"),
        (_spec(), ["train.augment_strength=0.2"], "train.augment_strength=0.2 is set but search.space"),
        (
            _spec(search__space__schedule=SEARCHED, train__schedule="onecycle"),
            None,
            "train.schedule.name='onecycle' is set but search.space.schedule searches it",
        ),
        (
            _spec(search__space__momentum={"type": "uniform", "low": 0.5, "high": 0.9}),
            ["train.momentum=0.9"],
            "train.momentum=0.9 is set but search.space.momentum searches it, so the value would be "
            "ignored; remove one (to fix it, search one value: {type: choice, values: [0.9]})",
        ),
    ],
    ids=["lr in the file", "lr at its default", "lr by --set", "strength by --set", "schedule", "momentum"],
)
def test_a_searched_field_that_is_also_set_is_refused(tmp_path: Path, data, overrides, needle) -> None:
    message = _load_error(tmp_path, data, overrides)
    assert message.startswith(f"{tmp_path / 'job.yaml'}: ") and needle in message


def test_searched_fields_that_are_not_set_load_and_survive_their_json_form(tmp_path: Path) -> None:
    """Required fields may be searched (their written value is the only way to validate), the warm-up
    of a searched schedule stays settable, and the dumped forms (trial spec, checkpoint, artifact),
    which carry every field, still validate through `parse_spec`."""
    data = _spec(
        search__space__schedule=SEARCHED,
        search__space__batch_size={"type": "choice", "values": [8, 16]},
        train__schedule={"warmup_epochs": 0.5},
    )
    spec = _load(tmp_path, data)
    trial = spec.with_params({"lr": 0.02, "augment_strength": 0.1, "schedule": "onecycle", "batch_size": 8})
    assert (trial.train.lr, trial.train.schedule.name, trial.train.batch_size) == (0.02, "onecycle", 8)
    assert parse_spec(trial.to_json_dict()) == trial and parse_spec(spec.resolved().to_json_dict())


@pytest.mark.parametrize(
    ("section", "overrides"),
    [({"top_k": 2, "seeds": 2}, None), (None, ["confirm.seeds=5"])],
    ids=["in the file", "by --set"],
)
def test_a_confirmation_sized_but_never_switched_on_is_refused(tmp_path: Path, section, overrides) -> None:
    data = _spec() if section is None else {**_spec(), "confirm": section}
    message = _load_error(tmp_path, data, overrides)
    assert "set, but confirm.enabled is not" in message and "add confirm.enabled: true" in message


def test_a_confirmation_switched_on_or_explicitly_off_loads(tmp_path: Path) -> None:
    on = _load(tmp_path, {**_spec(), "confirm": {"enabled": True, "top_k": 2, "seeds": 2}})
    assert (on.confirm.enabled, on.confirm.top_k, on.confirm.seeds) == (True, 2, 2)
    off = _load(tmp_path, {**_spec(), "confirm": {"enabled": True, "top_k": 2}}, ["confirm.enabled=false"])
    assert not off.confirm.enabled, "turning a spec's confirmation off for one run is respected"
    assert parse_spec(on.to_json_dict()) == on and parse_spec(off.to_json_dict()) == off


# ------------------------------------------------------------------ YAML: repeated keys, aliases


def test_a_repeated_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    text = yaml.safe_dump(_spec(), sort_keys=False)
    second = _load_error(tmp_path, text + "study: renamed\n")  # used to rename the study silently
    assert second.endswith(
        f": line {len(text.splitlines()) + 1}: duplicate key study (first on line 1); "
        "YAML would keep only the last one"
    )
    nested = text.replace("  epochs: 2\n", "  epochs: 2\n  epochs: 3\n")
    line = nested.splitlines().index("  epochs: 3") + 1
    assert f"line {line}: duplicate key train.epochs (first on line {line - 1})" in _load_error(
        tmp_path, nested
    )
    override = _load_error(tmp_path, _spec(), ["model.args={stem: small, stem: seed}"])
    assert (
        override == "--set 'model.args={stem: small, stem: seed}': duplicate key stem (first on line 1); "
        "YAML would keep only the last one"
    )


def test_an_alias_bomb_is_refused_at_its_first_alias(tmp_path: Path) -> None:
    """Nine levels of nine aliases: 9^9 values once expanded, which the error message used to print."""
    levels = ["l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    text = yaml.safe_dump(_spec(), sort_keys=False).replace("  args:\n", "  args:\n    width: *l8\n")
    message = _load_error(tmp_path, "\n".join(levels) + "\n" + text)
    assert message.endswith(
        ": line 2: alias *l0: a spec may not use YAML aliases (one alias can expand a "
        "small file into gigabytes); write the value out"
    )
    assert "may not use YAML aliases" in _load_error(tmp_path, _spec(), ["model.args={a: &x 1, b: *x}"])


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"model__name": "x" * 100_000}, "model.name: unknown model 'xxx"),
        ({"train__" + "y" * 100_000: 1}, "train.yyy"),
        ({"model__args": {"z" * 100_000: 1}}, "model.args: unknown argument 'zzz"),
        ({"model__args": {"width": ["a" * 1000] * 100}}, "model.args: width=['aaa"),
        ({"study": "s" * 100_000}, "study: 'sss"),
    ],
    ids=["model name", "unknown key", "unknown model arg", "model arg value", "study name"],
)
def test_quoted_values_are_shortened(tmp_path: Path, changes, needle) -> None:
    message = _error(_spec(**changes), tmp_path)
    assert needle in message and len(message) < len(str(tmp_path)) + 400
