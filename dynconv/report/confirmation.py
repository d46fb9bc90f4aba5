"""The report's confirmation over seeds: per confirmed study, its configurations x seeds (the ranked
metric's mean and 95 % interval, per-subset test accuracy) and the champion's verdict; and the
comparison of two studies' champions over their seeds (Welch's t-test), which unlike McNemar on one
trial each covers training randomness.

Reads each study run's `confirmation.json` (written by `dynconv.tune.confirm`) through
`dynconv.tracking`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynconv import stats
from dynconv.data.channels import SUBSET_NAMES
from dynconv.report.format import md_table, write_csv
from dynconv.tracking.artifacts import download_yaml
from dynconv.tracking.find import experiments as find_experiments
from dynconv.tracking.find import search_runs
from dynconv.tracking.layout import CONFIRMATION_ARTIFACT, TAG_STUDY

SINGLE_SEED = (
    "one trained model per study: these verdicts cover the sampling of the test images, not seed-to-seed "
    "variation of training; confirm each study over seeds (`dynconv confirm STUDY`) to cover it"
)


def load_confirmations(uri: str, experiments: Sequence[str] | None = None) -> list[tuple[str, str, dict]]:
    """(study, study run id, confirmation) of every confirmed study run in the experiments, newest first."""
    exps = find_experiments(uri, experiments)
    if not exps:
        return []
    runs = search_runs(
        uri, "tags.`dynconv.role` = 'study' and tags.`dynconv.verdict` != ''", [e.experiment_id for e in exps]
    )
    out = []
    for run in runs:
        data = download_yaml(uri, run.info.run_id, CONFIRMATION_ARTIFACT)
        if isinstance(data, dict) and data.get("configurations"):
            out.append((run.data.tags.get(TAG_STUDY, "?"), run.info.run_id, data))
    return out


def champion_seeds(confirmation: dict[str, Any] | None, subset: str) -> list[float]:
    """The champion configuration's per-seed accuracies on `subset` ([] when not confirmed)."""
    for config in (confirmation or {}).get("configurations", []):
        if config["source_run_id"] == confirmation.get("champion"):  # type: ignore[union-attr]
            return [s["test_acc"][subset] for s in config["seeds"] if subset in (s.get("test_acc") or {})]
    return []


def compare_over_seeds(a: dict | None, b: dict | None, subset: str) -> str:
    """'+2.1 points over seeds (Welch p=0.04, Hedges' g=1.3, 3 vs 3 seeds)', or '' without seeds on both."""
    xa, xb = champion_seeds(a, subset), champion_seeds(b, subset)
    if len(xa) < 2 or len(xb) < 2:
        return ""
    test = stats.welch(xa, xb)
    diff = 100 * (sum(xa) / len(xa) - sum(xb) / len(xb))
    p = "no test (no spread)" if not math.isfinite(test.p_value) else stats.verdict(test.p_value)
    g = f", Hedges' g={test.hedges_g:.2f}" if math.isfinite(test.hedges_g) else ""
    return f"{diff:+.1f} points over seeds ({p}{g}, Welch's t-test, {len(xa)} vs {len(xb)} seeds)"


def _cell(entry: dict[str, Any] | None, scale: float = 1.0) -> str:
    """mean [low, high]: a metric as is (4 decimals), an accuracy in percent (`scale` 100, 2 decimals)."""
    if not entry or entry.get("mean") is None:
        return "-"
    digits = 4 if scale == 1 else 2
    mean, low, high = entry["mean"], entry.get("low"), entry.get("high")
    if low is None or high is None:
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def confirmation_section(
    confirmations: Sequence[tuple[str, str, dict]], out: Path
) -> tuple[list[str], list[Path]]:
    """Markdown and CSV files: one table and verdict per confirmed study, or the single-seed caveat."""
    md = ["## Confirmation over seeds\n"]
    if not confirmations:
        md.append(f"No study in this report was confirmed over seeds: {SINGLE_SEED}.\n")
        return md, []
    files, csv_rows = [], []
    for study, run_id, data in confirmations:
        metric = data["metric"]
        subsets = [s for s in SUBSET_NAMES if any(s in c.get("test", {}) for c in data["configurations"])]
        head = [
            "search rank",
            "trial",
            "seeds",
            f"{metric} mean [95% CI]",
            *(f"{s} test % [95% CI]" for s in subsets),
        ]
        rows = []
        for c in data["configurations"]:
            scored = sum(1 for s in c["seeds"] if s.get("value") is not None)
            row = [c["rank"], f"`{c['source_name']}`", f"{scored}/{len(c['seeds'])}", _cell(c)]
            rows.append(row + [_cell(c["test"].get(s), 100) for s in subsets])
            csv_rows.append(
                {
                    "study": study,
                    "source_run_id": c["source_run_id"],
                    "mean": c["mean"],
                    "low": c["low"],
                    "high": c["high"],
                    "seeds": len(c["seeds"]),
                }
            )
        md.append(f"### `{study}` (study run `{run_id}`), ranked on {metric} ({data['mode']})\n")
        md.append(md_table(head, rows) + "\n")
        md += [f"- {line}" for line in data.get("lines", [])]
        md.append("")
    files.append(write_csv(out / "confirmation.csv", csv_rows))
    return md, files
