"""Robustness during training (issue 14): per-subset validation, the weighted objective, onecycle.

No Ray: `fit` + `LocalSession` on the shared 3-class, 16 px synthetic set (a few seconds on 2 cores).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dynconv.data.channels import SUBSET_NAMES
from dynconv.spec import JobSpec
from dynconv.train.optim import build_scheduler, lr_factor


def _spec(dataset: Path, tmp: Path, model: str, args: dict[str, Any], **train: Any) -> JobSpec:
    search = train.pop("_search", {})
    return JobSpec.model_validate(
        {
            "study": "robust",
            "model": {"name": model, "args": args},
            "data": {"root": str(dataset), "cache_dir": str(tmp / "cache"), "image_size": 16},
            "train": {"epochs": 1, "batch_size": 16, "channel_drop": 0.3, "schedule": "constant", **train},
            "search": {
                "space": {
                    "lr": {"type": "loguniform", "low": 0.01, "high": 0.1},
                    "augment_strength": {"type": "uniform", "low": 0.0, "high": 0.5},
                },
                **search,
            },
            "scheduler": {"name": "none"},
        }
    )


def _fit(spec: JobSpec):
    from dynconv.spec.data import prepare_for_spec
    from dynconv.train.loop import fit
    from dynconv.train.session import LocalSession

    torch.set_num_threads(1)
    data = prepare_for_spec(spec, progress=False)
    session = LocalSession(device="cpu")
    fit(spec, session, data)
    return session, data


@pytest.mark.parametrize(
    ("model", "args"),
    [("resnet18_dynamic", {"stem": "small", "width": 4}), ("resnet18", {"stem": "small", "width": 4})],
)
def test_subset_metrics_equal_evaluation_on_the_same_weights(tiny_dataset, tmp_path, model, args) -> None:
    """val_acc_<S> is what evaluation's `predict` measures on the val split with the epoch's weights."""
    from dynconv.evaluation.model import model_from_checkpoint
    from dynconv.evaluation.predict import predict

    session, data = _fit(_spec(tiny_dataset, tmp_path, model, args))
    metrics = session.history[-1]
    names = [f"val_acc_{s}" for s in SUBSET_NAMES]
    assert set(names) <= set(metrics)
    assert metrics["val_acc_RGB"] == metrics["val_acc"]
    assert metrics["val_acc_worst"] == min(metrics[n] for n in names)
    assert metrics["val_subsets_epoch"] == 1

    net = model_from_checkpoint(session.last_state)
    val = data.split("val")
    labels = np.asarray(val.labels)
    for subset in SUBSET_NAMES:
        pred, _ = predict(net, val.images, labels, subset, net.dynamic, torch.device("cpu"))
        assert metrics[f"val_acc_{subset}"] == pytest.approx(float((pred == labels).mean()), abs=1e-9)
    assert len({round(metrics[n], 6) for n in names}) > 1, "subsets must not all score the same"


def test_subset_every_k_carries_values_and_weighted_objective(tiny_dataset, tmp_path) -> None:
    """Every 2nd epoch of 3: measured at epochs 1 and 3, carried at 2; `objective` = the weighted sum."""
    spec = _spec(
        tiny_dataset,
        tmp_path,
        "resnet18_dynamic",
        {"stem": "small", "width": 4},
        epochs=3,
        subset_val_every=2,
        val_subsets=["RGB", "R", "GB"],
        _search={"metric": {"val_acc": 0.25, "val_acc_worst": 0.75}},
    )
    session, _ = _fit(spec)
    h = session.history
    assert [m["val_subsets_epoch"] for m in h] == [1, 1, 3]
    assert h[1]["val_acc_R"] == h[0]["val_acc_R"] and h[1]["val_acc_worst"] == h[0]["val_acc_worst"]
    assert "val_acc_B" not in h[0]
    for m in h:
        assert m["objective"] == pytest.approx(0.25 * m["val_acc"] + 0.75 * m["val_acc_worst"])


def test_onecycle_matches_torch_one_cycle_lr() -> None:
    """Peak after the warm-up, cosine on both sides, ends near 0; equal to torch's OneCycleLR."""
    total, warmup = 50, 15
    ours = [lr_factor(s, total, warmup, "onecycle", 1 / (25 * 1e4)) for s in range(total)]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1.0, total_steps=total, pct_start=warmup / total, cycle_momentum=False
    )
    theirs = []
    for _ in range(total):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-9)
    assert int(np.argmax(ours)) == warmup - 1 and ours[warmup - 1] == pytest.approx(1.0)
    assert ours[0] == pytest.approx(1 / 25)
    assert ours[-1] < 1e-5


