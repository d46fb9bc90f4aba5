"""`dynconv report`: the seed's Tables 1-3 rebuilt from MLflow alone, with intervals and paired tests.

Inputs: the evaluation runs (`dynconv.role=evaluation`, rank 1 = the study's best trial) of every study
in the chosen experiments, their study's `spec.yaml` (which model, which stem) and their artifacts
(`evaluation.json`, `predictions/predictions_<S>.npz`). No YAML file and no checkpoint is read.

Which study fills which column: by the study spec's `model.name` and `model.args.stem` (default
"imagenet"), the most recently started study of each kind (never the best on the test set: choosing
by test accuracy would bias the comparison). Missing kinds are printed as "not run" with the spec that
produces them; nothing crashes on a partial store.

Honesty rules:

* Every accuracy carries a 95 % Wilson interval; with 450 test images it is about ±4.6 points.
* Two models are compared on RGB with McNemar's test, and only when they were evaluated on the same
  test images (same test-set id: file list and labels, and identical label vectors); results on
  different test sets are grouped into separate sections and never paired.
* Table 3's "accuracy as % of ResNet-34" has a paired bootstrap interval, and the seed's "≥ 90 %"
  target is judged met / not met / inconclusive from that interval, not from the point estimate.

Outputs in `--out`: `report.md`, `table1.csv`, `table2.csv`, `table3.csv`, `significance.csv`,
`evaluations.csv`, `pareto.csv`, `pareto.png`, `table1_accuracy.png` (suffixed `_<test set>` when the
store holds evaluations on more than one test set).
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dynconv import stats, tracking
from dynconv.errors import DynconvError
from dynconv.evaluate import TAG_RANK, TAG_SOURCE_RUN, resolve_tracking_uri, search_runs

SUBSET_ORDER = ("RGB", "RG", "RB", "GB", "R", "G", "B")
DEFAULT_STEM = "imagenet"
TARGET_RATIO = 0.90  # the seed's Part II goal: reach 90 % of ResNet-34's accuracy

# The seed's reported numbers (percent; FLOPs as printed), shown beside ours for reference.
SEED_TABLE1 = {
    "accuracy": (54.22, 53.56, 52.00, 54.22, 50.00, 52.67, 52.00),
    "precision": (56.11, 53.97, 52.44, 56.55, 51.50, 54.41, 54.26),
    "recall": (54.22, 53.56, 52.00, 54.22, 50.00, 52.67, 52.00),
    "f1": (53.69, 52.56, 50.86, 54.08, 48.99, 51.93, 51.44),
}
SEED_TABLE2 = {"dynamic": (54.22, 926_579_712), "plain": (38.44, 296_456_064)}
SEED_TABLE3 = {"simple_cnn": (46.89, 7_697_151_972), "resnet34": (55.11, 612_876_800)}


@dataclass(frozen=True)
class Role:
    """A kind of study the tables need: which model and stem, and which spec produces it."""

    key: str
    title: str
    model: str
    stem: str | None
    spec_file: str


ROLES: dict[str, Role] = {
    r.key: r
    for r in (
        Role(
            "dyn_imagenet",
            "ResNet-18 + DynamicConv2D (ImageNet stem)",
            "resnet18_dynamic",
            "imagenet",
            "tune_jobs/resnet18_dynamic.yaml",
        ),
        Role(
            "plain_imagenet", "ResNet-18 (ImageNet stem)", "resnet18", "imagenet", "tune_jobs/resnet18.yaml"
        ),
        Role(
            "dyn_small",
            "ResNet-18 + DynamicConv2D (small stem)",
            "resnet18_dynamic",
            "small",
            "tune_jobs/resnet18_dynamic_small.yaml",
        ),
        Role("plain_small", "ResNet-18 (small stem)", "resnet18", "small", "tune_jobs/resnet18_small.yaml"),
        Role(
            "dyn_seed",
            "ResNet-18 + DynamicConv2D (seed stem, 7x7 stride 1)",
            "resnet18_dynamic",
            "seed",
            "a spec with model resnet18_dynamic, args {stem: seed}",
        ),
        Role(
            "plain_seed",
            "ResNet-18 (seed stem, 7x7 stride 1)",
            "resnet18",
            "seed",
            "a spec with model resnet18, args {stem: seed}",
        ),
        Role(
            "simple_cnn",
            "5-layer CNN",
            "simple_cnn",
            None,
            "a spec with model simple_cnn (e.g. tune_jobs/simple_cnn.yaml)",
        ),
        Role("resnet34", "ResNet-34", "resnet34", None, "tune_jobs/resnet34.yaml"),
    )
}
TABLE1_PREFERENCE = ("dyn_imagenet", "dyn_seed", "dyn_small")
TABLE2_COLUMNS = ("dyn_imagenet", "plain_imagenet", "dyn_small", "plain_small", "dyn_seed", "plain_seed")
TABLE2_OPTIONAL = ("dyn_seed", "plain_seed")  # shown only when run
TABLE2_PAIRS = (
    ("DynamicConv2D, same ImageNet stem", "dyn_imagenet", "plain_imagenet"),
    ("DynamicConv2D, same small stem (ablation)", "dyn_small", "plain_small"),
    ("DynamicConv2D, same seed stem", "dyn_seed", "plain_seed"),
    ("Stem (small vs ImageNet), dynamic conv", "dyn_small", "dyn_imagenet"),
    ("Stem (small vs ImageNet), plain conv", "plain_small", "plain_imagenet"),
    ("The seed's comparison: stem and conv changed together", "dyn_seed", "plain_imagenet"),
)


# --------------------------------------------------------------------------------- records


@dataclass
class EvalRecord:
    """One evaluation run (a study's best trial over the subsets), as the report reads it from MLflow."""

    study: str
    experiment: str
    parent_run_id: str
    eval_run_id: str
    source_run_id: str
    model: str
    model_args: dict[str, Any]
    dynamic: bool
    started_ms: int
    summary: dict[str, Any]
    metrics: dict[str, float]
    dataset: str
    uri: str = field(repr=False)
    _correct: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _y_true: np.ndarray | None = field(default=None, repr=False)

    @property
    def stem(self) -> str | None:
        if self.model.startswith("resnet"):
            return str(self.model_args.get("stem", DEFAULT_STEM))
        return self.model_args.get("stem")

    @property
    def test_set_id(self) -> str:
        return str(self.summary.get("test_set_id", "unknown"))

    @property
    def n(self) -> int:
        return int(self.metrics.get("n_test", self.summary.get("n", 0)))

    @property
    def subsets(self) -> list[str]:
        return [s for s in SUBSET_ORDER if f"acc_{s}" in self.metrics]

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in sorted(self.model_args.items()))
        return f"{self.model}[{args}]" if args else self.model

    def m(self, measure: str, subset: str = "RGB") -> float | None:
        return self.metrics.get(f"{measure}_{subset}")

    def _load_predictions(self) -> None:
        with tempfile.TemporaryDirectory(prefix="dynconv_report_") as tmp:
            try:
                local = tracking.client(self.uri).download_artifacts(self.eval_run_id, "predictions", tmp)
            except Exception as exc:
                raise DynconvError(
                    f"evaluation run {self.eval_run_id} has no predictions artifact ({exc})"
                ) from None
            for path in sorted(Path(local).glob("predictions_*.npz")):
                with np.load(path) as z:
                    subset = path.stem.removeprefix("predictions_")
                    self._correct[subset] = z["y_true"] == z["y_pred"]
                    self._y_true = z["y_true"]

    def correct(self, subset: str = "RGB") -> np.ndarray:
        """Per-image correctness on `subset` (downloaded once from the run's predictions artifact)."""
        if not self._correct:
            self._load_predictions()
        if subset not in self._correct:
            raise DynconvError(f"evaluation run {self.eval_run_id} has no predictions for subset {subset}")
        return self._correct[subset]

    def y_true(self) -> np.ndarray:
        if self._y_true is None:
            self._load_predictions()
        return self._y_true if self._y_true is not None else np.zeros(0, np.int64)


