"""Honest statistics for small test sets: classification metrics, confidence intervals, paired tests.

Pure numpy/scipy (no torch), so the report can run on a machine without a GPU build of torch.

Conventions, fixed here once so every table agrees:

* Macro precision, recall and F1 are averaged over *all* labels ``0 .. num_classes - 1`` with
  ``zero_division = 0``, exactly like scikit-learn's
  ``precision_recall_fscore_support(y_true, y_pred, labels=range(num_classes), average="macro",
  zero_division=0)``. A class that is never predicted has precision 0; a class absent from both
  ``y_true`` and ``y_pred`` scores 0 on all three and still counts in the average (it cannot happen on
  a test split that holds every class, which ImageNet-mini's does). Macro F1 is the mean of the
  per-class F1 scores, not the F1 of macro precision and macro recall.
* On a class-balanced test set macro recall equals accuracy; that is why the seed's Recall row
  repeats its Accuracy row.
* Accuracy intervals are Wilson score intervals (good coverage down to n of a few dozen, never
  outside [0, 1]); with 450 test images and accuracy near 50 % the 95 % interval is about ±4.6 points.
* Two models evaluated on the *same* test images are compared with McNemar's test on the
  discordant pairs, not by comparing two intervals (which ignores the pairing and is too timid).

Imports only numpy and scipy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import stats as _sp

Z95 = 1.959963984540054
MCNEMAR_EXACT_BELOW = 25  # discordant pairs; below this the chi-square approximation is poor


# ----------------------------------------------------------------------------------- metrics


def _labels(y: np.ndarray | list[int], name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted (sklearn's layout)."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"y_true ({len(t)}) and y_pred ({len(p)}) differ in length")
    for arr, name in ((t, "y_true"), (p, "y_pred")):
        if len(arr) and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}")
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's zero_division=0)."""
    out = np.zeros(np.shape(num), dtype=np.float64)
    np.divide(num, den, out=out, where=np.asarray(den) != 0)
    return out


def per_class_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix (zero_division = 0)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, actual)
    f1 = _safe_divide(2 * tp, predicted + actual)  # = 2PR/(P+R), 0 when undefined
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual.astype(np.int64)}


def classification_metrics(y_true, y_pred, num_classes: int) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1 over labels 0..num_classes-1 (see module doc).

    Also returns ``n`` and ``correct`` so callers can build intervals and tests from the same counts.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    per = per_class_metrics(cm)
    n = int(cm.sum())
    correct = int(np.trace(cm))
    return {
        "accuracy": correct / n if n else 0.0,
        "precision": float(per["precision"].mean()),
        "recall": float(per["recall"].mean()),
        "f1": float(per["f1"].mean()),
        "n": n,
        "correct": correct,
    }


def topk_hits(scores: np.ndarray, y_true, k: int = 5) -> np.ndarray:
    """Bool per sample: is the true label among the ``k`` highest scores (k capped at the class count)."""
    s = np.asarray(scores)
    t = _labels(y_true, "y_true")
    k = min(k, s.shape[1])
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return (top == t[:, None]).any(axis=1)


