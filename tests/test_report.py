"""`dynconv report` from MLflow alone: a real tiny study plus evaluations with hand-made predictions.

The 5-layer CNN study is trained and evaluated for real (tiny); the ResNet studies are written as
evaluation runs whose per-image predictions are chosen by hand on the same test images, so the
significance verdicts are known in advance.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_evaluate import EXPERIMENT, make_spec, open_study, record_ranking, train_trial

from dynconv import stats
from dynconv.errors import DynconvError
from dynconv.evaluation.results import Evaluation, SpeedConfig, SubsetResult
from dynconv.report.compare import same_test_images
from dynconv.report.render import write_report
from dynconv.tracking.evaluations import record_evaluation
from dynconv.tracking.layout import end_run
from dynconv.tune.study_evaluation import evaluate_study_cli

FAST = SpeedConfig(warmup=0, latency_iters=1, throughput_batch=4, throughput_iters=1)


def fake_evaluation(
    model: str,
    dynamic: bool,
    y_true: np.ndarray,
    correct: dict[str, int],
    test_set: str,
    flops: dict[str, int],
) -> Evaluation:
    """An Evaluation whose subset S gets the first `correct[S]` images right and the rest wrong."""
    k = int(y_true.max()) + 1
    results = []
    for subset, n_right in correct.items():
        right = np.arange(len(y_true)) < n_right
        y_pred = np.where(right, y_true, (y_true + 1) % k)
        m = stats.classification_metrics(y_true, y_pred, k)
        low, high = stats.wilson_interval(m["correct"], m["n"])
        results.append(
            SubsetResult(
                subset, m["n"], m["correct"], m["accuracy"], low, high, m["precision"], m["recall"], m["f1"],
                1.0, flops[subset], 1000, 1.0, 100.0, y_true, y_pred, np.ones(len(y_true), bool),
                stats.confusion_matrix(y_true, y_pred, k),
            )
        )  # fmt: skip
    return Evaluation(model, {}, dynamic, "test", "cpu", k, None, test_set, "fp", 16, results)


def add_fake_study(
    uri: str, root: Path, study: str, model: str, stem: str, ev: Evaluation, **train: Any
) -> str:
    """A finished study run holding `ev` as its rank-1 evaluation; `train` overrides the spec's train
    section (e.g. channel_drop, which decides the study's arm in the robustness table)."""
    spec = make_spec(root, study, model, args={"stem": stem}, **train)
    exp, parent = open_study(uri, spec)
    run_id = record_evaluation(uri, exp, parent, study, ev, source_run_id="0" * 32)
    end_run(uri, run_id, "FINISHED")
    end_run(uri, parent, "FINISHED")
    return run_id


DYN_FLOPS = {"RGB": 300, "RG": 290, "RB": 290, "GB": 290, "R": 280, "G": 280, "B": 280}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, Any]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reportstore")
    uri = f"sqlite:///{root}/mlflow.db"
    spec = make_spec(root, "cnn", "simple_cnn")
    exp, parent = open_study(uri, spec)
    train_trial(uri, exp, parent, spec, {"lr": 0.05, "augment_strength": 0.1}, "a")
    record_ranking(uri, spec, parent)
    [(_, cnn)] = evaluate_study_cli("cnn", subsets="RGB,R", tracking_uri=uri, device="cpu", speed=FAST)
    y, tid = cnn.results[0].y_true, cnn.test_set_id
    n = len(y)  # 18
    dyn = fake_evaluation(
        "resnet18_dynamic", True, y, {"RGB": n - 1, "RG": n - 2, "RB": n - 1, "GB": n - 1, "R": 8, "G": n - 1,
                                      "B": n - 1}, tid, DYN_FLOPS
    )  # fmt: skip
    add_fake_study(uri, root, "r18dyn", "resnet18_dynamic", "imagenet", dyn)
    plain = fake_evaluation("resnet18", False, y, {"RGB": 9}, tid, {"RGB": 100})
    add_fake_study(uri, root, "r18", "resnet18", "imagenet", plain)
    r34 = fake_evaluation("resnet34", False, y, {"RGB": n}, tid, {"RGB": 200})
    add_fake_study(uri, root, "r34", "resnet34", "imagenet", r34)
    out = root / "report"
    report = write_report(experiments=[EXPERIMENT], out_dir=out, tracking_uri=uri)
    return {"root": root, "uri": uri, "out": out, "md": report.read_text(), "cnn": cnn, "n": n}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_report_files_and_headings(store) -> None:
    md, out = store["md"], store["out"]
    for heading in (
        "# dynconv report",
        "### Table 1 — dynamic ResNet-18 on the seven channel subsets",
        "### Table 2 — ResNet-18 with DynamicConv2D vs plain ResNet-18, and the stem ablation",
        "### Table 3 — 5-layer CNN vs ResNet-34",
        "### Paired significance tests (McNemar, same test images)",
        "### Accuracy vs FLOPs (model x channel subset)",
        "### All evaluations on this test set",
        "## How to read this report",
    ):
        assert heading in md
    for name in ("report.md", "table1.csv", "table2.csv", "table3.csv", "significance.csv", "evaluations.csv",
                 "pareto.csv", "pareto.png", "table1_accuracy.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert len(_rows(out / "evaluations.csv")) == 4


def test_table1_says_which_subset_gaps_are_noise(store) -> None:
    rows = {r["subset"]: r for r in _rows(store["out"] / "table1.csv")}
    assert list(rows) == ["RGB", "RG", "RB", "GB", "R", "G", "B"]
    assert rows["R"]["verdict_vs_rgb"].startswith("significant")  # 8 vs 17 right: 9 discordant, one way
    assert rows["RG"]["verdict_vs_rgb"].startswith("noise")  # one image apart
    assert float(rows["R"]["flops"]) < float(rows["RGB"]["flops"])
    assert "Differences from RGB that are noise at this test-set size: RG, RB, GB, G, B." in store["md"]


def test_table2_pairs_and_missing_ablation(store) -> None:
    md = store["md"]
    line = next(x for x in md.splitlines() if x.startswith("| DynamicConv2D, same ImageNet stem"))
    assert "+44.44" in line and "8 / 0" in line and "significant" in line
    assert "not run: tune_jobs/resnet18_dynamic_small.yaml; tune_jobs/resnet18_small.yaml" in md
    roles = {r["role"]: r for r in _rows(store["out"] / "table2.csv")}
    assert roles["dyn_imagenet"]["status"] == "ok" and roles["plain_small"]["status"].startswith("not run")


def test_table3_ratio_with_interval_and_verdict(store) -> None:
    rows = _rows(store["out"] / "table3.csv")
    ratio = next(r for r in rows if r["role"] == "ratio")
    acc_cnn = store["cnn"].result("RGB").accuracy
    assert float(ratio["ratio"]) == pytest.approx(acc_cnn)  # ResNet-34 got every image right
    assert float(ratio["ratio_low"]) <= float(ratio["ratio"]) <= float(ratio["ratio_high"])
    # Pinned for this fixture: the CNN gets 17 of the 18 test images (ResNet-34 all 18), so the paired
    # bootstrap interval of the ratio is [15/18, 1] and straddles the 0.9 threshold: inconclusive.
    right = store["cnn"].result("RGB")
    expected = stats.ratio_ci(right.y_true == right.y_pred, np.ones(store["n"], bool))
    assert (float(ratio["ratio_low"]), float(ratio["ratio_high"])) == pytest.approx(expected[1:])
    assert ratio["verdict"] == stats.threshold_verdict(expected[1], expected[2], 0.9) == "inconclusive"
    assert f"**{ratio['verdict']}**" in store["md"]
    assert "paired bootstrap over the same test images" in store["md"]
    assert "= 85.1 % of ResNet-34" in store["md"]  # the seed's own numbers


def test_pareto_front(store) -> None:
    pts = _rows(store["out"] / "pareto.csv")
    front = {(p["study"], p["subset"]) for p in pts if p["pareto"] == "True"}
    assert ("r18", "RGB") in front  # cheapest
    assert ("r34", "RGB") in front  # most accurate of the fakes at 200 FLOPs
    assert ("r18dyn", "RGB") not in front  # dominated by r34 (cheaper and better)


def test_other_test_sets_are_reported_apart_and_never_paired(store, tmp_path) -> None:
    uri, root = store["uri"], store["root"]
    y = np.repeat(np.arange(3), 4)
    other = fake_evaluation("resnet18", False, y, {"RGB": 6}, "f" * 64, {"RGB": 100})
    add_fake_study(uri, root, "r18small_other", "resnet18", "small", other)
    md = write_report(experiments=[EXPERIMENT], out_dir=tmp_path, tracking_uri=uri).read_text()
    assert md.count("## Test set ") == 2
    assert "not run on this test set (study r18small_other" in md
    assert (tmp_path / f"table2_{store['cnn'].test_set_id[:8]}.csv").is_file()

    from dynconv.report.records import load_records

    recs = {r.study: r for r in load_records(uri, [EXPERIMENT])}
    ok, why = same_test_images(recs["r18small_other"], recs["r18"])
    assert not ok and "different test sets" in why


def test_missing_robustness_arm_names_the_spec_to_run(store) -> None:
    md = store["md"]
    assert "### Robustness — every evaluated model on the seven channel subsets" in md
    assert (
        "Arm *plain ResNet-18, no channel drop (the seed's baseline)*: not run: run "
        "tune_jobs/resnet18_nodrop.yaml (laptop scale: tune_jobs/quickstart_nodrop.yaml)." in md
    )
    rows = {r["study"]: r for r in _rows(store["out"] / "robustness.csv")}
    assert rows["r18dyn"]["arm"] == "dyn_drop" and rows["r18"]["arm"] == "plain_drop"
    assert rows["cnn"]["arm"] == "" and float(rows["r18dyn"]["channel_drop"]) == 0.3
    assert rows["r18dyn"]["worst_subset"] == "R"


# The three arms of issue 14 on 60 shared test images: subset S of a study gets its first n images right.
ARM_CORRECT = {
    "dyn": {"RGB": 57, "RG": 55, "RB": 55, "GB": 55, "R": 52, "G": 55, "B": 55},
    "plain": {"RGB": 57, "RG": 54, "RB": 54, "GB": 54, "R": 50, "G": 54, "B": 54},
    "nodrop": {"RGB": 57, "RG": 40, "RB": 40, "GB": 40, "R": 10, "G": 12, "B": 11},
}


@pytest.fixture(scope="module")
def arms_report(tmp_path_factory) -> dict[str, Any]:
    """Three tiny fake studies (dynamic + drop, plain + drop, plain without drop) and their report."""
    root = tmp_path_factory.mktemp("arms")
    uri = f"sqlite:///{root}/mlflow.db"
    y = np.repeat(np.arange(3), 20)
    for study, model, dynamic, drop in (
        ("nodrop", "resnet18", False, 0.0),
        ("plain", "resnet18", False, 0.3),
        ("dyn", "resnet18_dynamic", True, 0.3),
    ):
        ev = fake_evaluation(model, dynamic, y, ARM_CORRECT[study], "a" * 64, DYN_FLOPS)
        add_fake_study(uri, root, study, model, "small", ev, channel_drop=drop)
    out = root / "report"
    report = write_report(experiments=[EXPERIMENT], out_dir=out, tracking_uri=uri)
    return {"out": out, "md": report.read_text()}


def test_robustness_table_has_every_model_on_every_subset(arms_report) -> None:
    out = arms_report["out"]
    rows = {r["study"]: r for r in _rows(out / "robustness.csv")}
    assert {s: r["arm"] for s, r in rows.items()} == {
        "dyn": "dyn_drop",
        "plain": "plain_drop",
        "nodrop": "plain_nodrop",
    }
    for study, correct in ARM_CORRECT.items():
        for subset, n_right in correct.items():
            acc = float(rows[study][f"acc_{subset}"])
            assert acc == pytest.approx(n_right / 60)
            assert float(rows[study][f"acc_low_{subset}"]) < acc < float(rows[study][f"acc_high_{subset}"])
    assert rows["nodrop"]["worst_subset"] == "R"
    assert float(rows["nodrop"]["rgb_minus_worst"]) == pytest.approx(47 / 60)
    assert (out / "robustness.png").stat().st_size > 10_000
    assert "![accuracy by channel subset, per model](robustness.png)" in arms_report["md"]
    assert "not run" not in arms_report["md"].split("### Robustness")[1].split("###")[0]


def test_robustness_mcnemar_per_subset_against_both_controls(arms_report) -> None:
    tests = {r["comparison"]: r for r in _rows(arms_report["out"] / "significance.csv")}
    for subset in ARM_CORRECT["dyn"]:
        vs_plain = tests[f"robustness {subset}: dynamic + drop vs plain_drop"]
        vs_base = tests[f"robustness {subset}: dynamic + drop vs plain_nodrop"]
        # Nested right answers: the discordant pairs are exactly the difference in images right.
        assert int(vs_plain["only_a_right"]) == ARM_CORRECT["dyn"][subset] - ARM_CORRECT["plain"][subset]
        assert int(vs_plain["only_b_right"]) == 0
        assert int(vs_base["only_a_right"]) == ARM_CORRECT["dyn"][subset] - ARM_CORRECT["nodrop"][subset]
    assert tests["robustness R: dynamic + drop vs plain_drop"]["verdict"].startswith("noise")  # 2 images
    assert tests["robustness R: dynamic + drop vs plain_nodrop"]["verdict"].startswith("significant")
    assert tests["robustness RGB: dynamic + drop vs plain_nodrop"]["verdict"] == "noise (p=1)"


def test_robustness_sentence_splits_the_gain(arms_report) -> None:
    md = arms_report["md"]
    # R: 10 -> 50 images right with channel drop (+66.7 points), -> 52 with DynamicConv2D (+3.3, noise).
    assert "On **R**, the baseline's worst subset, accuracy goes from 16.67 % without channel drop" in md
    assert "to 83.33 % with channel-drop training (+66.7 points, significant" in md
    assert "to 86.67 % with DynamicConv2D on top (+3.3 points, noise" in md
    assert "Of the 70.0-point gain, 95 % comes from channel-drop training and 5 % from DynamicConv2D." in md


def test_empty_store_and_unknown_experiment(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/empty.db"
    md = write_report(out_dir=tmp_path / "r", tracking_uri=uri).read_text()
    assert "No evaluation runs found" in md
    assert "not run: run tune_jobs/resnet18.yaml" in md and "not run: run tune_jobs/resnet34.yaml" in md
    with pytest.raises(DynconvError, match="unknown experiment 'nope'"):
        write_report(experiments=["nope"], out_dir=tmp_path / "r", tracking_uri=uri)