def _experiments(uri: str, names: Sequence[str] | None) -> list[Any]:
    c = tracking.client(uri)
    if not names:
        return list(c.search_experiments())
    found = []
    for name in names:
        exp = c.get_experiment_by_name(name)
        if exp is None:
            known = ", ".join(sorted(e.name for e in c.search_experiments())) or "none"
            raise DynconvError(f"unknown experiment {name!r} in {uri}; experiments: {known}")
        found.append(exp)
    return found


def _dataset_label(spec_data: dict[str, Any] | None) -> str:
    if not spec_data:
        return "unknown dataset"
    if spec_data.get("root"):
        return str(spec_data["root"])
    syn = spec_data.get("synthetic") or {}
    return (
        f"synthetic ({syn.get('classes')} classes, {syn.get('per_class')} per class, seed {syn.get('seed')})"
    )


def _download_json(uri: str, run_id: str, artifact: str) -> Any:
    import yaml

    with tempfile.TemporaryDirectory(prefix="dynconv_report_") as tmp:
        try:
            path = tracking.client(uri).download_artifacts(run_id, artifact, tmp)
            return yaml.safe_load(Path(path).read_text())  # JSON is YAML
        except Exception:
            return None


def load_records(uri: str, experiments: Sequence[str] | None = None) -> list[EvalRecord]:
    """Every rank-1 evaluation run in the experiments (default: all), newest study first."""
    exps = _experiments(uri, experiments)
    if not exps:
        return []
    names = {e.experiment_id: e.name for e in exps}
    runs = search_runs(uri, "tags.`dynconv.role` = 'evaluation'", list(names))
    c = tracking.client(uri)
    parents: dict[str, Any] = {}
    specs: dict[str, Any] = {}
    records = []
    for run in runs:
        tags = run.data.tags
        if tags.get(TAG_RANK, "1") != "1":
            continue
        parent_id = tags.get(tracking.TAG_PARENT, "")
        if parent_id not in parents:
            try:
                parents[parent_id] = c.get_run(parent_id)
            except Exception:
                parents[parent_id] = None
            specs[parent_id] = _download_json(uri, parent_id, "spec.yaml") if parents[parent_id] else None
        parent, spec = parents[parent_id], specs[parent_id] or {}
        summary = _download_json(uri, run.info.run_id, "evaluation.json") or {}
        params = run.data.params
        model = (spec.get("model") or {}).get("name") or summary.get("model") or params.get("model", "?")
        args = (spec.get("model") or {}).get("args") or summary.get("model_args") or {}
        records.append(
            EvalRecord(
                study=tags.get(tracking.TAG_STUDY, "?"),
                experiment=names.get(run.info.experiment_id, run.info.experiment_id),
                parent_run_id=parent_id,
                eval_run_id=run.info.run_id,
                source_run_id=tags.get(TAG_SOURCE_RUN, ""),
                model=model,
                model_args=dict(args),
                dynamic=tags.get("dynconv.dynamic") == "true",
                started_ms=(parent.info.start_time if parent is not None else run.info.start_time) or 0,
                summary=summary,
                metrics=dict(run.data.metrics),
                dataset=_dataset_label(spec.get("data")),
                uri=uri,
            )
        )
    records.sort(key=lambda r: r.started_ms, reverse=True)
    return records


