"""End to end: a 2-trial study, 2 DDP workers per trial, Optuna TPE + ASHA, everything landing in MLflow;
then a one-worker trial (trained in its Tune actor) that is killed mid-study and resumes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from dynconv.errors import DynconvError
from dynconv.spec import parse_spec
from dynconv.tracking.layout import TAG_OUTCOME, TAG_PARENT, TAG_TRIAL_ID, find_runs
from dynconv.tracking.store import client
from tests import mlflow_layout
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=None, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def study(ray_local, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    from dynconv.tune.study import run_study

    tmp = tmp_path_factory.mktemp("study")
    spec = parse_spec(tiny_spec_dict(tmp, tiny_dataset))
    return spec, run_study(spec)


def _children(result, role: str) -> list:
    runs = find_runs(result.tracking_uri, result.experiment_id, role=role)
    return [r for r in runs if r.data.tags.get(TAG_PARENT) == result.parent_run_id]


def test_every_trial_reports_every_epoch_it_ran(study) -> None:
    spec, result = study
    assert not result.interrupted
    assert len(result.trials) == 2
    c = client(result.tracking_uri)
    for trial in result.trials:
        assert trial.run_id is not None
        steps = [m.step for m in c.get_metric_history(trial.run_id, "val_acc")]
        # Contiguous from epoch 1. A trial ASHA stops may log one more epoch than Tune saw: its worker
        # finishes the epoch in flight before the stop reaches it.
        assert steps == list(range(1, len(steps) + 1))
        assert trial.epochs <= len(steps) <= trial.epochs + 1
        sizes = {m.value for m in c.get_metric_history(trial.run_id, "world_size")}
        assert sizes == {2.0}, "each trial trains with 2 DDP workers"
    assert max(t.epochs for t in result.trials) == spec.train.epochs


def test_mlflow_holds_parent_and_one_child_per_trial(study) -> None:
    spec, result = study
    c = client(result.tracking_uri)
    parent = c.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["space.lr"].startswith("loguniform")
    assert "best_val_acc" in parent.data.metrics
    assert [a.path for a in c.list_artifacts(result.parent_run_id)].count("spec.yaml") == 1

    children = _children(result, "trial")
    assert len(children) == 2, "exactly one MLflow run per trial"
    by_trial = {t.trial_id: t for t in result.trials}
    for run in children:
        trial = by_trial[run.data.tags[TAG_TRIAL_ID]]
        assert run.data.metrics["flops"] > 0 and run.data.metrics["params"] > 0
        assert float(run.data.params["lr"]) == pytest.approx(trial.params["lr"])
        assert [a.path for a in c.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/state.pt"]
        # ASHA's stop is an ordinary end: FINISHED, the outcome tag says which.
        assert run.info.status == "FINISHED"
        outcome = "finished" if trial.epochs == spec.train.epochs else "stopped_early"
        assert run.data.tags[TAG_OUTCOME] == outcome


def test_mlflow_layout_is_the_recorded_one(study) -> None:
    """Run names, tags, param/metric keys and artifacts of the study, its trials and its evaluation."""
    _, result = study
    mlflow_layout.check("tune_study", mlflow_layout.layout(result.tracking_uri, result.parent_run_id))


def test_tpe_and_asha_are_the_searcher_and_scheduler(study) -> None:
    """Inspect what the study really ran with, from Tune's own saved state (not rebuilt from the spec):
    the searcher's state (saved as the study ran) and the Tuner's config (saved when it was built)."""
    import pickle

    from ray.tune.schedulers import ASHAScheduler

    spec, result = study
    state = Path(result.tune_path)
    [saved] = state.glob("searcher-state-*.pkl")
    searcher = pickle.loads(saved.read_bytes())  # OptunaSearch.save(): its attributes as a dict
    sampler = searcher["_sampler"]
    assert type(sampler).__name__ == "TPESampler"
    assert sampler._n_startup_trials == spec.search.tpe_startup_trials
    assert (searcher["_metric"], searcher["_mode"]) == ("val_acc", "max")
    lr, aug = searcher["_space"]["lr"], searcher["_space"]["augment_strength"]
    assert (lr.log, lr.low, lr.high) == (True, 0.01, 0.2)
    assert (aug.log, aug.low, aug.high) == (False, 0.0, 0.5)
    # The Optuna study behind the searcher suggested exactly the trials' values.
    suggested = sorted(t.params["lr"] for t in searcher["_ot_study"].trials)
    assert suggested == pytest.approx(sorted(t.params["lr"] for t in result.trials))
    assert len(set(suggested)) == 2 and all(0.01 <= v <= 0.2 for v in suggested)

    config = pickle.loads((state / "tuner.pkl").read_bytes())["_tune_config"]
    assert config.search_alg._sampler.__class__.__name__ == "TPESampler"
    scheduler = config.scheduler
    assert isinstance(scheduler, ASHAScheduler) and scheduler._time_attr == "epoch"
    assert scheduler._max_t == spec.train.epochs and scheduler._reduction_factor == 2.0
    # rungs at grace_period * reduction_factor**k up to max_t (1 and 2 epochs), as Ray lists them
    assert [milestone for milestone, _ in scheduler._brackets[0]._rungs] == [2.0, 1.0]


def test_checkpoint_rebuilds_the_model(study) -> None:
    import torch

    from dynconv.models import create_model

    _, result = study
    best = result.best
    path = client(result.tracking_uri).download_artifacts(best.run_id, "checkpoint/state.pt")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model(state["model_name"], num_classes=state["num_classes"], **state["model_args"])
    model.load_state_dict(state["model"])
    assert state["spec"]["train"]["lr"] == pytest.approx(best.params["lr"])
    assert state["epoch"] == best.epochs


def test_an_error_in_the_evaluation_task_is_the_one_line_it_raised(study) -> None:
    from dynconv.spec.data import prepare_for_spec
    from dynconv.tune.remote_evaluation import on_a_worker
    from dynconv.tune.trial import TrialContext

    spec, _ = study
    data = prepare_for_spec(spec, progress=False)  # the cache the study built
    context = TrialContext("x", str(data.cache_dir), data.fingerprint, "GPU", "PACK", -1)
    evaluate = on_a_worker(spec, context)
    with pytest.raises(DynconvError) as err:
        evaluate({"num_classes": data.num_classes + 1}, "r1", ["RGB"], "test", None)
    assert str(err.value) == f"checkpoint of run r1 has {data.num_classes + 1} classes, the dataset 3"


def test_unreachable_tracking_server_fails_before_training(tiny_dataset: Path, tmp_path: Path) -> None:
    from dynconv.tune.study import run_study

    data = tiny_spec_dict(tmp_path, tiny_dataset)
    data["mlflow"] = {"tracking_uri": "http://127.0.0.1:9"}
    with pytest.raises(DynconvError, match=r"MLflow tracking server http://127.0.0.1:9 is unreachable"):
        run_study(parse_spec(data))
    assert not (tmp_path / "ray_results").exists()


def test_unwritable_storage_fails_before_training(tiny_dataset: Path, tmp_path: Path) -> None:
    from dynconv.tune.study import run_study

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    data = tiny_spec_dict(tmp_path, tiny_dataset, storage_path=str(blocker / "ray_results"))
    with pytest.raises(DynconvError, match=r"Ray storage path .* is not writable"):
        run_study(parse_spec(data))


def test_a_study_whose_trials_all_diverge_says_so_and_fails(
    ray_local, tiny_dataset: Path, tmp_path: Path, capsys
) -> None:
    """SGD at lr 10 with weight decay 100: the weights overflow within the first epoch, so its loss is NaN.
    Each trial is stopped there, closed FAILED as `diverged`, never ranked nor evaluated, and the study
    ends in one error line."""
    from dynconv.tune.study import run_study

    data = tiny_spec_dict(
        tmp_path,
        tiny_dataset,
        train={
            "epochs": 4,
            "optimizer": "sgd",
            "weight_decay": 100.0,
            "schedule": {"name": "constant", "warmup_epochs": 0},
        },
        scheduler={"name": "none"},
        search={"num_samples": 2},
        resources={"workers_per_trial": 1, "cpus_per_worker": 0.5, "driver_cpus": 0.1},
    )
    data["search"]["space"]["lr"] = {"type": "uniform", "low": 9.9, "high": 10.0}
    with pytest.raises(DynconvError, match=r"study 'tiny' has no trial to rank \(2 diverged\)"):
        run_study(parse_spec(data))
    out = capsys.readouterr().out
    assert out.count("DIVERGED at epoch ") == 2 and "not ranked, not evaluated" in out, out
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = client(uri).get_experiment_by_name("tiny").experiment_id
    trials = find_runs(uri, exp, role="trial")
    assert {(r.info.status, r.data.tags["dynconv.outcome"]) for r in trials} == {("FAILED", "diverged")}
    assert all(int(r.data.tags["dynconv.epochs_done"]) < 4 for r in trials), "stopped at the divergence"
    assert find_runs(uri, exp, role="evaluation") == []
    assert [r.info.status for r in find_runs(uri, exp, role="study")] == ["FAILED"]

    from dynconv.cli import main  # nothing to confirm either: one line, before Ray is asked for anything

    assert main(["confirm", "tiny", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "dynconv: error: study 'tiny' has no finished trial to confirm (trials: diverged)"
    assert find_runs(uri, exp, role="confirmation") == []


# -------------------------------------------------------- multi-objective study (issue 14), same Ray instance


@pytest.fixture(scope="module")
def pareto_study(ray_local, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """3 trials, 1 epoch, 1 worker each, NSGA-II on (val_acc, val_acc_worst), FIFO, Pareto set evaluated."""
    from dynconv.tune.study import run_study

    tmp = tmp_path_factory.mktemp("pareto")
    data = tiny_spec_dict(
        tmp,
        tiny_dataset,
        train={
            "epochs": 1,
            "schedule": {"name": "onecycle", "warmup_epochs": 0.5},
            "val_subsets": ["RGB", "R", "GB"],
        },
        search={
            "objectives": ["val_acc", "val_acc_worst"],
            "algorithm": "nsga2",
            "num_samples": 3,
        },
        scheduler={"name": "none"},
        resources={"workers_per_trial": 1, "cpus_per_worker": 0.4, "driver_cpus": 0.1},
        evaluate={"enabled": True, "subsets": ["RGB", "R"]},
    )
    data["search"]["space"] = {
        **data["search"]["space"],
        "channel_drop": {"type": "uniform", "low": 0.0, "high": 0.5},
        "schedule": {"type": "choice", "values": ["cosine", "onecycle"]},
    }
    spec = parse_spec(data)
    return spec, run_study(spec)


def test_multi_objective_study_lists_its_pareto_trials(pareto_study) -> None:
    from dynconv.spec.ranking import pareto_front
    from dynconv.tracking.layout import TAG_SOURCE_RUN

    _, result = pareto_study
    assert not result.interrupted and len(result.trials) == 3
    assert all(t.status == "FINISHED" for t in result.trials), "FIFO: every trial runs all its epochs"
    c = client(result.tracking_uri)
    parent = c.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    runs = {r.info.run_id: r for r in _children(result, "trial")}
    assert len(runs) == 3
    for run in runs.values():  # subset validation reached MLflow, and the searched fields the trial
        m = run.data.metrics
        assert {"val_acc_RGB", "val_acc_R", "val_acc_GB", "val_acc_worst"} <= set(m)
        assert m["val_acc_worst"] == pytest.approx(min(m["val_acc_RGB"], m["val_acc_R"], m["val_acc_GB"]))
        assert (
            run.data.params["schedule"] in ("cosine", "onecycle")
            and 0 <= float(run.data.params["channel_drop"]) <= 0.5
        )

    # The parent lists exactly the non-dominated trials, recomputed here from the trial runs.
    ids = list(runs)
    front = {
        ids[i]
        for i in pareto_front(
            [[runs[r].data.metrics["val_acc"], runs[r].data.metrics["val_acc_worst"]] for r in ids],
            ["max", "max"],
        )
    }
    listed = parent.data.tags["dynconv.pareto_run_ids"].split(",")
    assert front and set(listed) == front
    assert len(parent.data.tags["dynconv.pareto_trials"].split(",")) == len(listed)
    assert {t.run_id for t in result.pareto} == front and result.best in result.pareto

    # The end-of-study evaluation evaluated the whole Pareto set, one child run each.
    evaluated = {r.data.tags[TAG_SOURCE_RUN] for r in _children(result, "evaluation")}
    assert evaluated == front


# --- Single-worker trials train in their Tune trial actor (no TorchTrainer): same results, same resume ---

IN_ACTOR_EPOCHS = 4


@pytest.fixture(scope="module")
def slower_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Epochs of about a second, so a trial can be killed between two of them."""
    from dynconv.data.synth import write_synthetic

    return write_synthetic(
        tmp_path_factory.mktemp("synthetic_slow"), classes=3, per_class=500, size=24, seed=0
    )


