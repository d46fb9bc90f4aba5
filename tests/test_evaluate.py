"""Channel-subset evaluation and rerun on a tiny study, written to MLflow the way `dynconv tune` does.

No Ray: trials are trained in-process with `fit` + `LocalSession` on a 3-class, 16 px synthetic set, and
logged with `dynconv.tracking` exactly as the trial actors and `TrialRunCloser` log them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import precision_recall_fscore_support
from torch import nn

from dynconv.errors import DynconvError
from dynconv.evaluation.model import evaluate_model
from dynconv.evaluation.predict import model_inputs, predict
from dynconv.evaluation.results import DYNAMIC_NOTE, PLAIN_NOTE, SpeedConfig
from dynconv.spec import JobSpec
from dynconv.spec.ranking import Ranking
from dynconv.tracking.find import TrialInfo, get_run, list_trials
from dynconv.tracking.layout import (
    TAG_STUDY,
    end_run,
    ensure_child_run,
    ensure_experiment,
    log_artifact,
    log_metrics,
    log_params,
    run_params,
    set_tags,
    start_study_run,
)
from dynconv.tracking.store import client
from dynconv.tune.parent_run import record_trial_table, recorded_trials
from dynconv.tune.study_evaluation import evaluate_study_cli, select_trials
from dynconv.tune.study_result import TrialSummary, apply_ranking
from tests import mlflow_layout

FAST = SpeedConfig(warmup=1, latency_iters=2, throughput_batch=8, throughput_iters=1)
EXPERIMENT = "dynconv-test"


# ---------------------------------------------------------------------------- helpers (shared)


def make_spec(
    root: Path, study: str, model: str, args: dict[str, Any] | None = None, **train: Any
) -> JobSpec:
    """A tiny spec on the shared synthetic set under `root` (3 classes x 40 images, 16 px)."""
    return JobSpec.model_validate(
        {
            "study": study,
            "model": {"name": model, "args": args if args is not None else {"width": 16, "growth": 8}},
            "data": {
                "synthetic": {"dir": str(root / "synthetic"), "classes": 3, "per_class": 40, "size": 16},
                "image_size": 16,
            },
            "train": {
                "epochs": 2,
                "batch_size": 16,
                "channel_drop": 0.3,
                "schedule": {"warmup_epochs": 0},
                **train,
            },
            "search": {
                "space": {
                    "lr": {"type": "loguniform", "low": 0.01, "high": 0.1},
                    "augment_strength": {"type": "uniform", "low": 0.0, "high": 0.5},
                }
            },
            "scheduler": {"name": "none"},
            "mlflow": {"experiment": EXPERIMENT},
            "evaluate": {"subsets": ["RGB", "RB", "G"]},
        }
    )


def open_study(uri: str, spec: JobSpec) -> tuple[str, str]:
    """(experiment_id, parent_run_id): the parent run `dynconv tune` opens, with its spec.yaml."""
    from dynconv.tune.search import describe_space

    exp = ensure_experiment(uri, spec.experiment)
    params = {**describe_space(spec), "model": spec.model.name, "num_samples": 2}
    parent = start_study_run(uri, exp, spec.study, params)
    set_tags(uri, parent, {"dynconv.run_name": f"{spec.study}-20240101-000000"})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec.to_json_dict(), sort_keys=False))
        log_artifact(uri, parent, path)
    return exp, parent


def train_trial(
    uri: str,
    exp: str,
    parent: str,
    spec: JobSpec,
    params: dict[str, float],
    key: str,
    status: str = "FINISHED",
) -> str:
    """Train one trial locally and log it like a Tune trial: params, epoch metrics, checkpoint, outcome."""
    from dynconv.flops import model_facts
    from dynconv.spec.data import prepare_for_spec
    from dynconv.train.loop import build_model, fit
    from dynconv.train.session import LocalSession

    spec = spec.with_params(params)
    run_id, _ = ensure_child_run(
        uri,
        exp,
        parent,
        role="trial",
        key=key,
        run_name=f"trial_{key}",
        tags={TAG_STUDY: spec.study},
    )
    log_params(uri, run_id, run_params(spec, params))
    data = prepare_for_spec(spec, progress=False)
    model = build_model(spec, data.num_classes)
    log_metrics(uri, run_id, model_facts(model, spec.data.image_size))
    session = LocalSession(
        device="cpu", on_report=lambda m, _s: log_metrics(uri, run_id, m, step=int(m["epoch"]))
    )
    fit(spec, session, data)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(session.last_state, Path(tmp) / "state.pt")
        log_artifact(uri, run_id, Path(tmp) / "state.pt", "checkpoint")
    end_run(uri, run_id, status)
    return run_id


def record_ranking(uri: str, spec: JobSpec, parent: str) -> list[TrialSummary]:
    """Rank the study's trial runs and record the ranking as the driver does at a study's end
    (`record_trial_table`): a study written without Tune has no results to rank, so each trial's last
    logged values stand in for what Tune held."""
    ranking = Ranking.for_spec(spec)
    runs = list_trials(uri, get_run(uri, parent), ranking.metric, [m for m, _ in ranking.objectives])
    ended = {"finished": "FINISHED", "killed": "STOPPED", "failed": "FAILED", "incomplete": "INCOMPLETE"}
    rows = [
        TrialSummary(
            r.trial_id,
            {k: r.param(k) for k in spec.search.space},
            r.value,
            len(r.curves["val_acc"]),
            ended.get(r.outcome, r.status),
            r.run_id,
            dict(r.objectives),
        )
        for r in runs
    ]
    apply_ranking(rows, ranking)
    record_trial_table(uri, parent, rows, spec)
    return rows


def artifact_paths(uri: str, run_id: str, path: str | None = None) -> set[str]:
    c = client(uri)
    out = set()
    for a in c.list_artifacts(run_id, path):
        out |= artifact_paths(uri, run_id, a.path) if a.is_dir else {a.path}
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, Any]:
    """A tiny dynamic study with two trials (one finished, one stopped early) in a fresh sqlite store."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalstore")
    uri = f"sqlite:///{root}/mlflow.db"
    spec = make_spec(root, "tiny", "simple_cnn_dynamic")
    exp, parent = open_study(uri, spec)
    finished = train_trial(uri, exp, parent, spec, {"lr": 0.05, "augment_strength": 0.1}, "a")
    killed = train_trial(uri, exp, parent, spec, {"lr": 0.02, "augment_strength": 0.3}, "b", "KILLED")
    record_ranking(uri, spec, parent)
    return {
        "root": root,
        "uri": uri,
        "spec": spec,
        "exp": exp,
        "parent": parent,
        "finished": finished,
        "killed": killed,
    }