def role_of(record: EvalRecord) -> str | None:
    """Which table column a record fills (None: shown only in the overview and the Pareto plot)."""
    for role in ROLES.values():
        if record.model == role.model and (role.stem is None or record.stem == role.stem):
            return role.key
    return None


def pick_roles(records: Sequence[EvalRecord]) -> dict[str, EvalRecord]:
    """The newest study of each kind (records arrive newest first)."""
    chosen: dict[str, EvalRecord] = {}
    for rec in records:
        key = role_of(rec)
        if key is not None and key not in chosen:
            chosen[key] = rec
    return chosen


# ------------------------------------------------------------------------------ comparisons


@dataclass
class Comparison:
    """A paired comparison of two evaluations (or two subsets of one) on the same test images."""

    name: str
    a: str
    b: str
    acc_a: float
    acc_b: float
    test: stats.McNemar | None
    note: str = ""

    @property
    def verdict(self) -> str:
        return self.note if self.test is None else stats.verdict(self.test.p_value)

    def row(self) -> dict[str, Any]:
        return {
            "comparison": self.name,
            "a": self.a,
            "b": self.b,
            "acc_a": self.acc_a,
            "acc_b": self.acc_b,
            "diff_points": 100 * (self.acc_a - self.acc_b),
            "only_a_right": None if self.test is None else self.test.b,
            "only_b_right": None if self.test is None else self.test.c,
            "p_value": None if self.test is None else self.test.p_value,
            "method": None if self.test is None else self.test.method,
            "verdict": self.verdict,
        }


