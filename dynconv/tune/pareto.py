"""The Pareto set of a multi-objective study: which trials no other trial beats on every objective.

Pure functions over plain numbers, so the study summary, the MLflow parent run and `dynconv evaluate`
agree on one definition. A trial is on the front when no other trial is at least as good on every
objective and strictly better on one ("max" objectives: higher is better, "min": lower).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = Sequence[float] | None


def _usable(point: Point, n: int) -> bool:
    return point is not None and len(point) == n and all(v is not None and math.isfinite(v) for v in point)


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Whether `a` is at least as good as `b` on every objective and strictly better on one."""
    sign = [1.0 if m == "max" else -1.0 for m in modes]
    ge = all(s * x >= s * y for s, x, y in zip(sign, a, b, strict=True))
    return ge and any(s * x > s * y for s, x, y in zip(sign, a, b, strict=True))


def pareto_front(points: Sequence[Point], modes: Sequence[str]) -> list[int]:
    """Indices (in input order) of the non-dominated points. A point that is None, of the wrong
    length or holds a NaN (a failed trial, a metric never reported) is never on the front; equal
    points are all on it."""
    if any(m not in ("max", "min") for m in modes):
        raise ValueError(f"modes must be 'max' or 'min', got {list(modes)}")
    ok = [i for i, p in enumerate(points) if _usable(p, len(modes))]
    return [
        i
        for i in ok
        if not any(dominates(points[j], points[i], modes) for j in ok if j != i)  # type: ignore[arg-type]
    ]


TAG_PARETO_TRIALS = "dynconv.pareto_trials"  # parent run: comma-separated Tune trial ids on the front
TAG_PARETO_RUN_IDS = "dynconv.pareto_run_ids"  # parent run: their MLflow run ids, in the same order

