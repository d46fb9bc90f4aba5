"""What an evaluation produces: `SubsetResult` per channel subset, `Evaluation` per model and split.

Plain data with the flat MLflow metric names (`Evaluation.metrics`) and the `evaluation.json` summary;
also how much timing to do (`SpeedConfig`) and the identity of a test split (`test_set_id`).
Imports only numpy and `dynconv.stats`; never torch, Ray or MLflow.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dynconv import stats

DYNAMIC_NOTE = "dynamic model: only the subset's channels, with their indices"
PLAIN_NOTE = "plain model: missing channels zero-filled (after normalisation, i.e. the dataset mean colour)"


@dataclass(frozen=True)
class SpeedConfig:
    """How much timing to do: cheap by default, zero iterations skip a measurement (NaN)."""

    warmup: int = 3
    latency_iters: int = 20
    throughput_batch: int = 256
    throughput_iters: int = 3
    budget_s: float = 10.0  # per measurement; iterations stop early once it is spent
    subsets: tuple[str, ...] | None = None  # the subsets timed (the others NaN); None: every one evaluated


@dataclass
class SubsetResult:
    """Everything measured for one channel subset of one model on one split."""

    subset: str
    n: int
    correct: int
    accuracy: float
    acc_low: float
    acc_high: float
    precision: float
    recall: float
    f1: float
    top5: float
    flops: int
    params: int
    latency_ms: float
    throughput: float
    y_true: np.ndarray = field(repr=False)
    y_pred: np.ndarray = field(repr=False)
    top5_hit: np.ndarray = field(repr=False)
    confusion: np.ndarray = field(repr=False)
    vs_rgb: stats.McNemar | None = None

    @property
    def correct_mask(self) -> np.ndarray:
        return self.y_true == self.y_pred

    def row(self) -> dict[str, Any]:
        """The CSV / MLflow-table row (fractions, not percentages)."""
        return {
            "subset": self.subset,
            "n": self.n,
            "accuracy": self.accuracy,
            "acc_low": self.acc_low,
            "acc_high": self.acc_high,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "top5": self.top5,
            "flops": self.flops,
            "params": self.params,
            "latency_ms": self.latency_ms,
            "throughput": self.throughput,
            "mcnemar_b_vs_rgb": None if self.vs_rgb is None else self.vs_rgb.b,
            "mcnemar_c_vs_rgb": None if self.vs_rgb is None else self.vs_rgb.c,
            "p_vs_rgb": None if self.vs_rgb is None else self.vs_rgb.p_value,
        }


@dataclass
class Evaluation:
    """One model evaluated over channel subsets on one split."""

    model_name: str
    model_args: dict[str, Any]
    dynamic: bool
    split: str
    device: str
    num_classes: int
    class_names: list[str] | None
    test_set_id: str
    data_fingerprint: str
    image_size: int
    results: list[SubsetResult]
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    @property
    def input_note(self) -> str:
        return DYNAMIC_NOTE if self.dynamic else PLAIN_NOTE

    def result(self, subset: str) -> SubsetResult:
        return next(r for r in self.results if r.subset == subset)

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics named by measure and subset, e.g. `acc_RGB`, `flops_R`."""
        out: dict[str, float] = {}
        for r in self.results:
            s = r.subset
            out.update(
                {
                    f"acc_{s}": r.accuracy,
                    f"acc_low_{s}": r.acc_low,
                    f"acc_high_{s}": r.acc_high,
                    f"precision_{s}": r.precision,
                    f"recall_{s}": r.recall,
                    f"f1_{s}": r.f1,
                    f"top5_{s}": r.top5,
                    f"flops_{s}": float(r.flops),
                }
            )
            if math.isfinite(r.latency_ms):
                out[f"latency_ms_{s}"] = r.latency_ms
            if math.isfinite(r.throughput):
                out[f"throughput_{s}"] = r.throughput
        if self.results:
            out["params"] = float(self.results[0].params)
            out["n_test"] = float(self.results[0].n)
        return out

    def summary(self) -> dict[str, Any]:
        """`evaluation.json`: what was evaluated, how, and on which images."""
        return {
            "model": self.model_name,
            "model_args": self.model_args,
            "dynamic": self.dynamic,
            "input": self.input_note,
            "split": self.split,
            "device": self.device,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "image_size": self.image_size,
            "test_set_id": self.test_set_id,
            "data_fingerprint": self.data_fingerprint,
            "n": self.results[0].n if self.results else 0,
            "subsets": [r.subset for r in self.results],
            "speed": self.speed.__dict__,
        }


def test_set_id(files: Sequence[str], labels: np.ndarray) -> str:
    """Identity of an evaluation split: sha256 of its file list (in order) and labels.

    Two evaluations with the same id saw the same images in the same order, so their per-image
    correctness can be paired (McNemar), even at different image sizes. The cache fingerprint is kept
    too, but it also covers the training split, file mtimes and the image size, which do not matter
    for pairing.
    """
    h = hashlib.sha256()
    for name, label in zip(files, np.asarray(labels).tolist(), strict=True):
        h.update(f"{name}\0{label}\n".encode())
    return h.hexdigest()
