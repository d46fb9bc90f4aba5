"""One ranking end to end: the printed, tagged, described, evaluated, reported and rerun trial is the same.

No Ray. Each study's trial runs are written the way trial actors write them (epoch metrics, a checkpoint,
the run closed FINISHED or KILLED), with metric histories chosen so that the best trial by RGB `val_acc`
(what evaluate/rerun used to rank on) and by the study's ranked metric differ. Tune's view of the same
trials is a stand-in ResultGrid (the attributes `summarise_trials` reads) built from those histories.
All trials share one real checkpoint of a tiny model, trained once.

Also: an evaluation run interrupted by a real SIGINT is closed KILLED and never counted by the report.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch

from dynconv.evaluation.results import SpeedConfig
from dynconv.report.records import load_records
from dynconv.rerun import resolve_trial
from dynconv.spec import JobSpec
from dynconv.spec.ranking import Ranking
from dynconv.tracking.find import (
    get_run,
    incomplete_trials,
    latest_evaluation_metrics,
    search_runs,
    trial_run_ids,
)
from dynconv.tracking.layout import (
    TAG_STUDY,
    end_run,
    ensure_child_run,
    log_artifact,
    log_metrics,
    log_params,
    set_tags,
)
from dynconv.tune.confirm import chosen_trials, ranked_configurations
from dynconv.tune.parent_run import record_best_trial, record_trial_table, recorded_trials, trial_table
from dynconv.tune.study_evaluation import evaluate_study_cli
from dynconv.tune.study_result import StudyResult, format_summary, summarise_trials
from dynconv.tune.summary import study_note
from tests.test_evaluate import EXPERIMENT, make_spec, open_study

FAST = SpeedConfig(warmup=0, latency_iters=1, throughput_batch=4, throughput_iters=1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ranking")


@pytest.fixture(scope="module")
def checkpoint(root: Path) -> Path:
    """One real final checkpoint of the tiny model (every fake trial logs it as its own)."""
    from dynconv.spec.data import prepare_for_spec
    from dynconv.train.loop import fit
    from dynconv.train.session import LocalSession

    torch.set_num_threads(1)
    spec = make_spec(root, "ckpt", "simple_cnn", epochs=1)
    session = LocalSession(device="cpu")
    fit(spec, session, prepare_for_spec(spec, progress=False))
    path = root / "state.pt"
    torch.save(session.last_state, path)
    return path


def study_spec(root: Path, study: str, **search: Any) -> JobSpec:
    """The tiny spec (simple_cnn, 2 epochs, no scheduler) with `search` overriding search.*."""
    data = make_spec(root, study, "simple_cnn").to_json_dict()
    data["search"].update(search)
    return JobSpec.model_validate(data)


def write_trial(
    uri: str,
    exp: str,
    parent: str,
    spec: JobSpec,
    key: str,
    history: dict[str, list[float]],
    ckpt: Path | None,
    status: str = "FINISHED",
) -> str:
    """A trial run as a trial actor and TrialRunCloser leave it: params, one step per epoch, checkpoint."""
    tags = {TAG_STUDY: spec.study}
    run_id, _ = ensure_child_run(uri, exp, parent, "trial", key, f"trial_{key}", tags)
    log_params(uri, run_id, {"lr": 0.05, "augment_strength": 0.1, "model": spec.model.name})
    epochs = len(next(iter(history.values())))
    for epoch in range(1, epochs + 1):
        metrics = {name: values[epoch - 1] for name, values in history.items()}
        log_metrics(uri, run_id, {"epoch": epoch, **metrics}, step=epoch)
    if ckpt is not None:
        log_artifact(uri, run_id, ckpt, "checkpoint")
    end_run(uri, run_id, status)
    return run_id


def tune_grid(trials: dict[str, dict[str, list[float]]], epochs: dict[str, int]) -> list[SimpleNamespace]:
    """What Tune's ResultGrid tells `summarise_trials` about the same trials."""
    grid = []
    for key, history in trials.items():
        n = epochs[key]
        frame = pd.DataFrame({"epoch": list(range(1, n + 1)), **{k: v[:n] for k, v in history.items()}})
        grid.append(
            SimpleNamespace(
                metrics_dataframe=frame,
                metrics={"trial_id": key, "done": True},
                path=f"/tune/{key}",
                error=None,
                config={"lr": 0.05, "augment_strength": 0.1},
            )
        )
    return grid


