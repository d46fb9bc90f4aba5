"""PNG plots for evaluations and reports (matplotlib, Agg backend: no display needed, safe in workers).

Every function takes plain Python/numpy data and a path, writes one PNG and returns the path, so the
callers (evaluation, report, the study run's summary) decide what to plot and the plots never talk to
MLflow themselves.

Imports numpy and matplotlib (lazily); never MLflow: callers log the files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    """matplotlib.pyplot on the Agg backend (imported lazily: it is slow and needs no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def accuracy_by_subset(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Bar chart of accuracy per channel subset with 95 % CI error bars.

    ``rows``: dicts with ``subset``, ``accuracy``, ``acc_low``, ``acc_high`` (fractions).
    """
    plt = _pyplot()
    names = [r["subset"] for r in rows]
    acc = np.array([r["accuracy"] for r in rows]) * 100
    low = np.array([r["acc_low"] for r in rows]) * 100
    high = np.array([r["acc_high"] for r in rows]) * 100
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(rows), 3.6))
    ax.bar(names, acc, color="#4c72b0", yerr=[acc - low, high - acc], capsize=4, ecolor="black")
    for x, a in enumerate(acc):
        ax.text(x, a / 2, f"{a:.1f}", ha="center", va="center", color="white", fontsize=8)
    ax.set_ylabel("accuracy (%), 95 % Wilson CI")
    ax.set_xlabel("input channels")
    ax.set_ylim(0, min(100, max(high.max(initial=0) * 1.1, 10)))
    ax.set_title(title or "Accuracy by channel subset")
    return _save(fig, path)


def accuracy_by_subset_per_model(
    series: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, title: str = ""
) -> Path:
    """Accuracy per channel subset, one line per model, with 95 % CI error bars.

    ``series``: {model label: [{"subset", "accuracy", "acc_low", "acc_high"} (fractions), ...]}.
    """
    plt = _pyplot()
    order = ("RGB", "RG", "RB", "GB", "R", "G", "B")
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for i, (label, rows) in enumerate(series.items()):
        rows = sorted(rows, key=lambda r: order.index(r["subset"]) if r["subset"] in order else 99)
        x = np.array([order.index(r["subset"]) for r in rows]) + (i - (len(series) - 1) / 2) * 0.06
        acc = np.array([r["accuracy"] for r in rows]) * 100
        low = np.array([r["acc_low"] for r in rows]) * 100
        high = np.array([r["acc_high"] for r in rows]) * 100
        ax.errorbar(x, acc, yerr=[acc - low, high - acc], marker="o", markersize=4, capsize=3, label=label)
    ax.set_xticks(range(len(order)), order)
    ax.set_xlabel("input channels")
    ax.set_ylabel("accuracy (%), 95 % Wilson CI")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Accuracy by channel subset, per model")
    if series:
        ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def confusion_grid(
    confusions: Mapping[str, np.ndarray],
    path: Path,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Row-normalised confusion matrices, one panel per subset (rows: true class, columns: predicted)."""
    plt = _pyplot()
    n = len(confusions)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False, layout="constrained"
    )
    image = None
    for ax, (name, cm) in zip(axes.flat, confusions.items(), strict=False):
        cm = np.asarray(cm, dtype=np.float64)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(norm, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        ax.set_title(name)
        k = cm.shape[0]
        if class_names is not None and k <= 12:
            short = [str(c)[:10] for c in class_names]
            ax.set_xticks(range(k), short, rotation=90, fontsize=6)
            ax.set_yticks(range(k), short, fontsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("predicted")
        if any(ax is first for first in axes[:, 0]):
            ax.set_ylabel("true")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.7, label="fraction of true class")
    fig.suptitle(title or "Confusion matrices (row-normalised)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curves(curves: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], path: Path) -> Path:
    """Validation accuracy and training loss per epoch, one line per trial.

    ``curves``: {trial label: {"val_acc": [(epoch, value), ...], "train_loss": [...]}}.
    """
    plt = _pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, metrics in curves.items():
        for ax, key in ((ax_acc, "val_acc"), (ax_loss, "train_loss")):
            points = sorted(metrics.get(key, []))
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o", markersize=3, label=label)
    from matplotlib.ticker import MaxNLocator

    ax_acc.set_title("validation accuracy")
    ax_loss.set_title("training loss")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(fontsize=7)
    return _save(fig, path)


def hyperparameter_scatter(points: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Best validation accuracy of every trial against its learning rate (log axis) and augment strength.

    ``points``: dicts with ``lr``, ``augment_strength``, ``val_acc`` and ``outcome`` (the trial's
    `dynconv.outcome`: finished, stopped_early, ...; a marker each).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    markers = {
        "finished": ("o", "#4c72b0"),
        "stopped_early": ("v", "#55a868"),
        "interrupted": ("x", "#dd8452"),
    }
    for outcome in sorted({p.get("outcome", "") for p in points}):
        group = [p for p in points if p.get("outcome", "") == outcome and p.get("val_acc") is not None]
        marker, colour = markers.get(outcome, ("s", "#999999"))
        for ax, key in zip(axes, ("lr", "augment_strength"), strict=True):
            xy = [(p[key], p["val_acc"]) for p in group if p.get(key) is not None]
            if xy:
                xs, ys = zip(*xy, strict=True)
                ax.scatter(xs, ys, marker=marker, color=colour, label=outcome.replace("_", " ") or "?")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("learning rate")
    axes[1].set_xlabel("augment strength")
    axes[0].set_ylabel("best validation accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=7, title="trial outcome")
    fig.suptitle("Search: validation accuracy of every trial")
    return _save(fig, path)


def pareto(points: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Accuracy against FLOPs (log axis) over model x subset; the Pareto front is drawn as a step line.

    ``points``: dicts with ``label`` (model), ``subset``, ``flops``, ``accuracy``, optional ``acc_low``,
    ``acc_high`` and ``pareto`` (bool).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    labels = sorted({p["label"] for p in points})
    colours = plt.get_cmap("tab10")
    for i, label in enumerate(labels):
        group = [p for p in points if p["label"] == label and p.get("flops")]
        if not group:
            continue
        xs = np.array([p["flops"] for p in group], dtype=float)
        ys = np.array([p["accuracy"] for p in group]) * 100
        err = None
        if all("acc_low" in p and "acc_high" in p for p in group):
            err = [
                ys - np.array([p["acc_low"] for p in group]) * 100,
                np.array([p["acc_high"] for p in group]) * 100 - ys,
            ]
        ax.errorbar(xs, ys, yerr=err, fmt="o", color=colours(i % 10), label=label, capsize=2, alpha=0.85)
        for p, x, y in zip(group, xs, ys, strict=True):
            ax.annotate(p["subset"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = sorted((p for p in points if p.get("pareto") and p.get("flops")), key=lambda p: p["flops"])
    if front:
        ax.step(
            [p["flops"] for p in front],
            [p["accuracy"] * 100 for p in front],
            where="post",
            color="black",
            linestyle="--",
            linewidth=1,
            label="Pareto front",
        )
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per image (fvcore, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or "Accuracy vs FLOPs over model x channel subset")
    if points:
        ax.legend(fontsize=7)
    return _save(fig, path)


def study_learning_curves(
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