def _reported_pids(storage: Path, min_epoch: int) -> list[int]:
    """Pids of the trial processes that reported epoch >= `min_epoch` to Tune (its result.json files);
    a local file read, where the State API took seconds on a loaded machine and lost the race."""
    import json

    pids = []
    for results in storage.glob("*/*/result.json"):
        for line in results.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line still being written
                row = json.loads(line)
                if row.get("epoch", 0) >= min_epoch:
                    pids.append(row["pid"])
    return pids


@pytest.fixture(scope="module")
def killed_single_worker_study(ray_local, slower_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """A one-trial, one-worker study whose trial actor is SIGKILLed after it logged epoch 2."""
    import signal
    import threading
    import time

    from dynconv.tune.study import run_study

    tmp = tmp_path_factory.mktemp("in_actor")
    spec = parse_spec(
        tiny_spec_dict(
            tmp,
            slower_dataset,
            model={"args": {"stem": "small", "width": 8}},
            data={"image_size": 24},
            train={"epochs": IN_ACTOR_EPOCHS},
            scheduler={"name": "none"},
            search={"num_samples": 1},
            resources={"workers_per_trial": 1, "cpus_per_worker": 1.0, "driver_cpus": 0.2},
            evaluate={"enabled": False},
        )
    )
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(result=run_study(spec)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    killed = None
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        pids = _reported_pids(Path(spec.storage_uri()), min_epoch=2)
        if pids:
            killed = pids[-1]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.1)
    thread.join(timeout=300)
    assert killed is not None, "the trial never reached epoch 2 (or the study ended first)"
    return box["result"], killed


def test_single_worker_trial_trains_in_its_tune_actor(killed_single_worker_study) -> None:
    result, _ = killed_single_worker_study
    state = Path(result.tune_path)
    assert list(state.glob("*/checkpoint_*/state.pt")), "checkpoints are Tune's, in the trial's Tune dir"
    assert not list(state.parent.glob(f"{state.name}-*")), "no Ray Train run was started"
    assert [t.status for t in result.trials] == ["FINISHED"]


def test_single_worker_trial_logs_what_a_ddp_trial_logs(study, killed_single_worker_study) -> None:
    _, ddp = study
    single, _ = killed_single_worker_study
    c = client(ddp.tracking_uri)
    ddp_run = c.get_run(_children(ddp, "trial")[0].info.run_id)
    run = client(single.tracking_uri).get_run(single.trials[0].run_id)
    assert set(run.data.metrics) == set(ddp_run.data.metrics)
    assert set(run.data.params) == set(ddp_run.data.params)
    assert set(run.data.tags) == set(ddp_run.data.tags)
    assert run.data.params["workers_per_trial"] == "1" and run.data.metrics["world_size"] == 1.0
    artifacts = client(single.tracking_uri).list_artifacts(run.info.run_id, "checkpoint")
    assert [a.path for a in artifacts] == ["checkpoint/state.pt"]


def test_killed_single_worker_trial_resumes_from_its_checkpoint(killed_single_worker_study) -> None:
    result, killed = killed_single_worker_study
    c = client(result.tracking_uri)
    runs = find_runs(result.tracking_uri, result.experiment_id, role="trial")
    assert [r.info.run_id for r in runs] == [result.trials[0].run_id], "the retried trial kept its run"
    assert runs[0].info.status == "FINISHED"
    epochs = [m.step for m in c.get_metric_history(runs[0].info.run_id, "epoch")]
    assert sorted(set(epochs)) == list(range(1, IN_ACTOR_EPOCHS + 1))
    assert len(epochs) - IN_ACTOR_EPOCHS <= 1, (
        f"resumed from its latest checkpoint, not from scratch: {epochs}"
    )
    import json

    (results,) = Path(result.tune_path).glob("*/result.json")
    pids = [json.loads(line)["pid"] for line in results.read_text().splitlines()]
    assert killed in pids and pids[-1] != killed, "the killed trial actor was replaced and finished the trial"


# ------------------------------------------------- confirmation over seeds (issue 21), same Ray instance


def _interrupt_once_a_confirmation_run_finished(spec, timeout_s: float = 180) -> None:
    """SIGINT to this process (Tune's handler: stop the trials, save the state) once the study's
    confirmation phase has finished its first run."""
    import signal
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if list(Path(spec.storage_uri()).glob("*-confirm-k*")):  # the phase has begun: MLflow is set up
            exp = client(spec.tracking_uri()).get_experiment_by_name(spec.experiment)
            runs = find_runs(spec.tracking_uri(), exp.experiment_id, role="confirmation")
            if any(r.data.tags.get("dynconv.outcome") == "finished" for r in runs):
                os.kill(os.getpid(), signal.SIGINT)
                return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def confirmed_study(ray_local, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """2 trials of 1 epoch trained in their actors, then both configurations confirmed with 3 new seeds;
    the confirmation is interrupted (SIGINT) once its first run finished, and `--resume` continues it.
    Returns (spec, the resumed study's result, the interrupted one's, the runs finished before)."""
    import threading

    from dynconv.tune.study import run_study

    tmp = tmp_path_factory.mktemp("confirmed")
    data = tiny_spec_dict(
        tmp,
        tiny_dataset,
        train={"epochs": 1, "schedule": {"name": "constant", "warmup_epochs": 0}},
        scheduler={"name": "none"},
        resources={"workers_per_trial": 1, "cpus_per_worker": 0.5, "driver_cpus": 0.1},
        evaluate={"enabled": False, "subsets": ["RGB", "R", "GB"]},
        confirm={"enabled": True, "top_k": 2, "seeds": 3},
    )
    spec = parse_spec(data).resolved()
    watcher = threading.Thread(target=_interrupt_once_a_confirmation_run_finished, args=(spec,), daemon=True)
    watcher.start()
    interrupted = run_study(spec)
    watcher.join()
    kept = {
        r.info.run_id
        for r in _confirmation_runs(interrupted)
        if r.data.tags.get("dynconv.outcome") == "finished"
    }
    return spec, run_study(spec, resume=True), interrupted, kept


def _confirmation_runs(result) -> list:
    return _children(result, "confirmation")


def test_confirmation_retrains_the_top_configurations_with_new_seeds(confirmed_study) -> None:
    _, result, *_ = confirmed_study
    runs = _confirmation_runs(result)
    top = {t.run_id for t in result.ranked[:2]}
    assert len(runs) == 6
    assert {r.data.tags["dynconv.confirms"] for r in runs} == top
    [phase] = {r.data.tags["dynconv.confirmation"] for r in runs}
    assert phase == f"{result.run_name}-confirm-k2-s3", "which confirmation: top_k x seeds"
    for source in top:
        mine = [r for r in runs if r.data.tags["dynconv.confirms"] == source]
        seeds = sorted(int(r.data.params["train.seed"]) for r in mine)
        assert seeds == [1, 2, 3], "new seeds, not the search's 0"
        lrs = {r.data.params["lr"] for r in mine}
        assert len(lrs) == 1 and float(lrs.pop()) == pytest.approx(
            next(t.params["lr"] for t in result.trials if t.run_id == source)
        )
    for r in runs:
        assert (r.info.status, r.data.tags["dynconv.outcome"]) == ("FINISHED", "finished")
        assert {"test_acc_RGB", "test_acc_R", "test_acc_GB", "val_acc", "flops"} <= set(r.data.metrics)


def test_the_verdict_is_computed_from_the_seeds_and_recorded_on_the_study_run(confirmed_study) -> None:
    from scipy import stats as sp

    from dynconv.tracking.artifacts import download_yaml

    _, result, *_ = confirmed_study
    verdict = result.confirmation.verdict
    runs = _confirmation_runs(result)
    by_source: dict[str, list[float]] = {}
    for r in runs:
        by_source.setdefault(r.data.tags["dynconv.confirms"], []).append(r.data.metrics["val_acc"])
    means = {k: sum(v) / len(v) for k, v in by_source.items()}
    best = max(means, key=means.get)
    assert verdict.best_mean.source_run_id == best
    values = by_source[best]
    half = sp.t.ppf(0.975, len(values) - 1) * sp.tstd(values) / len(values) ** 0.5
    score = verdict.best_mean.score()
    assert (score.mean, score.high - score.mean) == pytest.approx((means[best], half))
    other = next(v for k, v in by_source.items() if k != best)
    expected_p = sp.ttest_ind(values, other, equal_var=False).pvalue
    if verdict.test is not None and verdict.test.p_value == verdict.test.p_value:  # not NaN
        assert verdict.test.p_value == pytest.approx(expected_p)
    assert verdict.significant == (verdict.test.p_value < 0.05)

    c = client(result.tracking_uri)
    parent = c.get_run(result.parent_run_id)
    assert parent.data.tags["dynconv.verdict"].startswith(("champion:", "best mean:"))
    assert parent.data.metrics["confirmed_val_acc"] == pytest.approx(verdict.champion.score().mean)
    assert "Confirmation over seeds" in parent.data.tags["mlflow.note.content"]
    recorded = download_yaml(result.tracking_uri, result.parent_run_id, "confirmation.json")
    assert recorded["champion"] == verdict.champion.source_run_id
    assert recorded["alias"] == ("champion" if verdict.significant else "candidate")
    assert {c["source_run_id"] for c in recorded["configurations"]} == set(by_source)
    assert parent.data.tags["dynconv.champion_run_id"] in {r.info.run_id for r in runs}


def test_confirm_again_trains_no_seed_twice(confirmed_study, capsys) -> None:
    """`dynconv confirm` with the same top-k and seeds continues (here: re-reads) the same confirmation."""
    from dynconv.cli import main

    _, result, *_ = confirmed_study
    before = {r.info.run_id for r in _confirmation_runs(result)}
    versions = client(result.tracking_uri).search_model_versions("name = 'tiny'")
    code = main(["confirm", "tiny", "--top-k", "2", "--seeds", "3", "--tracking-uri", result.tracking_uri])
    out = capsys.readouterr().out
    assert code == 0, out
    assert {r.info.run_id for r in _confirmation_runs(result)} == before
    assert "Verdict" in out and "reused version" in out
    again = client(result.tracking_uri).search_model_versions("name = 'tiny'")
    assert len(again) == len(versions) == 1, "no duplicate registry version"


def test_the_champion_is_registered_with_the_verdicts_alias(confirmed_study) -> None:
    _, result, *_ = confirmed_study
    verdict = result.confirmation.verdict
    c = client(result.tracking_uri)
    model = c.get_registered_model("tiny")
    version = c.get_model_version_by_alias("tiny", verdict.alias)
    assert version.run_id == verdict.champion.representative().run_id
    assert version.tags["dynconv.test_set"] and model.tags["dynconv.study"] == "tiny"
    other = "candidate" if verdict.alias == "champion" else "champion"
    assert other not in model.aliases
    import yaml

    # registered from the logged model's artifact location (not its models:/ URI, which MLflow's sqlite
    # registry resolves through the global tracking URI)
    where = version.source.removeprefix("file://")
    metadata = yaml.safe_load((Path(where) / "MLmodel").read_text())["metadata"]
    seed_run = verdict.champion.representative()
    assert metadata["test_accuracy"] == pytest.approx(seed_run.test_acc), "the registered model's own"
    assert set(metadata["confirmed_test_accuracy"]) == {"RGB", "R", "GB"}
    assert metadata["channel_slots"] == {"R": 0, "G": 1, "B": 2} and metadata["verdict"] == verdict.one_line()
    assert "registry: " in result.confirmation.registry


def test_rerun_of_the_registered_model_says_whether_it_reproduced(confirmed_study, capsys) -> None:
    from dynconv.rerun import rerun

    _, result, *_ = confirmed_study
    alias = result.confirmation.verdict.alias
    done = rerun(f"models:/tiny@{alias}", tracking_uri=result.tracking_uri, subsets=["RGB"])
    assert done.original_run_id == result.confirmation.verdict.champion.representative().run_id
    assert done.verdict.startswith(("reproduced: val_acc", "outside the interval, by "))
    out = capsys.readouterr().out
    assert f"Reproduction: {done.verdict}" in out
    original = client(result.tracking_uri).get_run(done.original_run_id).data.metrics["test_acc_RGB"]
    [row] = [line for line in out.splitlines() if line.startswith("RGB ")]
    assert row.split()[1] == f"{original:.4f}", "the original's own test accuracy, side by side"
    run = client(result.tracking_uri).get_run(done.run_id)
    assert run.data.tags["dynconv.reproduced"] == done.verdict
    params = run.data.params
    assert params["repro.seed"] == params["train.seed"] and params["repro.precision"] == "fp32"
    assert params["repro.torch"] and params["repro.data_fingerprint"] and params["repro.git_commit"]


def test_the_report_shows_the_confirmation_table_and_verdict(confirmed_study, tmp_path: Path) -> None:
    from dynconv.report.render import write_report

    _, result, *_ = confirmed_study
    verdict = result.confirmation.verdict
    report = write_report(out_dir=tmp_path, tracking_uri=result.tracking_uri).read_text()
    section = report[report.index("## Confirmation over seeds") :]
    assert "### `tiny`" in section and "val_acc mean [95% CI]" in section
    assert verdict.lines()[-1] in section
    assert (tmp_path / "confirmation.csv").is_file()


def test_an_interrupted_confirmation_continues_with_resume_and_trains_no_seed_twice(confirmed_study) -> None:
    _, result, interrupted, kept = confirmed_study
    assert interrupted.interrupted and interrupted.confirmation.interrupted
    assert client(result.tracking_uri).get_run(result.parent_run_id).info.status == "FINISHED"
    assert 1 <= len(kept) < 6
    runs = [r for r in _confirmation_runs(result) if r.data.tags.get("dynconv.outcome") == "finished"]
    pairs = [(r.data.tags["dynconv.confirms"], r.data.params["train.seed"]) for r in runs]
    assert len(pairs) == 6 and len(set(pairs)) == 6, "each configuration x seed trained once"
    assert kept <= {r.info.run_id for r in runs}, "runs finished before the interruption were kept"
    assert len(_confirmation_runs(result)) == 6, "no run of a seed started twice"


def test_a_registry_name_held_by_another_study_costs_one_line_and_nothing_else(confirmed_study) -> None:
    from dynconv.tune.confirm import ConfirmPhase, register

    spec, result, *_ = confirmed_study
    c = client(result.tracking_uri)
    c.create_registered_model("clash", tags={"dynconv.study": "someone-else"})
    phase = ConfirmPhase(
        spec.model_copy(update={"study": "clash"}),
        result.tracking_uri,
        result.experiment_id,
        result.parent_run_id,
        result.run_name,
        data=None,
        context={},
        concurrent=1,
    )
    line = register(phase, result.confirmation.verdict)
    assert line.startswith(
        "registry: not registered: registered model 'clash' belongs to study 'someone-else'"
    )
    assert "\n" not in line
    assert c.get_run(result.parent_run_id).data.tags["dynconv.registry_error"].startswith("registered model")
    assert [v.version for v in c.search_model_versions("name = 'clash'")] == []


def test_confirm_with_other_sizes_trains_no_pair_twice_and_keeps_one_version_per_configuration(
    confirmed_study, capsys
) -> None:
    """Issue 28: `dynconv confirm` with another --top-k/--seeds retrained (configuration, seed) pairs
    already trained (6 of 10 runs in one store), registered another version of the same configuration
    and overwrote the verdict with one over fewer seeds. More seeds now train only the new pairs, fewer
    train none, the verdict covers every seed trained, the registry keeps one version per configuration;
    and while a confirmation is under way, one of other sizes is refused. Last of the confirmed study's
    tests: it changes its verdict."""
    from dynconv.cli import main
    from dynconv.tracking.artifacts import download_yaml
    from dynconv.tracking.layout import set_tags

    _, result, *_ = confirmed_study
    uri, c = result.tracking_uri, client(result.tracking_uri)

    def pairs() -> list[tuple[str, int]]:
        runs = _confirmation_runs(result)
        return sorted((r.data.tags["dynconv.confirms"], int(r.data.params["train.seed"])) for r in runs)

    first = f"{result.run_name}-confirm-k2-s3"
    set_tags(uri, result.parent_run_id, {"dynconv.confirming": first})  # as if interrupted: refused
    assert main(["confirm", "tiny", "--top-k", "2", "--seeds", "4", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dynconv: error: confirmation {first} of study 'tiny' was interrupted; continue it first (dynconv "
        "confirm tiny --top-k 2 --seeds 3), then confirm with other sizes: it would otherwise train its "
        "configurations and seeds a second time"
    )
    set_tags(uri, result.parent_run_id, {"dynconv.confirming": ""})

    before = pairs()
    assert main(["confirm", "tiny", "--top-k", "2", "--seeds", "4", "--tracking-uri", uri]) == 0
    assert "(2 runs to train; 6 trained before, seeds [1, 2, 3, 4]" in capsys.readouterr().out
    after = pairs()
    assert len(after) == len(set(after)) == 8, "no (configuration, seed) pair trained twice"
    assert set(after) - set(before) == {(source, 4) for source, _ in before}, "only the new seed"

    assert main(["confirm", "tiny", "--top-k", "1", "--seeds", "2", "--tracking-uri", uri]) == 0
    assert "(0 runs to train; 2 trained before" in capsys.readouterr().out
    assert pairs() == after
    recorded = download_yaml(uri, result.parent_run_id, "confirmation.json")
    assert [len(config["seeds"]) for config in recorded["configurations"]] == [4, 4], "every seed counts"
    parent = c.get_run(result.parent_run_id)
    assert parent.data.tags["dynconv.confirming"] == ""

    configuration = {r.info.run_id: r.data.tags["dynconv.confirms"] for r in _confirmation_runs(result)}
    versions = c.search_model_versions("name = 'tiny'")
    registered = [configuration[v.tags["dynconv.source_run_id"]] for v in versions]
    assert len(registered) == len(set(registered)), "one registry version per configuration"
    assert parent.data.tags["dynconv.champion_run_id"] in {v.tags["dynconv.source_run_id"] for v in versions}


def test_a_trial_that_a_retry_would_fail_the_same_way_ends_once_with_its_line(
    ray_local, tiny_dataset: Path, tmp_path: Path, capsys
) -> None:
    """A worker that cannot open the study's data cache (a `data.cache_dir` on a disk its node does not
    see) fails identically on every retry: the trial runs once, says why in one line, and is FAILED in
    MLflow (with the line), in the searcher and in the table; Tune's two retries are not spent."""
    import pickle

    from optuna.trial import TrialState
    from ray import tune

    from dynconv.tracking.find import trial_run_ids
    from dynconv.tracking.layout import ensure_experiment, start_study_run
    from dynconv.tune.callbacks import ConsoleReporter
    from dynconv.tune.recorder import TrialRecorder
    from dynconv.tune.resources import trial_resources
    from dynconv.tune.search import build_searcher, param_space, run_config, tune_metric_mode
    from dynconv.tune.study_result import summarise_trials
    from dynconv.tune.trial import TrialContext, run_trial

    data = tiny_spec_dict(
        tmp_path,
        tiny_dataset,
        resources={"workers_per_trial": 1, "cpus_per_worker": 0.5, "driver_cpus": 0.1},
        search={"num_samples": 1},
        failure={"trial_max_failures": 2},
    )
    spec = parse_spec(data).resolved()
    uri = spec.tracking_uri()
    exp = ensure_experiment(uri, spec.study)
    parent = start_study_run(uri, exp, spec.study, {})
    context = TrialContext(
        run_name="lost-cache",
        cache_dir=str(tmp_path / "not-on-this-node"),
        cache_fingerprint="0",
        gpu_resource="GPU",
        placement_strategy="PACK",
        controller_failure_limit=-1,
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec_json=spec.to_json_dict(), context=context),
        trial_resources(spec, "GPU"),
    )
    metric, mode = tune_metric_mode(spec)
    callbacks = [
        TrialRecorder(uri, exp, parent, spec, 3),
        ConsoleReporter(spec.train.epochs, metric, mode, list(spec.search.space)),
    ]
    grid = tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=build_searcher(spec), num_samples=1),
        run_config=run_config(spec, "lost-cache", callbacks),
    ).fit()

    out = capsys.readouterr().out
    assert out.count(" started ") == 1 and "retrying" not in out, out
    [failed] = [line for line in out.splitlines() if "FAILED: " in line]
    assert "no dynconv cache here" in failed and failed.endswith("(not retried: it would fail the same way)")
    [run] = find_runs(uri, exp, role="trial")
    assert (run.info.status, run.data.tags["dynconv.outcome"]) == ("FAILED", "failed")
    assert "no dynconv cache here" in run.data.tags["dynconv.error"]
    assert "val_acc" not in run.data.metrics, "no NaN logged as if it were a score"
    [row] = summarise_trials(grid, spec, trial_run_ids(uri, exp, parent))
    assert row.status == "FAILED" and row.rank is None
    [saved] = (Path(spec.storage_uri()) / "lost-cache").glob("searcher-state-*.pkl")
    [told] = pickle.loads(saved.read_bytes())["_ot_study"].trials
    assert told.state == TrialState.FAIL


def test_a_study_whose_evaluation_fails_is_failed_and_says_what_is_missing(
    ray_local, tmp_path, tiny_dataset, monkeypatch, capsys
) -> None:
    """The search stands (its trials and checkpoints are in MLflow), but the study run is not FINISHED:
    its description starts with what is missing, and the study ends in one line, non-zero."""
    from dynconv.tracking.store import client
    from dynconv.tune import study_evaluation as evaluation_study
    from dynconv.tune.study import run_study

    def broken(*args, **kwargs):
        raise RuntimeError("checkpoint unreadable")

    monkeypatch.setattr(evaluation_study, "evaluate_trials", broken)
    data = tiny_spec_dict(tmp_path, tiny_dataset, resources={"workers_per_trial": 1, "cpus_per_worker": 0.5})
    data["search"]["num_samples"], data["evaluate"] = 1, {"enabled": True, "subsets": ["RGB"]}
    spec = parse_spec(data)
    with pytest.raises(DynconvError, match="ran, but its record is incomplete: evaluation"):
        run_study(spec)
    err = capsys.readouterr().err
    assert "dynconv: evaluation skipped: RuntimeError: checkpoint unreadable; retry with" in err
    uri = spec.tracking_uri()
    [study] = client(uri).search_runs(
        [client(uri).get_experiment_by_name("tiny").experiment_id], "tags.`dynconv.role` = 'study'"
    )
    assert study.info.status == "FAILED"
    assert study.data.tags["mlflow.note.content"].startswith("**Incomplete: evaluation (RuntimeError")
    assert study.data.tags["dynconv.failure"].startswith("Incomplete: evaluation")
