"""Rendering and writing the report: one section per test set, the Pareto plot, the overview, report.md.

Imports the report's own modules, `dynconv.spec` (the store's URI), `dynconv.stats`, `dynconv.plots`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynconv import stats
from dynconv.report.confirmation import confirmation_section, load_confirmations
from dynconv.report.format import acc_ci, flops_cell, md_table, pct, write_csv
from dynconv.report.records import EvalRecord, load_records
from dynconv.report.robustness import robustness_section
from dynconv.report.roles import ROLES, TABLE1_PREFERENCE, TABLE2_COLUMNS, pick_roles, role_of
from dynconv.report.tables import Section, table1, table2, table3
from dynconv.spec import resolve_tracking_uri
from dynconv.spec.ranking import pareto_front
from dynconv.tracking.store import masked


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
    front = set(pareto_front([(p["flops"], p["accuracy"]) for p in pts], ("min", "max")))
    for i, p in enumerate(pts):
        p["pareto"] = i in front
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
                acc_ci(rec),
                flops_cell(rec.m("flops")),
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
    return md_table(head, rows), csv_rows


def _significance(section: Section, records: Sequence[EvalRecord], out: Path, suffix: str) -> None:
    """The table of every paired McNemar test the section's tables made, and its CSV."""
    md = section.markdown
    md.append("### Paired significance tests (McNemar, same test images)\n")
    if section.comparisons:
        head = ["comparison", "a", "b", "acc a %", "acc b %", "only a / only b right", "p", "verdict"]
        rows = [
            [
                c.name,
                c.a,
                c.b,
                pct(c.acc_a),
                pct(c.acc_b),
                "-" if c.test is None else f"{c.test.b} / {c.test.c}",
                "-" if c.test is None else f"{c.test.p_value:.3g} ({c.test.method})",
                c.verdict,
            ]
            for c in section.comparisons
        ]
        md.append(md_table(head, rows) + "\n")
        n = records[0].n if records else 0
        half = 100 * stats.Z95 * math.sqrt(0.25 / max(n, 1))
        md.append(
            f"With {n} test images a single accuracy is known to about ±{half:.1f} points (95 %, at 50 %); "
            '"noise" means McNemar\'s test does not reject equal accuracy at the 5 % level.\n'
        )
    else:
        md.append("No pairs to test on this test set.\n")
    section.files.append(write_csv(out / f"significance{suffix}.csv", [c.row() for c in section.comparisons]))


def _pareto(section: Section, records: Sequence[EvalRecord], out: Path, suffix: str) -> None:
    """Accuracy against FLOPs for every (study, subset): CSV, plot and the Pareto front in words."""
    from dynconv import plots

    md = section.markdown
    md.append("### Accuracy vs FLOPs (model x channel subset)\n")
    pts = pareto_points(records)
    section.files.append(write_csv(out / f"pareto{suffix}.csv", pts))
    section.files.append(plots.pareto(pts, out / f"pareto{suffix}.png"))
    front = sorted((p for p in pts if p["pareto"]), key=lambda p: p["flops"])
    md.append(f"![pareto](pareto{suffix}.png)\n")
    if front:
        md.append(
            "Pareto front (no other point is both cheaper and more accurate): "
            + "; ".join(
                f"{p['label']} {p['subset']} ({pct(p['accuracy'])} % at {flops_cell(p['flops'])})"
                for p in front
            )
            + ".\n"
        )


def render_section(
    records: Sequence[EvalRecord],
    out: Path,
    suffix: str,
    elsewhere: Sequence[EvalRecord],
    primary: bool = True,
) -> Section:
    """All tables, tests and plots for the evaluations on one test set.

    The primary test set (the one most studies were evaluated on) always gets Tables 1-3, with "not run"
    cells for missing studies; other test sets only get the tables some study of theirs fills. Every test
    set gets the robustness table (all its evaluated models on all subsets, and the three arms).
    """
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
    robustness_section(records, section, out, suffix, elsewhere)

    _significance(section, records, out, suffix)
    _pareto(section, records, out, suffix)
    md = section.markdown
    md.append("### All evaluations on this test set\n")
    table, csv_rows = _overview(records)
    md.append(table + "\n")
    section.files.append(write_csv(out / f"evaluations{suffix}.csv", csv_rows))
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
  its own ranking (the test set never chooses). One trained model per study: unless a study was
  confirmed over seeds (the last section), its verdicts do not cover seed-to-seed variation.
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
        f"Tracking store `{masked(uri)}`; experiments: {', '.join(experiments) if experiments else 'all'}; "
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
    confirmed, confirmed_files = confirmation_section(load_confirmations(uri, experiments), out)
    md += confirmed
    files += confirmed_files
    md.append(READING_NOTES)
    report = out / "report.md"
    report.write_text("\n".join(md))
    (out / "report.json").write_text(
        json.dumps({"tracking_uri": masked(uri), "files": [p.name for p in files]}, indent=1)
    )
    print(f"wrote {report} and {len(files)} tables/plots in {out}")
    return report
