"""Paired comparisons: McNemar's test of two evaluations (or two subsets of one) on the same images.

Two evaluations are paired only when they saw the same test images (same test-set id and identical
label vectors); otherwise the comparison says why not. Imports `dynconv.stats` and the record type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dynconv import stats
from dynconv.report.records import EvalRecord


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