# ------------------------------------------------------------------------------ model inputs


def test_plain_models_get_missing_channels_zero_filled() -> None:
    x = torch.randn(2, 3, 4, 4)
    xin, channels = model_inputs(x, "RB", dynamic=False)
    assert channels is None and xin.shape == x.shape
    assert torch.equal(xin[:, 0], x[:, 0]) and torch.equal(xin[:, 2], x[:, 2])
    assert (xin[:, 1] == 0).all()


def test_dynamic_models_get_only_the_subset_with_its_indices() -> None:
    x = torch.randn(2, 3, 4, 4)
    xin, channels = model_inputs(x, "GB", dynamic=True)
    assert tuple(channels) == (1, 2)
    assert torch.equal(xin, x[:, [1, 2]])
    xin, channels = model_inputs(x, "R", dynamic=True)
    assert tuple(channels) == (0,) and xin.shape == (2, 1, 4, 4)


class _Spy(nn.Module):
    """Records what forward receives; predicts class 0 always."""

    def __init__(self, dynamic: bool) -> None:
        super().__init__()
        self.dynamic = dynamic
        self.w = nn.Parameter(torch.zeros(1))
        self.calls: list[tuple[tuple[int, ...], Any, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, channels: Any = None) -> torch.Tensor:
        self.calls.append((tuple(x.shape), channels, x.detach().clone()))
        return torch.zeros(x.shape[0], 3) + torch.tensor([1.0, 0.0, 0.0])


@pytest.mark.parametrize("dynamic", [True, False])
def test_predict_feeds_models_as_documented(dynamic: bool) -> None:
    images = np.full((5, 3, 4, 4), 200, np.uint8)
    labels = np.array([0, 1, 2, 0, 0])
    spy = _Spy(dynamic)
    y_pred, top5 = predict(spy, images, labels, "RB", dynamic, torch.device("cpu"), batch_size=2)
    assert y_pred.tolist() == [0] * 5 and top5.all()  # 3 classes: top-5 always hits
    assert [c[0][0] for c in spy.calls] == [2, 2, 1]  # batches in split order
    shape, channels, x = spy.calls[0]
    if dynamic:
        assert shape == (2, 2, 4, 4) and tuple(channels) == (0, 2)
    else:
        assert shape == (2, 3, 4, 4) and channels is None
        assert (x[:, 1] == 0).all() and (x[:, 0] != 0).all()


def test_select_trials_follows_the_recorded_ranking_with_true_ranks(capsys) -> None:
    def t(name: str, status: str, value: float | None, ckpt: bool = True) -> TrialInfo:
        return TrialInfo(name, name, name, status, status.lower(), value, {}, None, ckpt, {}, {})

    def ranked(ranking: Ranking, runs: list[TrialInfo]) -> list[TrialSummary]:
        ended = {"KILLED": "STOPPED"}
        rows = [TrialSummary(r.name, {}, r.value, 2, ended.get(r.status, r.status), r.run_id) for r in runs]
        apply_ranking(rows, ranking)
        return rows

    runs = [
        t("k", "KILLED", 0.9),  # stopped early: after every trial that ran all epochs
        t("f1", "FINISHED", 0.6),
        t("f2", "FINISHED", 0.7),
        t("x", "FAILED", 0.99),  # never ranked
        t("nock", "FINISHED", 0.95, ckpt=False),  # rank 1, but nothing to evaluate
    ]
    by_acc, by_loss = ranked(Ranking("val_acc", "max"), runs), ranked(Ranking("val_loss", "min"), runs)
    chosen = select_trials(by_acc, runs, 3, "s")
    assert [(rank, x.name) for rank, x in chosen] == [(2, "f2"), (3, "f1"), (4, "k")]
    assert capsys.readouterr().out == (
        "trial nock (rank 1) has no checkpoint/state.pt artifact; evaluating rank 2 (trial f2) instead\n"
    )
    everything = select_trials(by_loss, runs, 10, "s")
    assert [(rank, x.name) for rank, x in everything] == [(1, "f1"), (2, "f2"), (4, "k")]
    assert capsys.readouterr().out == (
        "trial nock (rank 3) has no checkpoint/state.pt artifact; evaluating rank 4 (trial k) instead\n"
    )
    finished = [runs[1], runs[2], runs[4]]  # the trial without a checkpoint ranks last here
    picked = select_trials(ranked(Ranking("val_loss", "min"), finished), finished, 10, "s")
    assert [x.name for _, x in picked] == ["f1", "f2"]
    out = capsys.readouterr().out
    assert out == "trial nock (rank 3) has no checkpoint/state.pt artifact; not evaluated\n"
    lowest = select_trials(by_loss, runs, 1, "s")
    assert [(rank, x.name) for rank, x in lowest] == [(1, "f1")]
    gone = select_trials(by_acc, runs[:4], 1, "s")  # rank 1's run is not in the store
    assert [(rank, x.name) for rank, x in gone] == [(2, "f2")]
    assert "trial nock (rank 1) has no MLflow run; evaluating rank 2" in capsys.readouterr().out
    with pytest.raises(DynconvError, match=r"no finished trial with a checkpoint .*1 failed"):
        select_trials(ranked(Ranking("val_acc", "max"), [runs[3]]), [runs[3]], 1, "s")


# ------------------------------------------------------------------------------- end to end


def test_evaluate_logs_child_run_with_metrics_tables_and_plots(store, capsys) -> None:
    uri = store["uri"]
    [(run_id, ev)] = evaluate_study_cli(
        "tiny", subsets="RGB,RB,G", tracking_uri=uri, device="cpu", speed=FAST
    )
    out = capsys.readouterr().out
    assert DYNAMIC_NOTE in out and "accuracy % [95% CI]" in out

    run = client(uri).get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["dynconv.role"] == "evaluation"
    assert tags["mlflow.parentRunId"] == store["parent"]
    assert tags["dynconv.source_run_id"] == store["finished"]  # FINISHED preferred
    assert tags["dynconv.dynamic"] == "true" and tags["dynconv.model"] == "simple_cnn_dynamic"
    assert run.info.status == "FINISHED"
    for s in ("RGB", "RB", "G"):
        assert metrics[f"acc_low_{s}"] <= metrics[f"acc_{s}"] <= metrics[f"acc_high_{s}"]
        assert metrics[f"latency_ms_{s}"] > 0 and metrics[f"throughput_{s}"] > 0
    assert metrics["flops_G"] < metrics["flops_RB"] < metrics["flops_RGB"]  # a dynamic stem does C/3
    assert metrics["params"] > 0
    files = artifact_paths(uri, run_id)
    assert {
        "subsets.csv",
        "subsets.md",
        "subsets.json",
        "evaluation.json",
        "predictions/predictions_RGB.npz",
        "plots/accuracy_by_subset.png",
        "plots/confusion.png",
        "plots/learning_curves.png",
        "plots/search.png",
    } <= files
    parent = client(uri).get_run(store["parent"])
    assert parent.data.tags["dynconv.evaluation_run_id"] == run_id

    # the logged metrics agree with scikit-learn on the logged per-image predictions
    with tempfile.TemporaryDirectory() as tmp:
        path = client(uri).download_artifacts(run_id, "predictions/predictions_RB.npz", tmp)
        z = np.load(path)
        p, r, f, _ = precision_recall_fscore_support(
            z["y_true"], z["y_pred"], labels=[0, 1, 2], average="macro", zero_division=0
        )
        assert metrics["acc_RB"] == pytest.approx(np.mean(z["y_true"] == z["y_pred"]))
        assert (metrics["precision_RB"], metrics["recall_RB"], metrics["f1_RB"]) == pytest.approx((p, r, f))
        assert str(z["test_set_id"]) == ev.test_set_id == tags["dynconv.test_set"]
        assert len(z["y_true"]) == 18  # 3 classes x 6 test images


def test_plain_model_is_zero_filled_at_full_cost(store) -> None:
    from dynconv.models import create_model
    from dynconv.spec.data import prepare_for_spec

    data = prepare_for_spec(store["spec"], progress=False)
    model = create_model("simple_cnn", num_classes=3, width=16, growth=8)
    ev = evaluate_model(model, data, ["RGB", "R"], "test", "cpu", speed=SpeedConfig(0, 0, 1, 0))
    assert ev.input_note == PLAIN_NOTE and not ev.dynamic
    assert ev.result("R").flops == ev.result("RGB").flops
    assert np.isnan(ev.result("R").latency_ms)  # zero iterations: not measured
    assert ev.result("R").vs_rgb is not None


def test_top_k_evaluates_both_trials_in_order(store) -> None:
    done = evaluate_study_cli(
        store["parent"], top_k=2, subsets=["RGB"], tracking_uri=store["uri"], speed=FAST
    )
    tags = [client(store["uri"]).get_run(rid).data.tags for rid, _ in done]
    assert [t["dynconv.source_run_id"] for t in tags] == [store["finished"], store["killed"]]
    assert [t["dynconv.rank"] for t in tags] == ["1", "2"]


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", ["RX", "RR", "RGB,XYZ", ""])
def test_bad_subset_names_are_one_line_errors(store, bad: str) -> None:
    with pytest.raises(DynconvError, match="subset"):
        evaluate_study_cli("tiny", subsets=bad, tracking_uri=store["uri"])


def test_unknown_study_or_run(store) -> None:
    with pytest.raises(DynconvError, match=r"unknown study or run 'nope'.*known studies: tiny"):
        evaluate_study_cli("nope", tracking_uri=store["uri"])
    with pytest.raises(DynconvError, match="unknown run"):
        evaluate_study_cli("0" * 32, tracking_uri=store["uri"])


def test_study_without_finished_trial(store) -> None:
    uri = store["uri"]
    spec = make_spec(store["root"], "empty", "simple_cnn_dynamic")
    exp, parent = open_study(uri, spec)
    run_id, _ = ensure_child_run(uri, exp, parent, role="trial", key="z", run_name="trial_z")
    end_run(uri, run_id, "FAILED")
    record_ranking(uri, spec, parent)
    with pytest.raises(
        DynconvError, match=r"study 'empty' has no finished trial with a checkpoint \(1 failed"
    ):
        evaluate_study_cli("empty", tracking_uri=uri)


def test_corrupt_checkpoint(store) -> None:
    uri = store["uri"]
    spec = make_spec(store["root"], "broken", "simple_cnn_dynamic")
    exp, parent = open_study(uri, spec)
    run_id, _ = ensure_child_run(uri, exp, parent, role="trial", key="c", run_name="trial_c")
    log_metrics(uri, run_id, {"val_acc": 0.5}, step=1)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "state.pt").write_bytes(b"not a checkpoint")
        log_artifact(uri, run_id, Path(tmp) / "state.pt", "checkpoint")
    end_run(uri, run_id, "FINISHED")
    record_ranking(uri, spec, parent)
    with pytest.raises(DynconvError, match=f"checkpoint of run {run_id} failed to load"):
        evaluate_study_cli("broken", tracking_uri=uri)


