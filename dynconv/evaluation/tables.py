"""The subset table of an evaluation: markdown for the console and `subsets.md`, and the files beside it.

`write_table_files` writes `subsets.csv`, `subsets.md`, `evaluation.json` and `predictions/*.npz` to a
folder (what `dynconv.tracking.evaluations` logs). Imports numpy, `dynconv.stats` and the result types;
never torch, Ray or MLflow.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from dynconv import stats
from dynconv.evaluation.results import Evaluation


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def format_number(x: float, fmt: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def format_table(ev: Evaluation) -> str:
    """Markdown table of an evaluation (percentages), one row per subset."""
    head = [
        "subset",
        "accuracy % [95% CI]",
        "precision %",
        "recall %",
        "F1 %",
        "top-5 %",
        "vs RGB (McNemar)",
        "FLOPs",
        "params",
        "latency ms (b=1)",
        f"img/s (b={ev.speed.throughput_batch})",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in ev.results:
        vs = "-" if r.vs_rgb is None else f"{r.vs_rgb.b}/{r.vs_rgb.c}: {stats.verdict(r.vs_rgb.p_value)}"
        cells = [
            r.subset,
            f"{_pct(r.accuracy)} [{_pct(r.acc_low)}, {_pct(r.acc_high)}]",
            _pct(r.precision),
            _pct(r.recall),
            _pct(r.f1),
            _pct(r.top5),
            vs,
            f"{r.flops:,}",
            f"{r.params:,}",
            format_number(r.latency_ms, ".2f"),
            format_number(r.throughput, ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_notes(ev: Evaluation) -> str:
    """The lines printed under the table: input mode, interval width, how to read the McNemar column."""
    n = ev.results[0].n if ev.results else 0
    half = 100 * max(((r.acc_high - r.acc_low) / 2 for r in ev.results), default=0.0)
    return "\n".join(
        [
            f"Input: {ev.input_note}.",
            f"{n} {ev.split} images; the 95 % Wilson intervals reach ±{half:.1f} points, so gaps between"
            " rows smaller than that are likely noise (the McNemar column tests each subset against RGB).",
            "vs RGB: images only this subset got right / only RGB got right, and McNemar's test on"
            " those same images.",
            "FLOPs: fvcore multiply-adds for this input; latency and throughput: forward pass on "
            f"{ev.device}.",
        ]
    )


def print_evaluation(ev: Evaluation, header: str, file=None) -> None:
    """The evaluation table with its header and notes, to stdout (or `file`)."""
    out = file or sys.stdout
    print(f"\n{header}", file=out)
    print(format_table(ev), file=out)
    print(table_notes(ev), file=out)


def write_table_files(ev: Evaluation, out_dir: Path) -> dict[str, Path]:
    """subsets.csv, subsets.md, evaluation.json and predictions/*.npz under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in ev.results]
    csv_path = out_dir / "subsets.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md_path = out_dir / "subsets.md"
    md_path.write_text(f"{format_table(ev)}\n\n{table_notes(ev)}\n")
    json_path = out_dir / "evaluation.json"
    json_path.write_text(json.dumps(ev.summary(), indent=1))
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(exist_ok=True)
    for r in ev.results:
        np.savez_compressed(
            pred_dir / f"predictions_{r.subset}.npz",
            y_true=r.y_true,
            y_pred=r.y_pred,
            top5_hit=r.top5_hit,
            confusion=r.confusion,
            test_set_id=np.array(ev.test_set_id),
            data_fingerprint=np.array(ev.data_fingerprint),
        )
    return {"csv": csv_path, "md": md_path, "json": json_path, "predictions": pred_dir}
