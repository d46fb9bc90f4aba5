"""The study's plots label what they show: the search scatter marks each trial by its outcome, and a plot
with nothing to label draws no empty legend (matplotlib warns about one)."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.axes
import pytest

from dynconv import plots


@pytest.fixture
def legends(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The labels of every legend drawn."""
    drawn: list[list[str]] = []
    legend = matplotlib.axes.Axes.legend

    def spy(self, *args, **kwargs):
        drawn.append(self.get_legend_handles_labels()[1])
        return legend(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "legend", spy)
    return drawn


def test_the_search_scatter_marks_trials_by_outcome(tmp_path: Path, legends: list[list[str]]) -> None:
    points = [
        {"lr": 1e-3, "augment_strength": 0.2, "val_acc": 0.5, "outcome": "finished"},
        {"lr": 1e-2, "augment_strength": 0.4, "val_acc": 0.3, "outcome": "stopped_early"},
        {"lr": 1e-1, "augment_strength": 0.6, "val_acc": 0.2, "outcome": "stopped_early"},
        {"lr": 1e-4, "augment_strength": 0.1, "val_acc": None, "outcome": "failed"},  # nothing to plot
    ]
    assert plots.hyperparameter_scatter(points, tmp_path / "search.png").stat().st_size > 0
    assert legends == [["finished", "stopped early"]]


def test_plots_with_nothing_labelled_draw_no_legend(tmp_path: Path, legends: list[list[str]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.hyperparameter_scatter(
            [{"lr": 1e-3, "augment_strength": 0.2, "val_acc": None, "outcome": "failed"}], tmp_path / "s.png"
        )
        plots.learning_curves({"trial 1": {"val_acc": [], "train_loss": []}}, tmp_path / "c.png")
    assert legends == []
