"""Job spec validation: every shipped spec loads; bad specs fail with one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dynconv.spec import JobSpec, SpecError, load_spec, resolve_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "tune_jobs").glob("*.yaml"))

MINIMAL = {
    "study": "t",
    "model": {"name": "resnet18"},
    "train": {"epochs": 2, "batch_size": 8},
    "search": {
        "space": {
            "lr": {"type": "loguniform", "low": 0.001, "high": 0.1},
            "augment_strength": {"type": "uniform", "low": 0.0, "high": 1.0},
        }
    },
}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _with(data: dict, dotted: str, value) -> dict:
    import copy

    out = copy.deepcopy(data)
    node = out
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_specs_validate(path: Path) -> None:
    spec = load_spec(path)
    assert spec.study
    assert {"lr", "augment_strength"} <= set(spec.search.space)


def test_minimal_spec_fills_documented_defaults(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, MINIMAL))
    assert spec.train.optimizer == "sgd"
    assert spec.scheduler.name == "asha"
    assert spec.evaluate.subsets == ["RGB", "RG", "RB", "GB", "R", "G", "B"]
    assert spec.experiment == "t"


@pytest.mark.parametrize(
    ("dotted", "value", "needle"),
    [
        ("train.bogus", 1, "train.bogus: unknown key"),
        ("bogus_section", {}, "bogus_section: unknown key"),
        ("train.epochs", "many", "train.epochs"),
        ("train.epochs", 0, "train.epochs"),
        ("model.name", "resnet9000", "unknown model 'resnet9000'"),
        ("search.space.lr", {"type": "loguniform", "low": 0.1, "high": 0.01}, "inverted range"),
        ("search.space.lr", {"type": "uniform", "low": 0.1, "high": 0.1}, "inverted range"),
        ("search.space.lr", {"type": "loguniform", "low": 0.0, "high": 0.1}, "low > 0"),
        ("search.space.momentum_typo", {"type": "uniform", "low": 0, "high": 1}, "not a numeric train field"),
        ("train.augment_strength", 1.5, "train.augment_strength"),
        ("evaluate.subsets", ["RGB", "RX"], "unknown subset"),
        ("scheduler.grace_period", 5, "grace_period (5) exceeds train.epochs (2)"),
        ("resources.cpus_per_worker", -1, "resources.cpus_per_worker"),
    ],
)
def test_bad_spec_is_one_line_naming_file_and_key(tmp_path: Path, dotted: str, value, needle: str) -> None:
    path = _write(tmp_path, _with(MINIMAL, dotted, value))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert needle in message


def test_search_space_must_include_lr_and_strength(tmp_path: Path) -> None:
    data = _with(MINIMAL, "search.space", {"lr": {"type": "loguniform", "low": 0.001, "high": 0.1}})
    with pytest.raises(SpecError, match="must include augment_strength"):
        load_spec(_write(tmp_path, data))


def test_set_overrides_parse_yaml_values(tmp_path: Path) -> None:
    spec = load_spec(
        _write(tmp_path, MINIMAL), overrides=["train.epochs=3", "train.optimizer=adamw"], num_samples=7
    )
    assert spec.train.epochs == 3
    assert spec.train.optimizer == "adamw"
    assert spec.search.num_samples == 7
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        load_spec(_write(tmp_path, MINIMAL), overrides=["train.epochs"])


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_with_params_applies_and_revalidates() -> None:
    spec = JobSpec.model_validate(MINIMAL)
    tuned = spec.with_params({"lr": 0.02, "augment_strength": 0.3})
    assert (tuned.train.lr, tuned.train.augment_strength) == (0.02, 0.3)
    assert spec.train.lr != 0.02  # frozen original untouched
    with pytest.raises(ValueError):
        spec.with_params({"augment_strength": 3.0})


def test_tracking_uri_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = JobSpec.model_validate(MINIMAL)
    assert spec.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert spec.tracking_uri() == "http://example.invalid:5000"
    explicit = JobSpec.model_validate(_with(MINIMAL, "mlflow.tracking_uri", "sqlite:///x.db"))
    assert explicit.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/x.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert resolve_tracking_uri(None) == "http://example.invalid:5000"  # --tracking-uri unset: the env