def same_test_images(a: EvalRecord, b: EvalRecord) -> tuple[bool, str]:
    """Can a and b be paired image by image? (same test-set id and identical label vectors)."""
    if a.test_set_id != b.test_set_id:
        return False, f"different test sets ({a.test_set_id[:12]} vs {b.test_set_id[:12]}): not paired"
    ya, yb = a.y_true(), b.y_true()
    if ya.shape != yb.shape or not np.array_equal(ya, yb):
        return False, "same test-set id but different labels: not paired"
    return True, ""


def compare(
    name: str, a: EvalRecord, b: EvalRecord, subset_a: str = "RGB", subset_b: str = "RGB"
) -> Comparison:
    """McNemar's test of a vs b when they saw the same images; otherwise a comparison that says why not."""
    acc_a, acc_b = a.m("acc", subset_a) or 0.0, b.m("acc", subset_b) or 0.0
    la = f"{a.study}:{subset_a}" if a is not b else subset_a
    lb = f"{b.study}:{subset_b}" if a is not b else subset_b
    ok, why = (True, "") if a is b else same_test_images(a, b)
    if not ok:
        return Comparison(name, la, lb, acc_a, acc_b, None, why)
    return Comparison(name, la, lb, acc_a, acc_b, stats.mcnemar(a.correct(subset_a), b.correct(subset_b)))


# ---------------------------------------------------------------------------------- tables


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def _acc_ci(rec: EvalRecord, subset: str = "RGB") -> str:
    acc = rec.m("acc", subset)
    if acc is None:
        return "-"
    return f"{_pct(acc)} [{_pct(rec.m('acc_low', subset))}, {_pct(rec.m('acc_high', subset))}]"


