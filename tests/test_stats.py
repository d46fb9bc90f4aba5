"""dynconv.stats against reference implementations (scikit-learn, scipy) on hand-made predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import precision_recall_fscore_support

from dynconv import stats

CASES = [
    # (y_true, y_pred, num_classes): balanced, a never-predicted class, a class absent from both
    ([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], 3),
    ([0, 1, 2, 3, 0, 1, 2, 3], [0, 0, 0, 3, 0, 1, 1, 3], 4),
    ([0, 0, 1, 1], [0, 1, 1, 1], 4),  # classes 2 and 3 appear nowhere: they count as 0 (sklearn)
    ([2, 2, 2], [0, 1, 2], 3),
]


@pytest.mark.parametrize(("y_true", "y_pred", "k"), CASES)
def test_metrics_match_sklearn(y_true, y_pred, k) -> None:
    ours = stats.classification_metrics(y_true, y_pred, k)
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(k)), average="macro", zero_division=0
    )
    assert ours["precision"] == pytest.approx(p)
    assert ours["recall"] == pytest.approx(r)
    assert ours["f1"] == pytest.approx(f)
    assert ours["accuracy"] == pytest.approx(np.mean(np.array(y_true) == np.array(y_pred)))
    assert (stats.confusion_matrix(y_true, y_pred, k) == sk_confusion(y_true, y_pred, labels=range(k))).all()


def test_metrics_match_sklearn_on_random_predictions() -> None:
    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(50), 9)  # ImageNet-mini's test split: 50 classes x 9
    y_pred = np.where(rng.random(450) < 0.5, y_true, rng.integers(0, 50, 450))
    ours = stats.classification_metrics(y_true, y_pred, 50)
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(50)), average="macro", zero_division=0
    )
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((p, r, f))
    assert ours["recall"] == pytest.approx(ours["accuracy"])  # balanced test set: why the seed's rows agree


def test_labels_out_of_range_are_rejected() -> None:
    with pytest.raises(ValueError, match="outside"):
        stats.confusion_matrix([0, 3], [0, 1], 3)


def test_topk_hits() -> None:
    scores = np.array([[0.1, 0.5, 0.4], [0.9, 0.06, 0.04], [0.2, 0.3, 0.5]])
    assert stats.topk_hits(scores, [2, 2, 0], k=2).tolist() == [True, False, False]
    assert stats.topk_hits(scores, [2, 1, 0], k=5).all()  # k capped at the class count


def test_wilson_interval_known_values() -> None:
    low, high = stats.wilson_interval(244, 450)  # the seed's 54.22 % on 450 images
    assert low == pytest.approx(0.4960, abs=5e-4)
    assert high == pytest.approx(0.5877, abs=5e-4)
    assert (high - low) / 2 == pytest.approx(0.046, abs=1e-3)  # "about ±4.6 points"
    assert stats.wilson_interval(0, 10)[0] == 0.0
    assert stats.wilson_interval(10, 10)[1] == 1.0
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = stats.wilson_interval(3, 10)  # textbook value (Agresti & Coull 1998)
    assert (lo, hi) == pytest.approx((0.1078, 0.6032), abs=5e-4)


def test_wilson_coverage_is_close_to_nominal() -> None:
    rng = np.random.default_rng(1)
    n, p = 60, 0.3
    ks = rng.binomial(n, p, size=2000)
    covered = np.mean([lo <= p <= hi for lo, hi in (stats.wilson_interval(int(k), n) for k in ks)])
    assert 0.92 <= covered <= 0.98


def test_mcnemar_exact_matches_binomial_test() -> None:
    a = np.array([1] * 10 + [1] * 7 + [0] * 2 + [0] * 5, bool)
    b = np.array([1] * 10 + [0] * 7 + [1] * 2 + [0] * 5, bool)
    res = stats.mcnemar(a, b)
    assert (res.b, res.c, res.method) == (7, 2, "exact")
    assert res.p_value == pytest.approx(binomtest(2, 9, 0.5).pvalue)


def test_mcnemar_chi2_for_many_discordant_pairs() -> None:
    b_count, c_count = 40, 20
    a = np.array([1] * b_count + [0] * c_count + [1] * 100, bool)
    b = np.array([0] * b_count + [1] * c_count + [1] * 100, bool)
    res = stats.mcnemar(a, b)
    assert res.method == "chi2"
    from scipy.stats import chi2

    assert res.p_value == pytest.approx(chi2.sf((abs(40 - 20) - 1) ** 2 / 60, 1))
    assert stats.mcnemar(a, a).p_value == 1.0  # identical predictions: nothing to test


def test_mcnemar_needs_paired_vectors() -> None:
    with pytest.raises(ValueError, match="same"):
        stats.mcnemar([True, False], [True])


def test_ratio_ci_contains_truth_and_is_seeded() -> None:
    rng = np.random.default_rng(2)
    b = rng.random(450) < 0.55
    a = np.where(rng.random(450) < 0.85, b, rng.random(450) < 0.47)
    ratio, low, high = stats.ratio_ci(a, b, seed=0)
    assert ratio == pytest.approx(a.mean() / b.mean())
    assert low < ratio < high
    assert stats.ratio_ci(a, b, seed=0) == (ratio, low, high)
    _, ulow, uhigh = stats.ratio_ci(a, b, seed=0, paired=False)
    assert uhigh - ulow > high - low  # pairing removes the shared difficulty of the images


# A known joint distribution of (A right, B right) per test image: P(A) = 0.50, P(B) = 0.60, so the
# true ratio is 0.5 / 0.6; the images' shared difficulty correlates the two (as on one test set).
JOINT = {(1, 1): 0.45, (1, 0): 0.05, (0, 1): 0.15, (0, 0): 0.35}
TRUE_RATIO = 0.50 / 0.60


def _draw_pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    outcomes = list(JOINT)
    picks = rng.choice(len(outcomes), size=n, p=list(JOINT.values()))
    pairs = np.array(outcomes)[picks]
    return pairs[:, 0].astype(bool), pairs[:, 1].astype(bool)


@pytest.mark.parametrize("paired", [True, False])
def test_ratio_ci_covers_the_true_ratio_at_its_level(paired: bool) -> None:
    """Over 300 test sets drawn from a known distribution, the 95 % interval holds the true ratio about
    95 % of the time (binomial sd over 300 draws: 1.3 points), with the width the delta method gives.
    Paired: both models on one test set of 450 (JOINT). Unpaired: independent test sets of 450 and 380."""
    rng = np.random.default_rng(7)
    covered, widths = [], []
    for i in range(300):
        if paired:
            a, b = _draw_pairs(rng, 450)
        else:
            a, b = rng.random(450) < 0.5, rng.random(380) < 0.6
        _, low, high = stats.ratio_ci(a, b, n_boot=1000, seed=i, paired=paired)
        covered.append(low <= TRUE_RATIO <= high)
        widths.append(high - low)
    assert 0.91 <= np.mean(covered) <= 0.985, np.mean(covered)
    # Widths the delta method gives for these distributions: 0.126 paired, 0.206 unpaired.
    expected = 0.126 if paired else 0.206
    assert np.mean(widths) == pytest.approx(expected, rel=0.1)


def test_verdicts() -> None:
    assert stats.verdict(0.003).startswith("significant")
    assert stats.verdict(0.41) == "noise (p=0.41)"
    assert stats.verdict(float("nan")) == "no test"
    assert "0.001" in stats.verdict(1e-6)
    assert stats.threshold_verdict(0.91, 0.97, 0.9) == "met"
    assert stats.threshold_verdict(0.70, 0.89, 0.9) == "not met"
    assert stats.threshold_verdict(0.80, 0.95, 0.9) == "inconclusive"
    assert stats.threshold_verdict(math.nan, 1.0, 0.9) == "inconclusive"


# ------------------------------------------------------------ repeats over seeds (issue 21)


def test_mean_interval_is_the_student_t_interval() -> None:
    from scipy import stats as sp

    from dynconv.stats import mean_interval

    values = [0.61, 0.58, 0.66, 0.63]
    low, high = sp.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sp.sem(values))
    got = mean_interval(values)
    assert (got.n, got.mean, got.low, got.high) == pytest.approx((4, np.mean(values), low, high))
    assert mean_interval([0.5, float("nan"), 0.7]).n == 2, "non-finite repeats are left out"
    one = mean_interval([0.5])
    assert one.mean == 0.5 and np.isnan(one.low) and np.isnan(one.high), "one seed has no interval"
    clipped = mean_interval([0.02, 0.0, 0.3], bounds=(0.0, 1.0))
    assert clipped.low == 0.0 and clipped.high < 1.0


def test_t_interval_covers_the_true_mean_at_its_nominal_rate() -> None:
    from dynconv.stats import mean_interval

    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        ci = mean_interval(rng.normal(0.7, 0.03, size=3))
        hits += ci.low <= 0.7 <= ci.high
    assert 0.93 <= hits / 2000 <= 0.97


def test_welch_matches_scipy_and_hedges_g_its_definition() -> None:
    from scipy import stats as sp

    from dynconv.stats import welch

    a, b = [0.71, 0.74, 0.69, 0.73], [0.66, 0.70, 0.64]
    got = welch(a, b)
    ref = sp.ttest_ind(a, b, equal_var=False)
    assert (got.t, got.p_value, got.df) == pytest.approx((ref.statistic, ref.pvalue, ref.df))
    pooled = np.sqrt(
        ((len(a) - 1) * np.var(a, ddof=1) + (len(b) - 1) * np.var(b, ddof=1)) / (len(a) + len(b) - 2)
    )
    d = (np.mean(a) - np.mean(b)) / pooled
    assert got.hedges_g == pytest.approx(d * (1 - 3 / (4 * (len(a) + len(b)) - 9)))
    assert np.isnan(welch([0.5], [0.4, 0.6]).p_value), "one seed: no test"
    assert welch([0.5, 0.5], [0.5, 0.5]).p_value == 1.0, "identical, spread-free groups: no difference"
