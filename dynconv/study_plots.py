"""PNG plots of a whole study: every trial's learning curve, and Optuna's hyperparameter importances.

Like `dynconv.plots`, each function takes plain data and a path and never talks to MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from dynconv.plots import _pyplot, _save


def learning_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    path: Path,
    metric: str = "val_acc",
    best: str | None = None,
    title: str = "",
) -> Path:
    """One line per trial: `metric` against epoch; the best trial drawn thick. Stopped trials end early."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for trial, points in sorted(curves.items()):
        if not points:
            continue
        epochs, values = zip(*sorted(points), strict=True)
        width = 2.6 if trial == best else 1.2
        ax.plot(epochs, values, marker="o", markersize=3, linewidth=width, label=trial)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} of every trial (thick: best)")
    ax.grid(alpha=0.3)
    if len(curves) <= 12:
        ax.legend(fontsize=7, title="trial", title_fontsize=7)
    return _save(fig, path)


def param_importances(importances: Mapping[str, float], path: Path, title: str = "") -> Path:
    """Horizontal bars of Optuna's importance per searched hyperparameter (they sum to 1)."""
    plt = _pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.6 * len(names) + 1.4))
    ax.barh(names, [importances[n] for n in names], color="#4c72b0")
    for i, n in enumerate(names):
        ax.text(importances[n], i, f" {importances[n]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("importance (optuna.importance, default evaluator)")
    ax.set_title(title or "hyperparameter importance")
    return _save(fig, path)