# ------------------------------------------------------------------------------------- rerun


def test_rerun_rebuilds_the_exact_configuration_and_lands_in_mlflow(store, capsys) -> None:
    from dynconv.rerun import rerun

    uri, original = store["uri"], store["finished"]
    c = client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        state = torch.load(c.download_artifacts(original, "checkpoint/state.pt", tmp), weights_only=True)

    result = rerun(original, device="cpu", tracking_uri=uri, subsets=["RGB", "B"], speed=FAST)
    assert result.spec.to_json_dict() == state["spec"]  # model, args, train.*, data, seed: all of it
    assert result.notes == []  # and it agrees with every param the trial logged

    new, old = c.get_run(result.run_id), c.get_run(original)
    assert new.data.tags["dynconv.role"] == "rerun"
    assert new.data.tags["dynconv.rerun_of"] == original
    assert new.data.tags["mlflow.parentRunId"] == store["parent"]
    assert new.info.experiment_id == old.info.experiment_id and new.info.status == "FINISHED"
    shared = set(old.data.params) & set(new.data.params)
    assert {"lr", "augment_strength", "train.seed", "model.width"} <= shared
    assert all(old.data.params[k] == new.data.params[k] for k in shared)
    # same seed, same data, same device: the same training curve
    hist = {
        k: [m.value for m in c.get_metric_history(r, "val_acc")]
        for k, r in (("o", original), ("n", result.run_id))
    }
    assert hist["n"] == pytest.approx(hist["o"])
    assert "acc_RGB" in new.data.metrics and "checkpoint/state.pt" in artifact_paths(uri, result.run_id)
    out = capsys.readouterr().out
    assert "Original vs rerun" in out and "original val_acc" in out and "original test acc" in out
    mlflow_layout.check("rerun", mlflow_layout.one_run(uri, result.run_id))


