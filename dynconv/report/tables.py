"""The seed's Tables 1-3, one function each: markdown into a `Section`, a CSV file per table.

Table 1: the dynamic ResNet-18 on the seven channel subsets. Table 2: DynamicConv2D vs plain ResNet-18
at the same stem, and the stem's own effect. Table 3: the 5-layer CNN vs ResNet-34, with a paired
bootstrap interval on the accuracy ratio and the "≥ 90 %" verdict judged from that interval.
Imports the report's records, roles, comparisons and formatting, `dynconv.stats` and `dynconv.plots`;
nothing from MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynconv import stats
from dynconv.data.channels import SUBSET_NAMES
from dynconv.report.compare import Comparison, compare
from dynconv.report.confirmation import SINGLE_SEED, compare_over_seeds
from dynconv.report.format import acc_ci, flops_cell, md_table, pct, write_csv
from dynconv.report.records import EvalRecord
from dynconv.report.roles import (
    ROLES,
    SEED_TABLE1,
    SEED_TABLE2,
    SEED_TABLE3,
    TABLE1_PREFERENCE,
    TABLE2_COLUMNS,
    TABLE2_OPTIONAL,
    TABLE2_PAIRS,
    TARGET_RATIO,
    role_of,
)


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
        ["Accuracy [95% CI]", *(acc_ci(rec, s) for s in subsets)],
        ["Precision (macro)", *(pct(rec.m("precision", s)) for s in subsets)],
        ["Recall (macro)", *(pct(rec.m("recall", s)) for s in subsets)],
        ["F1 (macro)", *(pct(rec.m("f1", s)) for s in subsets)],
        ["Top-5", *(pct(rec.m("top5", s)) for s in subsets)],
        ["FLOPs", *(flops_cell(rec.m("flops", s)) for s in subsets)],
        ["vs RGB (McNemar)", *("-" if s == "RGB" else comps[s].verdict for s in subsets)],
        ["Seed's accuracy", *(_seed_t1("accuracy", s) for s in subsets)],
    ]
    md.append(
        f"Study `{rec.study}` ({rec.label}, evaluation run `{rec.eval_run_id}`), {rec.n} test images; "
        "input: only the subset's channels, with their indices.\n"
    )
    md.append(md_table(head, rows) + "\n")
    noise = [s for s, c in comps.items() if c.test is not None and c.test.p_value >= 0.05]
    if noise:
        md.append(f"Differences from RGB that are noise at this test-set size: {', '.join(noise)}.\n")
    md.append(
        "The seed reported one FLOP count for every subset; here a subset with C of 3 channels costs the "
        "stem C/3 of its work.\n"
    )
    section.files.append(write_csv(out / f"table1{suffix}.csv", _table1_csv_rows(rec, comps)))
    section.files.append(_table1_plot(rec, out / f"table1_accuracy{suffix}.png"))
    md.append(f"![accuracy by subset](table1_accuracy{suffix}.png)\n")


def _table1_csv_rows(rec: EvalRecord, comps: dict[str, Comparison]) -> list[dict[str, Any]]:
    """table1.csv: one row per subset with its measures and its test against RGB."""
    return [
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
        for s in rec.subsets
    ]


def _table1_plot(rec: EvalRecord, path: Path) -> Path:
    """Accuracy by subset with its intervals (table1_accuracy.png)."""
    from dynconv import plots

    plot_rows = [
        {
            "subset": s,
            "accuracy": rec.m("acc", s),
            "acc_low": rec.m("acc_low", s),
            "acc_high": rec.m("acc_high", s),
        }
        for s in rec.subsets
    ]
    return plots.accuracy_by_subset(plot_rows, path, f"Table 1: {rec.label}")


def _seed_t1(measure: str, subset: str) -> str:
    return f"{SEED_TABLE1[measure][SUBSET_NAMES.index(subset)]:.2f}"


def _model_rows(cols: Sequence[tuple[str, EvalRecord | None, str]]) -> list[list[str]]:
    """Rows of a model table for columns (title, record or None, why it is missing)."""

    def cell(rec: EvalRecord | None, why: str, fn) -> str:
        return fn(rec) if rec is not None else "—"

    return [
        ["Accuracy % [95% CI]", *(acc_ci(r) if r is not None else w for _, r, w in cols)],
        ["Precision %", *(cell(r, w, lambda x: pct(x.m("precision"))) for _, r, w in cols)],
        ["Recall %", *(cell(r, w, lambda x: pct(x.m("recall"))) for _, r, w in cols)],
        ["F1 %", *(cell(r, w, lambda x: pct(x.m("f1"))) for _, r, w in cols)],
        ["FLOPs", *(cell(r, w, lambda x: flops_cell(x.m("flops"))) for _, r, w in cols)],
        ["Params", *(cell(r, w, lambda x: flops_cell(x.metrics.get("params"))) for _, r, w in cols)],
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
    md.append(md_table(["measure", *(t for t, _, _ in cols)], _model_rows(cols)) + "\n")
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
            rows.append([name, "-", "-", "-", "not run: " + "; ".join(missing), "-"])
            continue
        comp = compare(f"Table 2: {name}", a, b)
        section.comparisons.append(comp)
        fa, fb = a.m("flops"), b.m("flops")
        ratio = f"{fa / fb:.2f}x" if fa and fb else "-"
        counts = "-" if comp.test is None else f"{comp.test.b} / {comp.test.c}"
        seeds = compare_over_seeds(a.confirmation, b.confirmation, "RGB") or "not confirmed (one seed each)"
        rows.append([name, f"{100 * (comp.acc_a - comp.acc_b):+.2f}", counts, ratio, comp.verdict, seeds])
    head = [
        "effect (first minus second)",
        "Δ accuracy (points)",
        "only first / only second right",
        "FLOPs ratio",
        "McNemar (test images)",
        "over seeds (training randomness)",
    ]
    md.append(md_table(head, rows) + "\n")
    if not all(r[-1].startswith(("+", "-")) for r in rows if r[1] != "-"):
        md.append(f"Where a pair was not confirmed: {SINGLE_SEED}.\n")
    section.files.append(
        write_csv(
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
    md.append(md_table(["measure", *(t for t, _, _ in cols)], _model_rows(cols)) + "\n")
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
    section.files.append(write_csv(out / f"table3{suffix}.csv", [*models, {"role": "ratio", **row}]))