def build_study(
    root: Path,
    ckpt: Path,
    study: str,
    trials: dict[str, dict[str, list[float]]],
    search: dict[str, Any],
    stopped: tuple[str, ...] = (),
    no_checkpoint: tuple[str, ...] = (),
    incomplete: tuple[str, ...] = (),
    in_mlflow: dict[str, dict[str, list[float]]] | None = None,
) -> dict[str, Any]:
    """Write the study (parent run with spec.yaml, trial runs), rank it from Tune's results as the driver
    does, record that ranking and the best trial on the parent run. `in_mlflow`: the histories MLflow
    holds of some trials when they differ from what Tune had (a write dropped, a value logged later)."""
    uri = f"sqlite:///{root}/{study}.db"
    spec = study_spec(root, study, **search)
    exp, parent = open_study(uri, spec)
    runs, epochs = {}, {}
    for key, history in trials.items():
        epochs[key] = 1 if key in stopped else 2  # stopped: ASHA let it run one epoch
        runs[key] = write_trial(
            uri,
            exp,
            parent,
            spec,
            key,
            {k: v[: epochs[key]] for k, v in (in_mlflow or {}).get(key, history).items()},
            None if key in no_checkpoint else ckpt,
            "KILLED" if key in stopped else "FAILED" if key in incomplete else "FINISHED",
        )
        if key in incomplete:  # as the recorder closes a run whose write the store dropped
            set_tags(uri, runs[key], {"dynconv.outcome": "incomplete"})
    rows = summarise_trials(
        tune_grid(trials, epochs), spec, trial_run_ids(uri, exp, parent), incomplete_trials(uri, exp, parent)
    )
    result = StudyResult(study, f"{study}-1", parent, exp, uri, "", False, rows)
    record_trial_table(uri, parent, rows, spec)
    record_best_trial(uri, parent, result.best, Ranking.for_spec(spec))
    end_run(uri, parent, "FINISHED")
    return {"uri": uri, "spec": spec, "parent": parent, "runs": runs, "result": result}


