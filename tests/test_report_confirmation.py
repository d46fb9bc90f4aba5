"""The report's comparisons over seeds: two studies' champions compared on their per-seed test
accuracies (Welch's t-test), and the single-seed caveat where a study was not confirmed."""

from __future__ import annotations

import pytest
from scipy import stats as sp

from dynconv.report.confirmation import champion_seeds, compare_over_seeds


def confirmation(accs: list[float], other: list[float]) -> dict:
    """A confirmation.json with a champion (seeds `accs` on RGB) and a runner-up (`other`)."""

    def config(run: str, values: list[float]) -> dict:
        return {
            "source_run_id": run,
            "seeds": [{"seed": i, "test_acc": {"RGB": v}} for i, v in enumerate(values)],
        }

    return {"champion": "a", "configurations": [config("b", other), config("a", accs)]}


def test_the_champions_seeds_are_compared_with_welch() -> None:
    a, b = [0.71, 0.74, 0.69], [0.60, 0.62, 0.66]
    assert champion_seeds(confirmation(a, [0.1, 0.1]), "RGB") == a, (
        "the champion's seeds, not the runner-up's"
    )
    text = compare_over_seeds(confirmation(a, [0.0, 0.0]), confirmation(b, [0.0, 0.0]), "RGB")
    p = sp.ttest_ind(a, b, equal_var=False).pvalue
    assert text.startswith(f"{100 * (sum(a) / 3 - sum(b) / 3):+.1f} points over seeds")
    assert f"p={p:.2g}" in text and "Welch's t-test, 3 vs 3 seeds" in text


@pytest.mark.parametrize("missing", ["none", "one seed"])
def test_without_two_seeds_on_both_sides_there_is_no_comparison(missing: str) -> None:
    other = None if missing == "none" else confirmation([0.7], [0.6])
    assert compare_over_seeds(confirmation([0.7, 0.72], [0.6]), other, "RGB") == ""
