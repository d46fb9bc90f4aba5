"""`dynconv tune SPEC --warm-start STUDY` (issue 21 item 4): an earlier study's finished trials seed the
new study's Optuna search before its first suggestion; incompatible searches are refused in one line.
Issue 28 item 5: a warm-started search draws configurations of its own, and a study trained otherwise
(model, data, epochs, scheduler) seeds it only when the difference is accepted, and then recorded.

No Ray cluster: the earlier study is written to a sqlite store the way the study driver writes it (a
study run with its spec.yaml, trial runs with the recorder's params, epoch metrics, outcome and status),
and the searcher is driven the way Tune drives it (`set_search_properties` with the Tuner's param_space,
then `suggest`). The CLI is run in-process up to the point where the Tuner is built.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from optuna.study import StudyDirection
from optuna.trial import TrialState

from dynconv.cli import main
from dynconv.errors import DynconvError
from dynconv.spec import JobSpec, parse_spec
from dynconv.tracking.find import search_runs
from dynconv.tracking.layout import (
    PARAM_WARM_START_SAMPLER_SEED,
    PARAM_WARM_START_TRIALS,
    TAG_EPOCHS_DONE,
    TAG_OUTCOME,
    TAG_STUDY,
    TAG_WARM_START,
    TAG_WARM_START_ACCEPTED,
    end_run,
    ensure_child_run,
    log_metrics,
    log_params,
    run_params,
    set_tags,
)
from dynconv.tune.search import build_searcher, param_space, tune_metric_mode
from dynconv.tune.warm_start import WarmStart, check_compatible, check_same_training, load_warm_start
from tests.conftest import tiny_spec_dict
from tests.test_evaluate import open_study

# What a trial's outcome leaves as the run's status (dynconv.tune.recorder).
STATUS = {"finished": "FINISHED", "stopped_early": "FINISHED", "failed": "FAILED", "diverged": "FAILED"}


def spec_dict(tmp: Path, dataset: Path, study: str, space: dict | None = None, **search: Any) -> dict:
    """The tiny spec (2 epochs, lr loguniform [0.01, 0.2], augment_strength uniform [0, 0.5]) with `space`
    updating search.space and `search` overriding search.* (a multi-objective one without ASHA)."""
    data = tiny_spec_dict(tmp, dataset, study=study)
    data["search"].update(search)
    data["search"]["space"].update(space or {})
    if "objectives" in search:
        data["scheduler"] = {"name": "none"}
    return data


def spec_of(tmp: Path, dataset: Path, study: str, space: dict | None = None, **search: Any) -> JobSpec:
    return parse_spec(spec_dict(tmp, dataset, study, space, **search))


def write_study(spec: JobSpec, trials: list[dict[str, Any]]) -> str:
    """The study run of `spec` and its trial runs, as the study driver leaves them; returns the study run id.

    Each trial: `params` (the searched values), `history` ({metric: [value per epoch]}), `outcome`.
    """
    uri = spec.tracking_uri()
    exp, parent = open_study(uri, spec)
    for i, trial in enumerate(trials):
        key = f"t{i}"
        run_id, _ = ensure_child_run(uri, exp, parent, "trial", key, f"trial_{key}", {TAG_STUDY: spec.study})
        log_params(uri, run_id, run_params(spec.with_params(trial["params"]), trial["params"]))
        epochs = len(next(iter(trial["history"].values())))
        for epoch in range(1, epochs + 1):
            metrics = {name: values[epoch - 1] for name, values in trial["history"].items()}
            log_metrics(uri, run_id, {"epoch": epoch, **metrics}, step=epoch)
        set_tags(uri, run_id, {TAG_OUTCOME: trial["outcome"], TAG_EPOCHS_DONE: epochs})
        end_run(uri, run_id, STATUS[trial["outcome"]])
    end_run(uri, parent, "FINISHED")
    return parent


def trial(lr: float, aug: float, outcome: str = "finished", **history: list[float]) -> dict[str, Any]:
    return {"params": {"lr": lr, "augment_strength": aug}, "history": history, "outcome": outcome}


def seeded_searcher(spec: JobSpec, warm: Any) -> Any:
    """The study's searcher with `warm`'s trials, told its space as Tune tells it (no suggestion yet)."""
    searcher = build_searcher(spec, warm)
    metric, mode = tune_metric_mode(spec)
    searcher.set_search_properties(metric, mode, param_space(spec))
    return searcher


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------------------- the seed reaches Optuna


def test_the_searcher_holds_the_earlier_trials_before_its_first_suggestion(tmp_path, tiny_dataset) -> None:
    earlier = spec_of(tmp_path, tiny_dataset, "old")
    parent = write_study(
        earlier,
        [
            trial(0.02, 0.1, val_acc=[0.3, 0.5]),
            trial(0.05, 0.4, val_acc=[0.6, 0.4]),  # its LAST value is what Optuna is told
            trial(0.03, 0.2, "stopped_early", val_acc=[0.2]),
            trial(0.04, 0.3, "diverged", val_acc=[0.1, math.nan]),
            trial(0.15, 0.2, val_acc=[0.7, 0.8]),  # outside the narrowed lr range below
            trial(0.03, 0.3, val_acc=[0.5, math.nan]),  # ran all its epochs, but no finite last value
        ],
    )
    spec = spec_of(tmp_path, tiny_dataset, "new", {"lr": {"type": "loguniform", "low": 0.01, "high": 0.1}})

    warm = load_warm_start(spec, spec.tracking_uri(), "old")
    assert warm.describe() == (
        f"warm start: 2 trials of study 'old' (run {parent}) seed the search (4 skipped: 2 not finished, "
        "1 with lr outside [0.01, 0.1], 1 without a finite val_acc)"
    )
    searcher = seeded_searcher(spec, warm)
    study = searcher.optuna_study
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.params for t in study.trials] == [
        {"lr": 0.02, "augment_strength": 0.1},
        {"lr": 0.05, "augment_strength": 0.4},
    ]
    assert [t.values for t in study.trials] == [[0.5], [0.4]]
    assert study.direction == StudyDirection.MAXIMIZE
    assert study.best_trial.params["lr"] == 0.02

    config = searcher.suggest("first")
    assert 0.01 <= config["lr"] <= 0.1
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]


def test_a_min_mode_study_is_seeded_with_its_last_losses(tmp_path, tiny_dataset) -> None:
    earlier = spec_of(tmp_path, tiny_dataset, "old", metric="val_loss", mode="min")
    write_study(
        earlier,
        [
            trial(0.02, 0.1, val_loss=[1.0, 0.7], val_acc=[0.5, 0.6]),
            trial(0.05, 0.4, val_loss=[0.5, 0.9], val_acc=[0.7, 0.8]),
        ],
    )
    spec = spec_of(tmp_path, tiny_dataset, "new", metric="val_loss", mode="min")
    study = seeded_searcher(spec, load_warm_start(spec, spec.tracking_uri(), "old")).optuna_study
    assert study.direction == StudyDirection.MINIMIZE
    assert [t.values for t in study.trials] == [[0.7], [0.9]]
    assert study.best_trial.params == {"lr": 0.02, "augment_strength": 0.1}


def test_a_multi_objective_study_is_seeded_with_every_objective(tmp_path, tiny_dataset) -> None:
    objectives = {"val_acc": "max", "val_loss": "min"}
    earlier = spec_of(tmp_path, tiny_dataset, "old", objectives=objectives)
    write_study(
        earlier,
        [
            trial(0.02, 0.1, val_acc=[0.5, 0.6], val_loss=[1.0, 0.7]),
            trial(0.05, 0.4, val_acc=[0.7, 0.8], val_loss=[0.5, 0.9]),
            trial(0.03, 0.2, val_acc=[0.7, 0.8], val_loss=[0.5, math.nan]),  # one objective not finite
        ],
    )
    spec = spec_of(tmp_path, tiny_dataset, "new", objectives=objectives)
    warm = load_warm_start(spec, spec.tracking_uri(), "old")
    assert dict(warm.skipped) == {"without a finite val_acc or val_loss": 1}
    searcher = seeded_searcher(spec, warm)
    study = searcher.optuna_study
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert [(t.state, t.values) for t in study.trials] == [
        (TrialState.COMPLETE, [0.6, 0.7]),
        (TrialState.COMPLETE, [0.8, 0.9]),
    ]
    assert set(searcher.suggest("first")) == {"lr", "augment_strength"}


def test_a_choice_is_seeded_with_the_value_its_trials_logged(tmp_path, tiny_dataset) -> None:
    """MLflow keeps params as text: a choice comes back as the choice itself, not its string."""
    schedules = {"schedule": {"type": "choice", "values": ["cosine", "constant"]}}
    earlier = spec_of(tmp_path, tiny_dataset, "old", schedules)
    write_study(
        earlier,
        [
            {
                "params": {"lr": 0.02, "augment_strength": 0.1, "schedule": s},
                "history": {"val_acc": [0.5, v]},
                "outcome": "finished",
            }
            for s, v in (("cosine", 0.6), ("constant", 0.7))
        ],
    )
    spec = spec_of(tmp_path, tiny_dataset, "new", {"schedule": {"type": "choice", "values": ["cosine"]}})
    warm = load_warm_start(spec, spec.tracking_uri(), "old")
    assert dict(warm.skipped) == {"with schedule not among ['cosine']": 1}
    study = seeded_searcher(spec, warm).optuna_study
    assert [t.params["schedule"] for t in study.trials] == ["cosine"]


def test_a_resumed_warm_started_searcher_holds_the_seed_once(tmp_path, tiny_dataset) -> None:
    """`--resume` of a warm-started study: Tune tells the Tuner's pickled searcher (which still carries
    the seed) its space, which seeds a fresh Optuna study, then restores the state it saved over it."""
    spec = spec_of(tmp_path, tiny_dataset, "new")
    warm = WarmStart("old", "0" * 32, ({"lr": 0.02, "augment_strength": 0.1},), (0.5,), {})
    searcher = seeded_searcher(spec, warm)
    searcher.suggest("first")
    searcher.save_to_dir(str(tmp_path))

    resumed = seeded_searcher(spec, warm)  # as Tune.run does before it restores the saved searcher
    resumed.restore_from_dir(str(tmp_path))
    assert [t.state for t in resumed.optuna_study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]


def test_a_warm_started_search_draws_configurations_of_its_own(tmp_path, tiny_dataset) -> None:
    """Issue 28: the seeded trials consume none of the sampler's draws, so a searcher seeded with the
    same `search.seed` suggested the seeding study's first configurations again, to the last digit.
    Its sampler's seed now comes from `search.seed` and the seeding study run: its own draws, the same
    on every run of the same warm start (recorded as the study run's `warm_start.sampler_seed`)."""
    spec = spec_of(tmp_path, tiny_dataset, "new")
    earlier = seeded_searcher(spec, None)
    first = [earlier.suggest(f"old{i}") for i in range(3)]  # the seeding study's first configurations
    warm = WarmStart("old", "a" * 32, tuple(first), (0.5, 0.6, 0.4), {})

    def drawn(warm: WarmStart) -> list[dict[str, float]]:
        searcher = seeded_searcher(spec, warm)
        return [searcher.suggest(f"new{i}") for i in range(3)]

    mine = drawn(warm)
    assert all(config != old for config in mine for old in first), (mine, first)
    assert drawn(warm) == mine, "the same warm start draws the same configurations"
    assert drawn(WarmStart("old", "b" * 32, tuple(first), (0.5, 0.6, 0.4), {})) != mine

    seed = warm.sampler_seed(spec.search.seed)
    assert 0 <= seed < 2**32 and seed != spec.search.seed
    assert warm.run_params(spec.search.seed) == {
        PARAM_WARM_START_TRIALS: 3,
        PARAM_WARM_START_SAMPLER_SEED: seed,
    }
    assert warm.run_tags() == {TAG_WARM_START: "a" * 32}, "nothing accepted: nothing more recorded"


# ---------------------------------------------------------------------------- refusals, one line each

REFUSALS = {
    "another metric": (
        {"metric": "val_loss", "mode": "min"},
        {},
        "--warm-start: study 'old' ranked its trials on val_loss (min), this search ranks on val_acc (max); "
        "values of another metric or mode cannot seed this search",
    ),
    "another mode": (
        {"mode": "min"},
        {},
        "--warm-start: study 'old' ranked its trials on val_acc (min), this search ranks on val_acc (max); "
        "values of another metric or mode cannot seed this search",
    ),
    "other weights": (
        {"metric": {"val_acc": 0.5, "val_acc_worst": 0.5}},
        {"metric": {"val_acc": 0.8, "val_acc_worst": 0.2}},
        "--warm-start: study 'old' ranked its trials on objective = 0.5*val_acc + 0.5*val_acc_worst (max), "
        "this search ranks on objective = 0.8*val_acc + 0.2*val_acc_worst (max); values of another "
        "metric or mode cannot seed this search",
    ),
    "a parameter missing": (
        {},
        {"space": {"weight_decay": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}},
        "--warm-start: parameter 'weight_decay' of this search was not searched by study 'old' (it "
        "searched lr, augment_strength), so its trials have no value to seed it with",
    ),
    "an extra parameter": (
        {"space": {"weight_decay": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}},
        {},
        "--warm-start: study 'old' also searched parameter 'weight_decay', which this search does not; its "
        "values shaped the trials' results, so they cannot seed a search that holds it fixed",
    ),
    "another type": (
        {},
        {"space": {"lr": {"type": "uniform", "low": 0.01, "high": 0.2}}},
        "--warm-start: parameter 'lr' is searched uniform here but was loguniform in study 'old'; Optuna "
        "cannot seed one with the other",
    ),
}


def _search(spec: dict[str, Any], changes: dict[str, Any]) -> JobSpec:
    data = {**spec, "search": {**spec["search"], "space": dict(spec["search"]["space"])}}
    for key, value in changes.items():
        if key == "space":
            data["search"]["space"].update(value)
        else:
            data["search"][key] = value
    return JobSpec.model_validate(data)


@pytest.mark.parametrize("case", list(REFUSALS))
def test_an_incompatible_search_is_refused_in_one_line_naming_why(case, tmp_path, tiny_dataset) -> None:
    earlier_changes, new_changes, message = REFUSALS[case]
    base = tiny_spec_dict(tmp_path, tiny_dataset)
    with pytest.raises(DynconvError) as exc:
        check_compatible(_search(base, new_changes), _search(base, earlier_changes), "old")
    assert one_line(exc) == message


def test_a_study_with_no_trial_to_seed_is_refused(tmp_path, tiny_dataset) -> None:
    earlier = spec_of(tmp_path, tiny_dataset, "old")
    parent = write_study(
        earlier, [trial(0.02, 0.1, "failed", val_acc=[0.3]), trial(0.15, 0.1, val_acc=[0.3, 0.4])]
    )
    spec = spec_of(tmp_path, tiny_dataset, "new", {"lr": {"type": "loguniform", "low": 0.01, "high": 0.1}})
    with pytest.raises(DynconvError) as exc:
        load_warm_start(spec, spec.tracking_uri(), "old")
    assert one_line(exc) == (
        f"--warm-start: no trial of study 'old' (run {parent}) can seed this search (2 trials: 1 not "
        "finished, 1 with lr outside [0.01, 0.1])"
    )


TRAINED_OTHERWISE = {
    "model name": (
        {"model": {"name": "simple_cnn_dynamic", "args": {}}},
        "model",
        "model.name 'simple_cnn_dynamic' there",
    ),
    "model args": ({"model": {"args": {"stem": "small", "width": 8}}}, "model", "model.args {'stem': "),
    "image size": ({"data": {"image_size": 32}}, "data", "data.image_size 32 there, 16 here"),
    "dataset": ({"data": {"root": None}}, "data", "data.root None there, '"),
    "epochs": ({"train": {"epochs": 3}}, "epochs", "train.epochs 3 there, 2 here"),
    "scheduler": ({"scheduler": {"name": "none"}}, "scheduler", "scheduler.name 'none' there, 'asha' here"),
}


def _trained_with(tmp: Path, dataset: Path, changes: dict[str, Any]) -> JobSpec:
    data = tiny_spec_dict(tmp, dataset)
    for section, values in changes.items():
        data[section] = {**data[section], **values}
    return parse_spec(data)


@pytest.mark.parametrize("case", list(TRAINED_OTHERWISE))
def test_a_study_trained_otherwise_is_refused_unless_accepted(case, tmp_path, tiny_dataset) -> None:
    """Issue 28: another model, data, epochs or scheduler gave the earlier values; they seeded the search
    as if they were its own. Refused in one line naming the field and both values, unless accepted."""
    changes, group, shown = TRAINED_OTHERWISE[case]
    spec = parse_spec(tiny_spec_dict(tmp_path, tiny_dataset))
    earlier = _trained_with(tmp_path, tiny_dataset, changes)
    with pytest.raises(DynconvError) as exc:
        check_same_training(spec, earlier, "old")
    text = one_line(exc)
    assert text.startswith(f"--warm-start: study 'old' trained otherwise than this study will ({shown}")
    assert text.endswith(f"to seed it anyway, add --warm-start-accept {group}")
    others = frozenset(g for g in ("model", "data", "epochs", "scheduler") if g != group)
    with pytest.raises(DynconvError):
        check_same_training(spec, earlier, "old", others)
    accepted = check_same_training(spec, earlier, "old", frozenset({group}))
    assert shown in "; ".join(f"{field} {both}" for field, both in accepted.items())
    assert check_same_training(spec, spec, "old") == {}


def test_every_difference_is_named_in_the_one_line(tmp_path, tiny_dataset) -> None:
    spec = parse_spec(tiny_spec_dict(tmp_path, tiny_dataset))
    earlier = _trained_with(tmp_path, tiny_dataset, {"train": {"epochs": 3}, "data": {"image_size": 32}})
    with pytest.raises(DynconvError) as exc:
        check_same_training(spec, earlier, "old", frozenset({"model"}))
    assert one_line(exc) == (
        "--warm-start: study 'old' trained otherwise than this study will (data.image_size 32 there, 16 "
        "here; train.epochs 3 there, 2 here), so its values would seed this search as if they measured "
        "its configurations; to seed it anyway, add --warm-start-accept data,epochs"
    )


def test_an_accepted_difference_seeds_the_search_and_is_recorded(tmp_path, tiny_dataset) -> None:
    data = spec_dict(tmp_path, tiny_dataset, "old")
    data["train"]["epochs"] = 3
    parent = write_study(parse_spec(data), [trial(0.02, 0.1, val_acc=[0.3, 0.4, 0.5])])
    spec = spec_of(tmp_path, tiny_dataset, "new")
    uri = spec.tracking_uri()
    with pytest.raises(DynconvError) as exc:
        load_warm_start(spec, uri, "old", accept=["model"])
    assert "train.epochs 3 there, 2 here" in one_line(exc)
    with pytest.raises(DynconvError) as exc:
        load_warm_start(spec, uri, "old", accept=["epochs", "optimizer"])
    assert one_line(exc) == (
        "--warm-start-accept: unknown 'optimizer'; choose among model, data, epochs, scheduler"
    )

    warm = load_warm_start(spec, uri, "old", accept=["epochs", ""])
    assert warm.accepted == {"train.epochs": "3 there, 2 here"}
    assert warm.describe() == (
        f"warm start: 1 trial of study 'old' (run {parent}) seeds the search; accepted: train.epochs 3 "
        "there, 2 here"
    )
    assert warm.run_tags() == {
        TAG_WARM_START: parent,
        TAG_WARM_START_ACCEPTED: "train.epochs 3 there, 2 here",
    }


# ---------------------------------------------------------------------------- through the command line


def _spec_file(tmp: Path, dataset: Path, study: str) -> Path:
    path = tmp / f"{study}.yaml"
    path.write_text(yaml.safe_dump(spec_dict(tmp, dataset, study), sort_keys=False))
    return path


def _study_runs(uri: str) -> list[Any]:
    return search_runs(uri, "tags.`dynconv.role` = 'study'")


def test_cli_refusals_are_one_line_before_any_run_or_ray(tmp_path, tiny_dataset, capsys) -> None:
    import ray

    earlier = spec_of(
        tmp_path, tiny_dataset, "old", {"weight_decay": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}
    )
    write_study(earlier, [trial(0.02, 0.1, val_acc=[0.3, 0.5])])
    bigger = spec_dict(tmp_path, tiny_dataset, "bigger")
    bigger["data"]["image_size"] = 32
    write_study(parse_spec(bigger), [trial(0.02, 0.1, val_acc=[0.3, 0.5])])
    path = _spec_file(tmp_path, tiny_dataset, "new")
    uri = earlier.tracking_uri()
    capsys.readouterr()  # MLflow's lines from creating the store above

    cases = [
        (
            ["--warm-start", "old", "--resume"],
            "dynconv: error: --warm-start and --resume together: a resumed study's searcher already holds "
            "its history (with the trials that seeded it, if any); drop --warm-start",
        ),
        (
            ["--warm-start", "old"],
            "dynconv: error: --warm-start: study 'old' also searched parameter 'weight_decay', which this "
            "search does not; its values shaped the trials' results, so they cannot seed a search that "
            "holds it fixed",
        ),
        (
            ["--warm-start", "bigger"],
            "dynconv: error: --warm-start: study 'bigger' trained otherwise than this study will "
            "(data.image_size 32 there, 16 here), so its values would seed this search as if they "
            "measured its configurations; to seed it anyway, add --warm-start-accept data",
        ),
        (
            ["--warm-start", "nosuch"],
            f"dynconv: error: unknown study or run 'nosuch' in {uri}; known studies: bigger, old",
        ),
        (
            ["--warm-start-accept", "data"],
            "dynconv: error: --warm-start-accept without --warm-start: there is no earlier study to accept",
        ),
        (
            ["--warm-start", "bigger", "--warm-start-accept", "data,size"],
            "dynconv: error: --warm-start-accept: unknown 'size'; choose among model, data, epochs, "
            "scheduler",
        ),
    ]
    for flags, line in cases:
        assert main(["tune", str(path), *flags]) == 2
        out, err = capsys.readouterr()
        assert err.splitlines() == [line]
        assert "warm start:" not in out
    studies = sorted(r.data.tags[TAG_STUDY] for r in _study_runs(uri))
    assert studies == ["bigger", "old"], "no study run was created"
    assert not (tmp_path / "cache").exists(), "no data cache was built"
    assert not ray.is_initialized()


def test_cli_seeds_the_search_and_tags_the_new_study_run(tmp_path, tiny_dataset, capsys, monkeypatch) -> None:
    """`dynconv tune SPEC --warm-start old --warm-start-accept epochs` (the earlier study trained 3 epochs,
    this one 2) up to the built Tuner: the line, the tags and params, the seeded searcher."""
    import dynconv.tune.study as study_module

    earlier = spec_dict(tmp_path, tiny_dataset, "old")
    earlier["train"]["epochs"] = 3
    parent = write_study(
        parse_spec(earlier), [trial(0.02, 0.1, val_acc=[0.3, 0.5]), trial(0.05, 0.4, val_acc=[0.6, 0.7])]
    )
    spec = spec_of(tmp_path, tiny_dataset, "new")
    built: list[Any] = []

    def record_searcher(spec: JobSpec, warm: Any = None) -> Any:
        built.append((spec, build_searcher(spec, warm)))
        return built[-1][1]

    def no_fit(tuner: Any, timings: dict) -> None:
        raise DynconvError("test: stopped before the fit")

    import ray

    monkeypatch.setattr(study_module, "build_searcher", record_searcher)
    monkeypatch.setattr(study_module, "_start_ray", lambda *args: 1)  # no Ray: one trial at a time
    monkeypatch.setattr(study_module, "_fit_tuner", no_fit)
    path = str(_spec_file(tmp_path, tiny_dataset, "new"))
    assert main(["tune", path, "--warm-start", "old", "--warm-start-accept", "epochs"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines()[-1] == "dynconv: error: test: stopped before the fit"  # after progress bars
    assert (
        f"warm start: 2 trials of study 'old' (run {parent}) seed the search; accepted: train.epochs 3 "
        "there, 2 here\n"
    ) in out

    new = [r for r in _study_runs(spec.tracking_uri()) if r.data.tags[TAG_STUDY] == "new"]
    assert len(new) == 1
    assert new[0].data.tags[TAG_WARM_START] == parent
    assert new[0].data.tags[TAG_WARM_START_ACCEPTED] == "train.epochs 3 there, 2 here"
    assert new[0].data.params[PARAM_WARM_START_TRIALS] == "2"
    seed = WarmStart("old", parent, (), (), {}).sampler_seed(spec.search.seed)
    assert new[0].data.params[PARAM_WARM_START_SAMPLER_SEED] == str(seed)

    assert not ray.is_initialized()

    ((resolved, searcher),) = built
    searcher.set_search_properties(*tune_metric_mode(resolved), param_space(resolved))  # as Tune does
    assert [(t.state, t.params, t.values) for t in searcher.optuna_study.trials] == [
        (TrialState.COMPLETE, {"lr": 0.02, "augment_strength": 0.1}, [0.5]),
        (TrialState.COMPLETE, {"lr": 0.05, "augment_strength": 0.4}, [0.7]),
    ]


# ---------------------------------------------------------------------------- a real study, with Ray


@pytest.mark.ray
def test_a_warm_started_study_runs_its_own_trials_after_the_seeded_ones(tmp_path, tiny_dataset) -> None:
    """One one-epoch trial in a local Ray: Tune's own Tuner seeds the searcher (param_space path), runs
    only the new trial, and the searcher it saves holds the earlier trials first."""
    import ray

    from dynconv.tracking.store import client
    from dynconv.tune.searcher import EpochOptunaSearch
    from dynconv.tune.study import run_study

    sections = {
        "train": {"epochs": 1},
        "scheduler": {"name": "none"},
        "search": {"num_samples": 1},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1.0, "driver_cpus": 0.2},
        "evaluate": {"enabled": False},
    }
    earlier = parse_spec(tiny_spec_dict(tmp_path, tiny_dataset, study="old", **sections))
    parent = write_study(earlier, [trial(0.02, 0.1, val_acc=[0.5]), trial(0.05, 0.4, val_acc=[0.4])])
    spec = parse_spec(tiny_spec_dict(tmp_path, tiny_dataset, study="new", **sections))
    ray.init(num_cpus=2, include_dashboard=None, logging_level="ERROR")
    try:
        result = run_study(spec, warm_start="old")
    finally:
        ray.shutdown()
    assert len(result.trials) == 1 and result.best is not None
    run = client(result.tracking_uri).get_run(result.parent_run_id)
    assert run.data.tags[TAG_WARM_START] == parent

    searcher = EpochOptunaSearch(epochs=1)
    searcher.restore_from_dir(result.tune_path)
    trials = searcher.optuna_study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [t.params["lr"] for t in trials[:2]] == [0.02, 0.05]
    assert trials[2].params["lr"] == pytest.approx(result.trials[0].params["lr"])