def answers(s: dict[str, Any]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Which trial each place names as the study's best (by Tune trial id); and the tags of the
    evaluation runs `dynconv evaluate STUDY` logged."""
    uri, spec, result = s["uri"], s["spec"], s["result"]
    by_run = {run_id: key for key, run_id in s["runs"].items()}
    table = format_summary(result, spec).splitlines()
    parent = get_run(uri, s["parent"])
    done = evaluate_study_cli(spec.study, subsets="RGB", tracking_uri=uri, device="cpu", speed=FAST)
    evals = [get_run(uri, run_id).data.tags for run_id, _ in done]
    [record] = [r for r in load_records(uri, [EXPERIMENT]) if r.study == spec.study]
    note = study_note(spec, result, [])
    ranked = ranked_configurations(uri, parent, spec, recorded_trials(uri, parent, spec))
    listed = trial_table(uri, spec.study).splitlines()
    return {
        "listed": listed[3].split()[0],  # `dynconv trials`: the first row under its line, header, rule
        "confirmed": by_run[chosen_trials(spec, ranked)[0][1].run_id],
        "printed": table[2].split()[0],  # the first row under the header and its rule
        "best": result.best.trial_id,
        "tagged": parent.data.tags["dynconv.best_trial_id"],
        "tagged_run": by_run[parent.data.tags["dynconv.best_run_id"]],
        "described": note.split("**Best trial** `")[1].split("`")[0],
        "evaluated": by_run[evals[0]["dynconv.source_run_id"]] + "@" + evals[0]["dynconv.rank"],
        "reported": by_run[record.source_run_id],
        "rerun": by_run[resolve_trial(uri, spec.study).info.run_id],
    }, evals


def test_val_loss_min_study_names_its_lowest_loss_trial_everywhere(root: Path, checkpoint: Path) -> None:
    trials = {
        "a": {"val_acc": [0.6, 0.95], "val_loss": [1.2, 1.1]},  # best val_acc, worst val_loss (old: best)
        "b": {"val_acc": [0.5, 0.70], "val_loss": [0.9, 0.30]},  # lowest last val_loss: the best
        "c": {"val_acc": [0.4, 0.80], "val_loss": [0.2, 0.45]},  # lowest val_loss at epoch 1 only
        "d": {"val_acc": [0.3], "val_loss": [0.1]},  # lowest of all, but stopped early by ASHA
    }
    s = build_study(root, checkpoint, "loss", trials, {"metric": "val_loss", "mode": "min"}, stopped=("d",))
    got, _ = answers(s)
    assert set(got.values()) == {"b", "b@1"}, got
    assert got["evaluated"] == "b@1"
    table = format_summary(s["result"], s["spec"])
    assert "last val_loss" in table.splitlines()[0] and "best val acc" not in table
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["b", "c", "a", "d"]
    parent = get_run(s["uri"], s["parent"])
    assert parent.data.metrics == {"best_val_loss": pytest.approx(0.30)}
    assert parent.data.tags["dynconv.ranked_on"] == "val_loss (min)"


def test_every_place_names_the_driver_s_rank_1_whatever_mlflow_s_last_values_say(
    root: Path, checkpoint: Path
) -> None:
    """Rank once: MLflow's last val_acc of the driver's best trial is NaN (logged after Tune's last
    report), and another trial's last epoch never reached MLflow (a dropped write, so MLflow's last
    value is its epoch-1 value, the highest of all); the evaluation, the tags, the confirmation's top-k,
    the report, rerun and `dynconv trials` all follow the driver's ranking of Tune's results."""
    trials = {
        "a": {"val_acc": [0.6, 0.90]},  # the best by Tune's results
        "b": {"val_acc": [0.95, 0.50]},
        "c": {"val_acc": [0.4, 0.70]},
    }
    in_mlflow = {"a": {"val_acc": [0.6, float("nan")]}, "b": {"val_acc": [0.95]}}
    search = {"metric": "val_acc", "mode": "max"}
    s = build_study(root, checkpoint, "drift", trials, search, in_mlflow=in_mlflow)
    assert math.isnan(get_run(s["uri"], s["runs"]["a"]).data.metrics["val_acc"])
    got, _ = answers(s)
    assert set(got.values()) == {"a", "a@1"}, got
    spec = s["spec"].model_copy(update={"confirm": s["spec"].confirm.model_copy(update={"top_k": 2})})
    parent = get_run(s["uri"], s["parent"])
    ranked = ranked_configurations(s["uri"], parent, spec, recorded_trials(s["uri"], parent, spec))
    by_run = {run_id: key for key, run_id in s["runs"].items()}
    assert [(rank, by_run[t.run_id]) for rank, t in chosen_trials(spec, ranked)] == [(1, "a"), (2, "c")]
    assert [t.value for _, t in ranked] == [0.90, 0.70, 0.50]  # the values ranked on, not MLflow's


def test_a_big_study_prints_its_top_10_and_dynconv_trials_prints_every_trial(root: Path, capsys) -> None:
    """45 trials: the end-of-study table is the first 10, the counts per outcome and where the rest is;
    the study run's trials.csv and `dynconv trials` hold all 45 in the driver's order."""
    from dynconv.cli import main
    from dynconv.tracking.artifacts import read_csv
    from dynconv.tune.study_result import end_table_limit

    n = 45
    trials = {f"t{i:02d}": {"val_acc": [0.1, (i * 37 % n) / n]} for i in range(n)}
    trials["t07"] = {"val_acc": [float("nan"), float("nan")]}  # no finite value: never ranked
    s = build_study(
        root, root / "none", "big", trials, {"metric": "val_acc", "mode": "max"}, no_checkpoint=tuple(trials)
    )
    result, spec, uri = s["result"], s["spec"], s["uri"]
    short = format_summary(result, spec, limit=end_table_limit(n)).splitlines()
    assert len(short) == 2 + 10 + 1, short
    assert short[-1] == (
        "... the first 10 of 45 trials (45 finished); all of them: dynconv trials big (or the study run's "
        "trials.csv)"
    )
    order = [t.trial_id for t in result.ranked]
    assert [line.split()[0] for line in short[2:12]] == order[:10]

    rows = read_csv(uri, s["parent"], "trials.csv")
    assert [r["trial_id"] for r in rows] == [*order, "t07"]
    assert [r["rank"] for r in rows] == [*(str(i) for i in range(1, n)), ""]
    assert rows[0]["run_id"] == s["runs"][order[0]] and rows[0]["outcome"] == "FINISHED"

    assert main(["trials", "big", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0].startswith("Study 'big', run ")
        and "45 trials (45 finished), ranked on val_acc (max)" in out[0]
    )
    assert [line.split()[0] for line in out[3:]] == [*order, "t07"]
    assert main(["trials", "big", "--top", "3", "--tracking-uri", uri]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 2 + 3 + 1


def test_a_trial_whose_record_lost_a_write_is_ranked_nowhere(root: Path, checkpoint: Path) -> None:
    """Complete or absent: the best values belong to a trial whose MLflow run lost a write (closed FAILED,
    outcome `incomplete`); the table, tags, description, evaluation, report and rerun all skip it."""
    trials = {
        "a": {"val_acc": [0.7, 0.95]},  # best, but its record is incomplete
        "b": {"val_acc": [0.6, 0.80]},
    }
    search = {"metric": "val_acc", "mode": "max"}
    s = build_study(root, checkpoint, "lossy", trials, search, incomplete=("a",))
    got, _ = answers(s)
    assert set(got.values()) == {"b", "b@1"}, got
    table = format_summary(s["result"], s["spec"]).splitlines()
    assert table[3].split()[0] == "a" and "INCOMPLETE" in table[3]


def test_val_acc_worst_study_is_ranked_on_the_worst_subset(root: Path, checkpoint: Path) -> None:
    trials = {
        "a": {"val_acc": [0.7, 0.95], "val_acc_worst": [0.3, 0.40]},  # best RGB val_acc
        "b": {"val_acc": [0.6, 0.80], "val_acc_worst": [0.5, 0.65]},  # best worst-subset accuracy
        "c": {"val_acc": [0.5, 0.75], "val_acc_worst": [0.7, 0.60]},  # best worst-subset at epoch 1 only
    }
    s = build_study(root, checkpoint, "worst", trials, {"metric": "val_acc_worst", "mode": "max"})
    got, _ = answers(s)
    assert set(got.values()) == {"b", "b@1"}, got
    parent = get_run(s["uri"], s["parent"])
    assert parent.data.metrics == {"best_val_acc_worst": pytest.approx(0.65)}
    assert parent.data.tags["dynconv.ranked_on"] == "val_acc_worst (max)"


def test_multi_objective_with_a_min_objective_ranks_the_pareto_set_by_the_first(
    root: Path, checkpoint: Path
) -> None:
    trials = {
        "a": {"val_loss": [0.9, 0.8], "val_acc": [0.8, 0.9]},  # Pareto: best accuracy
        "b": {"val_loss": [0.5, 0.3], "val_acc": [0.5, 0.6]},  # Pareto: lowest loss -> rank 1
        "c": {"val_loss": [0.9, 0.9], "val_acc": [0.4, 0.5]},  # dominated by a
        "e": {"val_loss": [0.6, 0.5], "val_acc": [0.6, 0.7]},  # Pareto, between -> rank 2
    }
    search = {"objectives": {"val_loss": "min", "val_acc": "max"}}
    s = build_study(root, checkpoint, "multi", trials, search)
    got, tags = answers(s)  # `dynconv evaluate multi`: the whole Pareto set, in rank order
    assert set(got.values()) == {"b", "b@1"}, got
    assert [t.trial_id for t in s["result"].pareto] == ["b", "e", "a"]
    uri = s["uri"]
    by_run = {run_id: key for key, run_id in s["runs"].items()}
    assert [(by_run[t["dynconv.source_run_id"]], t["dynconv.rank"]) for t in tags] == [
        ("b", "1"),
        ("e", "2"),
        ("a", "3"),
    ]
    parent = get_run(uri, s["parent"])
    assert parent.data.tags["dynconv.ranked_on"] == "Pareto set on val_loss (min), val_acc (max)"
    assert parent.data.metrics == {"best_val_loss": pytest.approx(0.3)}


def test_best_trial_without_checkpoint_is_named_and_the_next_keeps_its_true_rank(
    root: Path, checkpoint: Path, capsys
) -> None:
    trials = {
        "a": {"val_loss": [0.5, 0.2]},  # rank 1, but its checkpoint never reached MLflow
        "b": {"val_loss": [0.6, 0.4]},  # rank 2
        "c": {"val_loss": [0.7, 0.6]},  # rank 3
    }
    search = {"metric": "val_loss", "mode": "min"}
    s = build_study(root, checkpoint, "nockpt", trials, search, no_checkpoint=("a",))
    uri, runs = s["uri"], s["runs"]
    capsys.readouterr()
    [(eval_run, _)] = evaluate_study_cli("nockpt", subsets="RGB", tracking_uri=uri, device="cpu", speed=FAST)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "has no checkpoint" in ln]
    assert lines == [
        "trial trial_a (rank 1) has no checkpoint/state.pt artifact; "
        "evaluating rank 2 (trial trial_b) instead"
    ]
    tags = get_run(uri, eval_run).data.tags
    assert (tags["dynconv.source_run_id"], tags["dynconv.rank"]) == (runs["b"], "2")
    [record] = load_records(uri, [EXPERIMENT])  # the study's best evaluated trial, though not rank 1
    assert (record.eval_run_id, record.source_run_id) == (eval_run, runs["b"])
    assert resolve_trial(uri, "nockpt").info.run_id == runs["b"]


INTERRUPTED_EVALUATION = """
import pathlib, sys, time
import dynconv.tracking.evaluations as evaluations
from dynconv.cli import main