def _flops(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{int(x):,}"


def _md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys or ["empty"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _not_run(role_key: str, elsewhere: Sequence[EvalRecord]) -> str:
    role = ROLES[role_key]
    other = [r for r in elsewhere if role_of(r) == role_key]
    if other:
        return f"not run on this test set (study {other[0].study} used {other[0].dataset})"
    return f"not run: run {role.spec_file}"


@dataclass
class Section:
    """One test set's tables, comparisons and files."""

    markdown: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def table1(rec: EvalRecord | None, section: Section, out: Path, suffix: str, elsewhere) -> None:
    """Table 1: the dynamic ResNet-18 on the seven subsets, each subset tested against RGB."""
    md = section.markdown
    md.append("### Table 1 — dynamic ResNet-18 on the seven channel subsets\n")
    if rec is None:
        keys = ", ".join(ROLES[k].spec_file for k in TABLE1_PREFERENCE[:2])
        md.append(f"Not run: no dynamic ResNet-18 study evaluated on this test set ({keys}).\n")
        if any(role_of(r) in TABLE1_PREFERENCE for r in elsewhere):
            md.append(_not_run(TABLE1_PREFERENCE[0], elsewhere) + "\n")
        return
    subsets = rec.subsets
    comps = {
        s: compare(f"Table 1: {s} vs RGB ({rec.study})", rec, rec, s, "RGB") for s in subsets if s != "RGB"
    }
    section.comparisons += comps.values()
    head = ["measure (%)", *subsets]
    rows = [
        ["Accuracy [95% CI]", *(_acc_ci(rec, s) for s in subsets)],
        ["Precision (macro)", *(_pct(rec.m("precision", s)) for s in subsets)],
        ["Recall (macro)", *(_pct(rec.m("recall", s)) for s in subsets)],
        ["F1 (macro)", *(_pct(rec.m("f1", s)) for s in subsets)],
        ["Top-5", *(_pct(rec.m("top5", s)) for s in subsets)],
        ["FLOPs", *(_flops(rec.m("flops", s)) for s in subsets)],
        ["vs RGB (McNemar)", *("-" if s == "RGB" else comps[s].verdict for s in subsets)],
        ["Seed's accuracy", *(_seed_t1("accuracy", s) for s in subsets)],
    ]
    md.append(
        f"Study `{rec.study}` ({rec.label}, evaluation run `{rec.eval_run_id}`), {rec.n} test images; "
        "input: only the subset's channels, with their indices.\n"
    )
    md.append(_md_table(head, rows) + "\n")
    noise = [s for s, c in comps.items() if c.test is not None and c.test.p_value >= 0.05]
    if noise:
        md.append(f"Differences from RGB that are noise at this test-set size: {', '.join(noise)}.\n")
    md.append(
        "The seed reported one FLOP count for every subset; here a subset with C of 3 channels costs the "
        "stem C/3 of its work.\n"
    )
    csv_rows = [
        {
            "study": rec.study,
            "subset": s,
            **{
                k: rec.m(k, s)
                for k in ("acc", "acc_low", "acc_high", "precision", "recall", "f1", "top5", "flops")
            },
            **(
                {}
                if s == "RGB"
                else {"p_vs_rgb": comps[s].row()["p_value"], "verdict_vs_rgb": comps[s].verdict}
            ),
        }
        for s in subsets
    ]
    section.files.append(_write_csv(out / f"table1{suffix}.csv", csv_rows))
    from dynconv import plots

    plot_rows = [
        {
            "subset": s,
            "accuracy": rec.m("acc", s),
            "acc_low": rec.m("acc_low", s),
            "acc_high": rec.m("acc_high", s),
        }
        for s in subsets
    ]
    section.files.append(
        plots.accuracy_by_subset(plot_rows, out / f"table1_accuracy{suffix}.png", f"Table 1: {rec.label}")
    )
    md.append(f"![accuracy by subset](table1_accuracy{suffix}.png)\n")


def _seed_t1(measure: str, subset: str) -> str:
    return f"{SEED_TABLE1[measure][SUBSET_ORDER.index(subset)]:.2f}"


def _model_rows(cols: Sequence[tuple[str, EvalRecord | None, str]]) -> list[list[str]]:
    """Rows of a model table for columns (title, record or None, why it is missing)."""

    def cell(rec: EvalRecord | None, why: str, fn) -> str:
        return fn(rec) if rec is not None else "—"

    return [
        ["Accuracy % [95% CI]", *(_acc_ci(r) if r is not None else w for _, r, w in cols)],
        ["Precision %", *(cell(r, w, lambda x: _pct(x.m("precision"))) for _, r, w in cols)],
        ["Recall %", *(cell(r, w, lambda x: _pct(x.m("recall"))) for _, r, w in cols)],
        ["F1 %", *(cell(r, w, lambda x: _pct(x.m("f1"))) for _, r, w in cols)],
        ["FLOPs", *(cell(r, w, lambda x: _flops(x.m("flops"))) for _, r, w in cols)],
        ["Params", *(cell(r, w, lambda x: _flops(x.metrics.get("params"))) for _, r, w in cols)],
        ["Study", *(cell(r, w, lambda x: f"`{x.study}`") for _, r, w in cols)],
    ]


def _model_csv(key: str, rec: EvalRecord | None, why: str) -> dict[str, Any]:
    base = {"role": key, "title": ROLES[key].title}
    if rec is None:
        return {**base, "status": why}
    return {
        **base,
        "status": "ok",
        "study": rec.study,
        "model": rec.label,
        "evaluation_run": rec.eval_run_id,
        **{k: rec.m(k) for k in ("acc", "acc_low", "acc_high", "precision", "recall", "f1", "top5", "flops")},
        "params": rec.metrics.get("params"),
    }


def table2(chosen: dict[str, EvalRecord], section: Section, out: Path, suffix: str, elsewhere) -> None:
    """Table 2: DynamicConv2D vs plain ResNet-18 at the same stem, and the stem's own effect."""
    md = section.markdown
    md.append("### Table 2 — ResNet-18 with DynamicConv2D vs plain ResNet-18, and the stem ablation\n")
    keys = [k for k in TABLE2_COLUMNS if k not in TABLE2_OPTIONAL or k in chosen]
    cols = [(ROLES[k].title, chosen.get(k), _not_run(k, elsewhere)) for k in keys]
    md.append("RGB input; plain models see all three channels.\n")
    md.append(_md_table(["measure", *(t for t, _, _ in cols)], _model_rows(cols)) + "\n")
    md.append(
        f"The seed: dynamic {SEED_TABLE2['dynamic'][0]:.2f} % at {SEED_TABLE2['dynamic'][1]:,} FLOPs "
        f"vs plain {SEED_TABLE2['plain'][0]:.2f} % at {SEED_TABLE2['plain'][1]:,} FLOPs (3.1x): "
        "its dynamic model also "
        "had a different stem, so the two effects were conflated. The rows below separate them.\n"
    )
    rows = []
    for name, ka, kb in TABLE2_PAIRS:
        a, b = chosen.get(ka), chosen.get(kb)
        if a is None or b is None:
            missing = [ROLES[k].spec_file for k, r in ((ka, a), (kb, b)) if r is None]
            rows.append([name, "-", "-", "-", "not run: " + "; ".join(missing)])
            continue
        comp = compare(f"Table 2: {name}", a, b)
        section.comparisons.append(comp)
        fa, fb = a.m("flops"), b.m("flops")
        ratio = f"{fa / fb:.2f}x" if fa and fb else "-"
        counts = "-" if comp.test is None else f"{comp.test.b} / {comp.test.c}"
        rows.append([name, f"{100 * (comp.acc_a - comp.acc_b):+.2f}", counts, ratio, comp.verdict])
    head = [
        "effect (first minus second)",
        "Δ accuracy (points)",
        "only first / only second right",
        "FLOPs ratio",
        "McNemar",
    ]
    md.append(_md_table(head, rows) + "\n")
    section.files.append(
        _write_csv(
            out / f"table2{suffix}.csv",
            [_model_csv(k, chosen.get(k), w) for k, (_, _, w) in zip(keys, cols, strict=True)],
        )
    )


def table3(chosen: dict[str, EvalRecord], section: Section, out: Path, suffix: str, elsewhere) -> None:
    """Table 3: the 5-layer CNN vs ResNet-34, the accuracy ratio with a CI and the ≥ 90 % verdict."""
    md = section.markdown
    md.append('### Table 3 — 5-layer CNN vs ResNet-34 (the seed\'s "≥ 90 % of ResNet-34" target)\n')
    cnn, r34 = chosen.get("simple_cnn"), chosen.get("resnet34")
    cols = [(ROLES[k].title, chosen.get(k), _not_run(k, elsewhere)) for k in ("simple_cnn", "resnet34")]
    md.append(_md_table(["measure", *(t for t, _, _ in cols)], _model_rows(cols)) + "\n")
    seed_ratio = SEED_TABLE3["simple_cnn"][0] / SEED_TABLE3["resnet34"][0]
    row: dict[str, Any] = {"target": TARGET_RATIO, "seed_ratio": seed_ratio}
    if cnn is None or r34 is None:
        md.append("Verdict: not available until both studies are evaluated on the same test set.\n")
        row["verdict"] = "not run"
    else:
        comp = compare("Table 3: 5-layer CNN vs ResNet-34", cnn, r34)
        section.comparisons.append(comp)
        paired = comp.test is not None
        ratio, low, high = stats.ratio_ci(cnn.correct(), r34.correct(), paired=paired)
        verdict = stats.threshold_verdict(low, high, TARGET_RATIO)
        kind = (
            "paired bootstrap over the same test images"
            if paired
            else "unpaired bootstrap (different test sets)"
        )
        md.append(
            f"5-layer CNN accuracy as a percentage of ResNet-34's: **{100 * ratio:.1f} %** "
            f"(95 % CI {100 * low:.1f}-{100 * high:.1f} %, {kind}).\n"
        )
        md.append(
            f"Verdict on the seed's target (≥ {100 * TARGET_RATIO:.0f} % of ResNet-34): **{verdict}**"
            + {
                "met": " — the whole interval clears the target.",
                "not met": " — the whole interval lies below the target.",
                "inconclusive": " — the interval straddles the target; this test set cannot decide.",
            }[verdict]
            + f" Accuracy difference: {comp.verdict}.\n"
        )
        f_c, f_r = cnn.m("flops"), r34.m("flops")
        if f_c and f_r:
            md.append(f"Cost: the 5-layer CNN needs {f_c / f_r:.1f}x the FLOPs of ResNet-34.\n")
        row.update(
            {
                "ratio": ratio,
                "ratio_low": low,
                "ratio_high": high,
                "verdict": verdict,
                "paired": paired,
                "acc_simple_cnn": comp.acc_a,
                "acc_resnet34": comp.acc_b,
                "mcnemar_p": None if comp.test is None else comp.test.p_value,
                "mcnemar_verdict": comp.verdict,
            }
        )
    md.append(
        f"The seed: {SEED_TABLE3['simple_cnn'][0]:.2f} % vs {SEED_TABLE3['resnet34'][0]:.2f} % "
        f'= {100 * seed_ratio:.1f} % of ResNet-34, reported without an interval as "about 90 %".\n'
    )
    models = [
        _model_csv(k, chosen.get(k), w) for k, (_, _, w) in zip(("simple_cnn", "resnet34"), cols, strict=True)
    ]
    section.files.append(_write_csv(out / f"table3{suffix}.csv", [*models, {"role": "ratio", **row}]))


def pareto_points(records: Sequence[EvalRecord]) -> list[dict[str, Any]]:
    """One point per (study, subset) with FLOPs; `pareto` marks the non-dominated ones."""
    pts = []
    labels = [rec.label for rec in records]
    for rec in records:
        for s in rec.subsets:
            flops = rec.m("flops", s)
            if flops:
                pts.append(
                    {
                        "label": rec.label if labels.count(rec.label) == 1 else f"{rec.label} ({rec.study})",
                        "study": rec.study,
                        "subset": s,
                        "flops": flops,
                        "accuracy": rec.m("acc", s),
                        "acc_low": rec.m("acc_low", s),
                        "acc_high": rec.m("acc_high", s),
                    }
                )
    for p in pts:
        p["pareto"] = not any(
            q["flops"] <= p["flops"]
            and q["accuracy"] >= p["accuracy"]
            and (q["flops"] < p["flops"] or q["accuracy"] > p["accuracy"])
            for q in pts
        )
    return pts


def _overview(records: Sequence[EvalRecord]) -> tuple[str, list[dict[str, Any]]]:
    rows, csv_rows = [], []
    for rec in records:
        role = role_of(rec)
        rows.append(
            [
                f"`{rec.study}`",
                rec.experiment,
                rec.label,
                ROLES[role].title if role else "-",
                _acc_ci(rec),
                _flops(rec.m("flops")),
                f"`{rec.eval_run_id}`",
            ]
        )
        csv_rows.append(
            {
                "study": rec.study,
                "experiment": rec.experiment,
                "model": rec.label,
                "role": role or "",
                "evaluation_run": rec.eval_run_id,
                "trial_run": rec.source_run_id,
                "test_set_id": rec.test_set_id,
                "dataset": rec.dataset,
                "n": rec.n,
                **{f"acc_{s}": rec.m("acc", s) for s in rec.subsets},
                "flops_RGB": rec.m("flops"),
                "params": rec.metrics.get("params"),
            }
        )
    head = [
        "study",
        "experiment",
        "model",
        "fills",
        "RGB accuracy % [95% CI]",
        "FLOPs (RGB)",
        "evaluation run",
    ]
    return _md_table(head, rows), csv_rows


def render_section(
    records: Sequence[EvalRecord],
    out: Path,
    suffix: str,
    elsewhere: Sequence[EvalRecord],
    primary: bool = True,
) -> Section:
    """All tables, tests and plots for the evaluations on one test set.

    The primary test set (the one most studies were evaluated on) always gets Tables 1-3, with "not run"
    cells for missing studies; other test sets only get the tables some study of theirs fills.
    """
    from dynconv import plots

    section = Section()
    chosen = pick_roles(records)
    t1 = next((chosen[k] for k in TABLE1_PREFERENCE if k in chosen), None)
    if primary or t1 is not None:
        table1(t1, section, out, suffix, elsewhere)
    if primary or any(k in chosen for k in TABLE2_COLUMNS):
        table2(chosen, section, out, suffix, elsewhere)
    if primary or any(k in chosen for k in ("simple_cnn", "resnet34")):
        table3(chosen, section, out, suffix, elsewhere)
    if not primary and not chosen:
        section.markdown.append("No study on this test set fills Tables 1-3; see the overview below.\n")

    md = section.markdown
    md.append("### Paired significance tests (McNemar, same test images)\n")
    if section.comparisons:
        head = ["comparison", "a", "b", "acc a %", "acc b %", "only a / only b right", "p", "verdict"]
        rows = [
            [
                c.name,
                c.a,
                c.b,
                _pct(c.acc_a),
                _pct(c.acc_b),
                "-" if c.test is None else f"{c.test.b} / {c.test.c}",
                "-" if c.test is None else f"{c.test.p_value:.3g} ({c.test.method})",
                c.verdict,
            ]
            for c in section.comparisons
        ]
        md.append(_md_table(head, rows) + "\n")
        n = records[0].n if records else 0
        half = 100 * stats.Z95 * math.sqrt(0.25 / max(n, 1))
        md.append(
            f"With {n} test images a single accuracy is known to about ±{half:.1f} points (95 %, at 50 %); "
            '"noise" means McNemar\'s test does not reject equal accuracy at the 5 % level.\n'
        )
    else:
        md.append("No pairs to test on this test set.\n")
    section.files.append(
        _write_csv(out / f"significance{suffix}.csv", [c.row() for c in section.comparisons])
    )

    md.append("### Accuracy vs FLOPs (model x channel subset)\n")
    pts = pareto_points(records)
    section.files.append(_write_csv(out / f"pareto{suffix}.csv", pts))
    section.files.append(plots.pareto(pts, out / f"pareto{suffix}.png"))
    front = sorted((p for p in pts if p["pareto"]), key=lambda p: p["flops"])
    md.append(f"![pareto](pareto{suffix}.png)\n")
    if front:
        md.append(
            "Pareto front (no other point is both cheaper and more accurate): "
            + "; ".join(
                f"{p['label']} {p['subset']} ({_pct(p['accuracy'])} % at {_flops(p['flops'])})" for p in front
            )
            + ".\n"
        )

    md.append("### All evaluations on this test set\n")
    table, csv_rows = _overview(records)
    md.append(table + "\n")
    section.files.append(_write_csv(out / f"evaluations{suffix}.csv", csv_rows))
    return section


READING_NOTES = """## How to read this report

* Accuracy intervals are 95 % Wilson score intervals. Macro precision, recall and F1 average over all
  classes with zero_division = 0 (scikit-learn's convention); on a class-balanced test set macro recall
  equals accuracy, which is why the seed's Recall row repeats its Accuracy row.
* Two accuracies are compared with McNemar's test on the images where exactly one model is right
  (exact binomial below 25 such images, continuity-corrected chi-square above); a difference marked
  "noise" may well vanish on another draw of the test set.
* Dynamic models are evaluated on only the subset's channels with their indices; plain models see the
  missing channels zero-filled after normalisation (the dataset mean colour) at full cost.
* FLOPs are fvcore multiply-adds per image at the study's image size.
* Each column is the newest study of its kind; each study is represented by its best trial by
  validation accuracy (the test set never chooses).
"""


def write_report(
    experiments: Sequence[str] | None = None, out_dir: Path = Path("reports"), tracking_uri: str | None = None
) -> Path:
    """Write report.md, CSVs and PNGs for the studies in `experiments` (default: all); returns report.md."""
    uri = resolve_tracking_uri(tracking_uri)
    records = load_records(uri, experiments)  # unknown experiments fail before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[EvalRecord]] = {}
    for rec in records:
        groups.setdefault(rec.test_set_id, []).append(rec)
    ordered = sorted(groups.values(), key=lambda g: (-len(g), -g[0].started_ms))

    md = [
        "# dynconv report: the seed's Tables 1-3 from MLflow\n",
        f"Tracking store `{uri}`; experiments: {', '.join(experiments) if experiments else 'all'}; "
        f"generated {time.strftime('%Y-%m-%d %H:%M:%S')}; {len(records)} evaluated studies on "
        f"{len(groups)} test set(s).\n",
    ]
    if not records:
        md.append(
            "No evaluation runs found. Run a study (`dynconv tune tune_jobs/<spec>.yaml`, evaluation runs at "
            "its end) or `dynconv evaluate STUDY` first.\n"
        )
        ordered = [[]]
    files: list[Path] = []
    for i, group in enumerate(ordered):
        suffix = "" if len(ordered) == 1 else f"_{group[0].test_set_id[:8]}"
        if group:
            split = group[0].summary.get("split", "test")
            md.append(
                f"## Test set {group[0].test_set_id[:12]}: {group[0].dataset}, {split} split, "
                f"{group[0].n} images\n"
            )
        else:
            md.append("## No test set\n")
        elsewhere = [r for j, g in enumerate(ordered) if j != i for r in g]
        section = render_section(group, out, suffix, elsewhere, primary=i == 0)
        md += section.markdown
        files += section.files
    md.append(READING_NOTES)
    report = out / "report.md"
    report.write_text("\n".join(md))
    (out / "report.json").write_text(
        json.dumps({"tracking_uri": uri, "files": [p.name for p in files]}, indent=1)
    )
    print(f"wrote {report} and {len(files)} tables/plots in {out}")
    return report