# ---------------------------------------------------------------------------------- intervals


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (default 95 %); (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def _paired(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired correctness vectors must have the same 1-D shape, got {a.shape} and {b.shape}"
        )
    return a, b


def ratio_ci(
    correct_a,
    correct_b,
    level: float = 0.95,
    n_boot: int = 4000,
    seed: int = 0,
    paired: bool = True,
) -> tuple[float, float, float]:
    """(ratio, low, high): accuracy of A as a fraction of B's, with a percentile bootstrap interval.

    ``paired``: resample test images jointly (both models saw the same images, so their errors are
    correlated and the interval is narrower than an unpaired one). ``paired=False`` resamples each
    vector on its own, for models evaluated on different test sets. Seeded, so reports are stable.
    Resamples where B's accuracy is 0 are dropped (the ratio is undefined there).
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if paired:
        a, b = _paired(a, b)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("ratio_ci needs non-empty correctness vectors")
    ratio = a.mean() / b.mean() if b.mean() > 0 else float("nan")
    rng = np.random.default_rng(seed)
    if paired:
        idx = rng.integers(0, len(a), size=(n_boot, len(a)))
        acc_a, acc_b = a[idx].mean(axis=1), b[idx].mean(axis=1)
    else:
        acc_a = a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1)
        acc_b = b[rng.integers(0, len(b), size=(n_boot, len(b)))].mean(axis=1)
    keep = acc_b > 0
    if not keep.any():
        return float(ratio), float("nan"), float("nan")
    boot = acc_a[keep] / acc_b[keep]
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return float(ratio), float(low), float(high)


class MeanInterval(NamedTuple):
    """The mean of a few independent repeats (seeds) with its two-sided Student-t interval."""

    n: int
    mean: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_interval(values, level: float = 0.95, bounds: tuple[float, float] | None = None) -> MeanInterval:
    """Mean and Student-t interval of independent repeats (non-finite values left out), clipped to
    `bounds` when the quantity has them (an accuracy's [0, 1]). One value: its interval is unknown (NaN
    bounds), never a zero-width one; none: everything NaN."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return MeanInterval(0, math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if len(v) == 1:
        return MeanInterval(1, mean, math.nan, math.nan)
    half = float(_sp.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return MeanInterval(len(v), mean, low, high)


class Welch(NamedTuple):
    """Welch's two-sample t-test of A against B (unequal variances), with Hedges' g as the effect size
    (the mean difference in pooled standard deviations, corrected for small samples)."""

    t: float
    df: float
    p_value: float
    hedges_g: float


def welch(a, b) -> Welch:
    """Welch's t-test and Hedges' g of two groups of independent repeats (each seed's result). Fewer
    than two finite values in a group, or no spread in either: no test (NaN p-value); equal means give
    p = 1."""
    x = np.asarray([v for v in a if math.isfinite(v)], dtype=np.float64)
    y = np.asarray([v for v in b if math.isfinite(v)], dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return Welch(math.nan, math.nan, math.nan, math.nan)
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    diff = float(x.mean() - y.mean())
    if vx + vy == 0:
        return Welch(math.nan, math.nan, 1.0 if diff == 0 else math.nan, math.nan)
    res = _sp.ttest_ind(x, y, equal_var=False)
    pooled = math.sqrt(((len(x) - 1) * vx + (len(y) - 1) * vy) / (len(x) + len(y) - 2))
    correction = 1 - 3 / (4 * (len(x) + len(y)) - 9)
    g = diff / pooled * correction if pooled > 0 else math.nan
    return Welch(float(res.statistic), float(res.df), float(res.pvalue), float(g))


# ------------------------------------------------------------------------------ paired tests


class McNemar(NamedTuple):
    """McNemar's test on paired correctness: b = only A right, c = only B right."""

    b: int
    c: int
    p_value: float

    @property
    def method(self) -> str:
        """'exact' (binomial) below MCNEMAR_EXACT_BELOW discordant pairs, else 'chi2' (corrected)."""
        return "exact" if self.b + self.c < MCNEMAR_EXACT_BELOW else "chi2"


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided McNemar p-value from the discordant counts.

    With fewer than MCNEMAR_EXACT_BELOW discordant pairs: the exact binomial test
    (p = min(1, 2 · P[X <= min(b, c)]), X ~ Bin(b + c, 1/2)). Otherwise: the chi-square statistic
    with Edwards' continuity correction, (|b - c| - 1)² / (b + c), on 1 degree of freedom.
    No discordant pairs at all: p = 1 (the models agree on every image).
    """
    n = b + c
    if n == 0:
        return 1.0
    if n < MCNEMAR_EXACT_BELOW:
        return float(min(1.0, 2.0 * _sp.binom.cdf(min(b, c), n, 0.5)))
    stat = (abs(b - c) - 1) ** 2 / n
    return float(_sp.chi2.sf(stat, df=1))


def mcnemar(correct_a, correct_b) -> McNemar:
    """McNemar's test of two models' per-image correctness on the same test images (see mcnemar_p)."""
    a, b = _paired(correct_a, correct_b)
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    return McNemar(only_a, only_b, mcnemar_p(only_a, only_b))


def verdict(p_value: float, alpha: float = 0.05) -> str:
    """'significant (p=0.003)' or 'noise (p=0.41)': the words a table prints next to a difference."""
    if p_value is None or not math.isfinite(p_value):
        return "no test"
    shown = f"p={p_value:.2g}" if p_value >= 0.001 else "p<0.001"
    return f"significant ({shown})" if p_value < alpha else f"noise ({shown})"


def threshold_verdict(low: float, high: float, target: float) -> str:
    """Is a quantity with interval [low, high] at least ``target``? 'met', 'not met' or 'inconclusive'.

    'met' only when the whole interval clears the target, 'not met' only when it lies wholly below;
    anything else cannot be told from this test set.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if low >= target:
        return "met"
    if high < target:
        return "not met"
    return "inconclusive"