log_evaluation = evaluations.log_evaluation

def log_then_wait(uri, run_id, ev, title=""):
    log_evaluation(uri, run_id, ev, title)  # metrics logged; the study plots and FINISHED still to come
    pathlib.Path(sys.argv[1]).write_text(run_id)
    time.sleep(120)

evaluations.log_evaluation = log_then_wait
argv = ["evaluate", sys.argv[2], "--subsets", "RGB", "--device", "cpu", "--tracking-uri", sys.argv[3]]
sys.exit(main(argv))
"""


def test_sigint_mid_evaluation_leaves_a_killed_run_the_report_ignores(root: Path, checkpoint: Path) -> None:
    trials = {"a": {"val_acc": [0.5, 0.8]}, "b": {"val_acc": [0.6, 0.7]}}
    s = build_study(root, checkpoint, "sigint", trials, {})
    uri = s["uri"]
    [(first, _)] = evaluate_study_cli("sigint", subsets="RGB", tracking_uri=uri, device="cpu", speed=FAST)
    [(second, _)] = evaluate_study_cli("sigint", subsets="RGB", tracking_uri=uri, device="cpu", speed=FAST)
    [record] = load_records(uri, [EXPERIMENT])
    assert record.eval_run_id == second  # evaluated twice, counted once: the newest

    marker = root / "sigint.marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_EVALUATION, str(marker), "sigint", uri],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate(timeout=10)
        interrupted = marker.read_text()
        assert get_run(uri, interrupted).info.status == "RUNNING"  # mid-evaluation
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "dynconv: interrupted" in err

    run = get_run(uri, interrupted)
    assert run.info.status == "KILLED"
    assert "acc_RGB" in run.data.metrics  # it had logged part of what a complete evaluation holds
    [record] = load_records(uri, [EXPERIMENT])
    assert record.eval_run_id == second  # the complete evaluation stands, once
    parent = get_run(uri, s["parent"])
    assert parent.data.tags["dynconv.evaluation_run_id"] == second
    assert latest_evaluation_metrics(uri, get_run(uri, s["runs"]["a"])) == (get_run(uri, second).data.metrics)
    assert first != second


def test_an_evaluation_failing_mid_way_is_closed_failed(root: Path, checkpoint: Path, monkeypatch) -> None:
    trials = {"a": {"val_acc": [0.5, 0.8]}}
    s = build_study(root, checkpoint, "broken_plots", trials, {})
    uri = s["uri"]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("dynconv.tune.study_evaluation.log_study_plots", broken)
    with pytest.raises(OSError, match="disk full"):
        evaluate_study_cli("broken_plots", subsets="RGB", tracking_uri=uri, device="cpu", speed=FAST)
    [run] = search_runs(uri, "tags.`dynconv.role` = 'evaluation'")
    assert run.info.status == "FAILED"
    assert load_records(uri, [EXPERIMENT]) == []
