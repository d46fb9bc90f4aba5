"""The robustness table: every evaluated model on the seven channel subsets, and where robustness comes from.

Three arms answer "what makes a model channel-robust" (issue 14; specs in `tune_jobs/`):

* `dyn_drop`: ResNet-18 with a DynamicConv2D stem, trained with channel drop (the project's model);
* `plain_drop`: plain ResNet-18 trained with channel drop (against it: what DynamicConv2D adds);
* `plain_nodrop`: plain ResNet-18 without channel drop, the seed's baseline (against `plain_drop`: what
  channel-drop training adds).

Per subset, the dynamic arm is tested against each control with McNemar's test on the same test images,
and one paragraph splits the gain on the baseline's worst subset between channel-drop training
(`plain_nodrop` -> `plain_drop`) and DynamicConv2D (`plain_drop` -> `dyn_drop`), saying which step is
noise. A record's arm comes from its model and the `train.channel_drop` its trial trained with. Records
arrive loaded (`dynconv.report.records`); nothing here talks to MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynconv.data.channels import SUBSET_NAMES
from dynconv.report.compare import Comparison, compare
from dynconv.report.confirmation import SINGLE_SEED, compare_over_seeds
from dynconv.report.format import acc_ci, md_table, pct, write_csv
from dynconv.report.records import EvalRecord
from dynconv.report.tables import Section


@dataclass(frozen=True)
class Arm:
    """One arm of the comparison: which model, trained with or without channel drop, from which spec."""

    key: str
    title: str
    model: str
    channel_drop: bool
    spec_file: str  # the GPU-scale spec (stem "imagenet")
    small_spec_file: str  # the same arm at laptop scale (stem "small", the quickstart's model)


ARMS = (
    Arm("dyn_drop", "dynamic ResNet-18, channel drop", "resnet18_dynamic", True,
        "tune_jobs/resnet18_dynamic.yaml", "tune_jobs/quickstart.yaml"),
    Arm("plain_drop", "plain ResNet-18, channel drop", "resnet18", True,
        "tune_jobs/resnet18.yaml", "tune_jobs/quickstart_plain.yaml"),
    Arm("plain_nodrop", "plain ResNet-18, no channel drop (the seed's baseline)", "resnet18", False,
        "tune_jobs/resnet18_nodrop.yaml", "tune_jobs/quickstart_nodrop.yaml"),
)  # fmt: skip
CONTROLS = ("plain_drop", "plain_nodrop")


def arm_of(rec: EvalRecord) -> str | None:
    """The arm a record belongs to; None when it is none of the three (it is still in the table)."""
    if rec.channel_drop is None:
        return None
    for arm in ARMS:
        if rec.model == arm.model and (rec.channel_drop > 0) == arm.channel_drop:
            return arm.key
    return None


def pick_arms(records: Sequence[EvalRecord]) -> dict[str, EvalRecord]:
    """The newest study of each arm (records come newest first); the controls prefer the dynamic arm's
    stem, so the three differ only in what the comparison is about."""
    dyn = next((r for r in records if arm_of(r) == "dyn_drop"), None)
    chosen = {"dyn_drop": dyn} if dyn is not None else {}
    for key in CONTROLS:
        candidates = [r for r in records if arm_of(r) == key]
        same_stem = [r for r in candidates if dyn is not None and r.stem == dyn.stem]
        if same_stem or candidates:
            chosen[key] = (same_stem or candidates)[0]
    return chosen


def worst_subset(rec: EvalRecord, subsets: Sequence[str]) -> tuple[str, float]:
    """The subset (of `subsets`) with the lowest accuracy, and that accuracy."""
    return min(((s, rec.m("acc", s) or 0.0) for s in subsets), key=lambda x: x[1])


def _subset_table(records: Sequence[EvalRecord]) -> tuple[str, list[dict[str, Any]]]:
    """Rows = models, columns = subsets (accuracy with its 95 % interval), then RGB minus the worst."""
    head = ["model", "study", "channel drop", *(f"{s} % [95% CI]" for s in SUBSET_NAMES), "RGB − worst"]
    rows, csv_rows = [], []
    for rec in records:
        worst_s, worst = worst_subset(rec, rec.subsets)
        gap = (rec.m("acc", "RGB") or 0.0) - worst
        drop = "-" if rec.channel_drop is None else f"{rec.channel_drop:g}"
        rows.append([rec.label, f"`{rec.study}`", drop, *(acc_ci(rec, s) for s in SUBSET_NAMES),
                     f"{100 * gap:.1f} ({worst_s})"])  # fmt: skip
        csv_rows.append(
            {"study": rec.study, "model": rec.label, "arm": arm_of(rec) or "",
             "channel_drop": rec.channel_drop,
             **{f"acc_{s}": rec.m("acc", s) for s in SUBSET_NAMES},
             **{f"acc_low_{s}": rec.m("acc_low", s) for s in SUBSET_NAMES},
             **{f"acc_high_{s}": rec.m("acc_high", s) for s in SUBSET_NAMES},
             "worst_subset": worst_s, "rgb_minus_worst": gap}
        )  # fmt: skip
    return md_table(head, rows), csv_rows


def _title(key: str) -> str:
    return next(a.title for a in ARMS if a.key == key)


def _arm_tests(arms: dict[str, EvalRecord], subsets: Sequence[str]) -> list[Comparison]:
    """McNemar per subset: the dynamic arm against each control present, on the same test images."""
    return [
        compare(f"robustness {s}: dynamic + drop vs {key}", arms["dyn_drop"], arms[key], s, s)
        for key in CONTROLS
        if key in arms
        for s in subsets
    ]


def _arm_table(comps: Sequence[Comparison], subsets: Sequence[str]) -> str:
    head = ["dynamic + drop minus", *subsets]
    rows = []
    for key in CONTROLS:
        cells = [c for c in comps if c.name.endswith(f"vs {key}")]
        if cells:
            rows.append([_title(key), *(f"{100 * (c.acc_a - c.acc_b):+.1f} ({c.verdict})" for c in cells)])
    return md_table(head, rows)


def attribution(arms: dict[str, EvalRecord], subsets: Sequence[str]) -> str:
    """How much of the gain on the baseline's worst subset is channel-drop training and how much
    DynamicConv2D, each step with its McNemar verdict; empty unless all three arms are there."""
    base, drop, dyn = (arms.get(k) for k in ("plain_nodrop", "plain_drop", "dyn_drop"))
    if base is None or drop is None or dyn is None:
        return ""
    s, acc_base = worst_subset(base, subsets)
    acc_drop, acc_dyn = drop.m("acc", s) or 0.0, dyn.m("acc", s) or 0.0
    step_drop, step_dyn = compare("", drop, base, s, s), compare("", dyn, drop, s, s)
    gain_drop, gain_dyn, total = acc_drop - acc_base, acc_dyn - acc_drop, acc_dyn - acc_base
    text = (
        f"On **{s}**, the baseline's worst subset, accuracy goes from {pct(acc_base)} % without channel "
        f"drop to {pct(acc_drop)} % with channel-drop training ({100 * gain_drop:+.1f} points, "
        f"{step_drop.verdict}) and to {pct(acc_dyn)} % with DynamicConv2D on top "
        f"({100 * gain_dyn:+.1f} points, {step_dyn.verdict})."
    )
    if total > 0:
        share = max(0.0, min(1.0, gain_drop / total))
        text += (
            f" Of the {100 * total:.1f}-point gain, {100 * share:.0f} % comes from channel-drop training and "
            f"{100 * (1 - share):.0f} % from DynamicConv2D."
        )
    else:
        text += " Neither step improved the worst subset on this test set."
    text += " A step marked noise may vanish on another draw of the test set."
    over = [
        compare_over_seeds(drop.confirmation, base.confirmation, s),
        compare_over_seeds(dyn.confirmation, drop.confirmation, s),
    ]
    if all(over):
        return (
            text
            + f" Over the confirmed seeds on {s}: channel-drop training {over[0]}; DynamicConv2D {over[1]}.\n"
        )
    return text + f" Note: {SINGLE_SEED}.\n"


def _missing_arm_lines(arms: dict[str, EvalRecord], elsewhere: Sequence[EvalRecord]) -> list[str]:
    """One line per missing arm: evaluated on another test set, or the spec to run."""
    dyn = arms.get("dyn_drop")
    small = dyn is not None and dyn.stem == "small"
    lines = []
    for arm in ARMS:
        if arm.key in arms:
            continue
        other = next((r for r in elsewhere if arm_of(r) == arm.key), None)
        spec = arm.small_spec_file if small else f"{arm.spec_file} (laptop scale: {arm.small_spec_file})"
        where = (
            f"evaluated on another test set only (study `{other.study}`)" if other else f"not run: run {spec}"
        )
        lines.append(f"- Arm *{arm.title}*: {where}.\n")
    return lines


def robustness_section(
    records: Sequence[EvalRecord], section: Section, out: Path, suffix: str, elsewhere: Sequence[EvalRecord]
) -> None:
    """The robustness table and plot, the per-subset McNemar tests of the arms and the attribution."""
    from dynconv import plots

    md = section.markdown
    md.append("### Robustness — every evaluated model on the seven channel subsets\n")
    evaluated = [r for r in records if r.subsets]
    if not evaluated:
        md.append("No evaluated model on this test set.\n")
        return
    table, csv_rows = _subset_table(evaluated)
    md.append(table + "\n")
    section.files.append(write_csv(out / f"robustness{suffix}.csv", csv_rows))
    series = {
        f"{r.label} ({r.study})": [
            {"subset": s, "accuracy": r.m("acc", s), "acc_low": r.m("acc_low", s),
             "acc_high": r.m("acc_high", s)} for s in r.subsets
        ]
        for r in evaluated
    }  # fmt: skip
    section.files.append(plots.accuracy_by_subset_per_model(series, out / f"robustness{suffix}.png"))
    md.append(f"![accuracy by channel subset, per model](robustness{suffix}.png)\n")

    arms = pick_arms(evaluated)
    md += _missing_arm_lines(arms, elsewhere)
    if "dyn_drop" not in arms or len(arms) == 1:
        return
    subsets = [s for s in SUBSET_NAMES if all(s in r.subsets for r in arms.values())]
    comps = _arm_tests(arms, subsets)
    section.comparisons += comps
    md.append("Per subset, the dynamic arm minus each control (points; McNemar on the same test images):\n")
    md.append(_arm_table(comps, subsets) + "\n")
    md.append(attribution(arms, subsets))