def test_rerun_of_a_study_with_fewer_epochs(store) -> None:
    from dynconv.rerun import rerun

    result = rerun("tiny", epochs=1, device="cpu", tracking_uri=store["uri"], subsets=["RGB"], speed=FAST)
    assert result.spec.train.epochs == 1 and len(result.history) == 1
    assert result.notes[0] == "epochs overridden: 2 -> 1"
    assert client(store["uri"]).get_run(result.run_id).data.tags["dynconv.rerun_of"] == store["finished"]


def test_rerun_unknown_run(store) -> None:
    from dynconv.rerun import rerun

    with pytest.raises(DynconvError, match="unknown study or run"):
        rerun("nothing-here", tracking_uri=store["uri"])


def test_cli_reports_bad_input_as_one_line(store, capsys, tmp_path) -> None:
    from dynconv.cli import main

    uri = store["uri"]
    for argv, start in (
        (["evaluate", "tiny", "--subsets", "RR", "--tracking-uri", uri], "unknown channel subset 'RR'"),
        (["evaluate", "nope", "--tracking-uri", uri], "unknown study or run 'nope'"),
        (["rerun", "nope", "--tracking-uri", uri], "unknown study or run 'nope'"),
        (
            ["report", "--experiment", "nope", "--out", str(tmp_path / "r"), "--tracking-uri", uri],
            "unknown experiment",
        ),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            len(err) == 1
            and err[0].startswith("dynconv")
            and f"error: {start}" in err[0].replace("argument --subsets: ", "")
        ), err
    assert not (tmp_path / "r").exists()


