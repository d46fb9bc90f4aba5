"""Cells and files of the report: percentages, intervals, FLOP counts, markdown tables, CSV files.

Imports only the record type; nothing from MLflow.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynconv.report.records import EvalRecord


def pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def acc_ci(rec: EvalRecord, subset: str = "RGB") -> str:
    acc = rec.m("acc", subset)
    if acc is None:
        return "-"
    return f"{pct(acc)} [{pct(rec.m('acc_low', subset))}, {pct(rec.m('acc_high', subset))}]"


def flops_cell(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{int(x):,}"


def md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys or ["empty"])
        writer.writeheader()
        writer.writerows(rows)
    return path