def test_onecycle_scheduler_over_a_run_steps_per_batch() -> None:
    """build_scheduler: 4 epochs x 10 steps, warm-up 1.2 epochs -> peak lr at step 11, ~0 at the last."""
    spec = JobSpec.model_validate(
        {
            "study": "t",
            "model": {"name": "resnet18"},
            "train": {
                "epochs": 4,
                "batch_size": 8,
                "lr": 0.2,
                "schedule": {"name": "onecycle", "warmup_epochs": 1.2},
            },
            "search": {
                "space": {
                    "lr": {"type": "loguniform", "low": 0.01, "high": 0.5},
                    "augment_strength": {"type": "uniform", "low": 0.0, "high": 1.0},
                }
            },
        }
    )
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=spec.train.lr)
    sched = build_scheduler(spec.train, opt, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert int(np.argmax(lrs)) == 11 and max(lrs) == pytest.approx(0.2)
    assert lrs[0] == pytest.approx(0.2 / 25) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(math.isfinite(v) for v in lrs)


class _Checkpoint:
    """What `latest_state` uses of a Ray checkpoint: `.path` and `.as_directory()` (no Ray here)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def as_directory(self):
        import contextlib

        return contextlib.nullcontext(self.path)


def test_a_trial_whose_every_checkpoint_is_damaged_starts_again_with_one_warning(tmp_path, caplog) -> None:
    """Torch refuses a damaged file with advice to load it unsafely (`weights_only=False`); the trial
    used to fail on it every retry. Now: start from epoch 1, one warning, nothing loaded unsafely."""
    from dynconv.train.ray_session import CHECKPOINT_FILE, latest_state

    dirs = [tmp_path / "trial" / f"checkpoint_00000{i}" for i in range(3)]
    for i, d in enumerate(dirs):
        d.mkdir(parents=True)
        damage = [b"\x80\x02garbage" * 10, b"", b"PK\x03\x04" + bytes(64)][i]  # pickle, empty, zip-like
        (d / CHECKPOINT_FILE).write_bytes(damage)
    torch.save({"not": "a training state"}, tmp_path / "trial" / "other.pt")
    with caplog.at_level("WARNING", logger="dynconv.train.ray_session"):
        pattern = str(tmp_path / "trial" / "checkpoint_*" / CHECKPOINT_FILE)
        state = latest_state(_Checkpoint(dirs[-1]), [pattern])
    assert state is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "training starts again from epoch 1" in warnings[0], warnings
    assert "3 found" in warnings[0] and "weights_only" not in warnings[0]


def test_a_damaged_registered_checkpoint_falls_back_to_a_readable_one(tmp_path, caplog) -> None:
    from dynconv.train.ray_session import CHECKPOINT_FILE, latest_state

    good, bad = tmp_path / "checkpoint_000000", tmp_path / "checkpoint_000001"
    good.mkdir(), bad.mkdir()
    torch.save({"epoch": 1, "history": []}, good / CHECKPOINT_FILE)
    (bad / CHECKPOINT_FILE).write_bytes(b"\x80\x02garbage")
    with caplog.at_level("WARNING", logger="dynconv.train.ray_session"):
        state = latest_state(_Checkpoint(bad), [str(tmp_path / "checkpoint_*" / CHECKPOINT_FILE)])
    assert state is not None and state["epoch"] == 1 and not caplog.records