def test_end_of_study_hook_never_loses_the_study(store, capsys) -> None:
    from types import SimpleNamespace

    from dynconv.tune.study_evaluation import evaluate_study

    uri = store["uri"]
    spec = make_spec(store["root"], "notrials", "simple_cnn_dynamic")
    _, parent = open_study(uri, spec)
    result = SimpleNamespace(tracking_uri=uri, parent_run_id=parent, trials=[])
    evaluations, problem = evaluate_study(spec, result)
    assert evaluations == [] and problem is None, "no trial to evaluate is final: nothing is missing"
    err = capsys.readouterr().err
    assert "evaluation skipped: study 'notrials' has no finished trial" in err
    tags = client(uri).get_run(parent).data.tags
    assert tags["dynconv.evaluation_error"].startswith("study 'notrials'")

    good = store["spec"].model_copy(
        update={"evaluate": store["spec"].evaluate.model_copy(update={"subsets": ["RGB"]})}
    )
    trials = recorded_trials(uri, client(uri).get_run(store["parent"]), good)
    [(_, ev)], problem = evaluate_study(
        good, SimpleNamespace(tracking_uri=uri, parent_run_id=store["parent"], trials=trials)
    )
    assert problem is None
    assert [r.subset for r in ev.results] == ["RGB"]
