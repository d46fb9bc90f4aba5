"""Tune callback, run in the study driver: closes each trial's MLflow run with the trial's real outcome."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback

from dynconv import tracking
from dynconv.train.ray_session import CHECKPOINT_FILE
from dynconv.tune.incomplete import logged_epochs


class TrialRunCloser(Callback):
    """FINISHED when a trial ran all epochs, KILLED when the scheduler stopped it, FAILED on error.

    The trial's last Train checkpoint (its path arrives in the result as `checkpoint_path`) is logged
    to the trial's run as the final checkpoint artifact.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, epochs: int) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.epochs = epochs

    def _run_id(self, trial: Any) -> str | None:
        runs = tracking.find_runs(
            self.tracking_uri, self.experiment_id, role="trial", trial_id=trial.trial_id
        )
        runs = [r for r in runs if r.data.tags.get(tracking.TAG_PARENT) == self.parent_run_id]
        return runs[0].info.run_id if runs else None

    def _close(self, trial: Any, status: str) -> None:
        run_id = self._run_id(trial)
        if run_id is None:
            return
        result = trial.last_result or {}
        ckpt = result.get("checkpoint_path")
        if ckpt and (Path(ckpt) / CHECKPOINT_FILE).is_file():
            tracking.log_artifact(self.tracking_uri, run_id, Path(ckpt) / CHECKPOINT_FILE, "checkpoint")
        if "val_acc" in result:
            tracking.set_tags(
                self.tracking_uri,
                run_id,
                {"dynconv.epochs_done": int(result.get("epoch", 0)), "dynconv.outcome": status.lower()},
            )
        tracking.end_run(self.tracking_uri, run_id, status)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = int((trial.last_result or {}).get("epoch", 0))
        if done < self.epochs:  # resumed from a final checkpoint (e.g. after a SIGKILLed driver): no new
            done = max(done, logged_epochs(self.tracking_uri, self._run_id(trial)))  # report reached Tune
        self._close(trial, "FINISHED" if done >= self.epochs else "KILLED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FAILED")
