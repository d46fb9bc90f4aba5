"""Tune callbacks, run in the study driver: close each trial's MLflow run; print each trial event."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from dynconv import tracking
from dynconv.train.ray_session import CHECKPOINT_FILE
from dynconv.tune.incomplete import logged_epochs


def _tune_checkpoint_path(trial: Any, result: dict[str, Any]) -> str | None:
    """The checkpoint a trial training in its Tune actor reported with `result` (Tune's own checkpoint)."""
    name = result.get("checkpoint_dir_name")
    return str(Path(trial.path) / name) if name and trial.path else None


class TrialRunCloser(Callback):
    """FINISHED when a trial ran all epochs, KILLED when the scheduler stopped it, FAILED on error.

    The trial's last checkpoint is logged to the trial's run as the final checkpoint artifact: a Train
    checkpoint (its path arrives in the result as `checkpoint_path`) or, for a trial that trained in its
    Tune actor, the Tune checkpoint named by the result's `checkpoint_dir_name`.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, epochs: int) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.epochs = epochs
        self._reported: set[str] = set()  # trials that sent Tune a result in this driver's lifetime

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
        ckpt = result.get("checkpoint_path") or _tune_checkpoint_path(trial, result)
        if ckpt and (Path(ckpt) / CHECKPOINT_FILE).is_file():
            tracking.log_artifact(self.tracking_uri, run_id, Path(ckpt) / CHECKPOINT_FILE, "checkpoint")
        if "val_acc" in result:
            tracking.set_tags(
                self.tracking_uri,
                run_id,
                {"dynconv.epochs_done": int(result.get("epoch", 0)), "dynconv.outcome": status.lower()},
            )
        tracking.end_run(self.tracking_uri, run_id, status)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._reported.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = int((trial.last_result or {}).get("epoch", 0))
        if done < self.epochs and trial.trial_id not in self._reported:
            # Resumed from a final checkpoint (e.g. after a SIGKILLed driver whose orphaned worker trained
            # to the end): no new report reached Tune, so count the epochs its MLflow run holds. A trial
            # the scheduler stopped did report here, and stays KILLED even if its worker logged the
            # epoch in flight.
            done = max(done, logged_epochs(self.tracking_uri, self._run_id(trial)))
        self._close(trial, "FINISHED" if done >= self.epochs else "KILLED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FAILED")


class ConsoleReporter(Callback):
    """One console line per trial event: start, each epoch (metric, img/s, best so far), stop, end, error.

    Works from Tune's callback events only, so it does not care whether a trial runs a TorchTrainer or
    trains in its trial actor. A failed trial gets one line: the exception's last line and its error file.
    """

    def __init__(self, epochs: int, metric: str, mode: str, keys: list[str], stream: Any = None) -> None:
        self.epochs, self.metric, self.mode, self.keys = epochs, metric, mode, keys
        self.stream = stream
        self.t0 = time.monotonic()
        self.best: tuple[float, str] | None = None
        self.announced: set[str] = set()  # trials whose last epoch line already said "finished"

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment state
        return {**self.__dict__, "stream": None}

    def __setstate__(self, state: dict[str, Any]) -> None:  # a resumed study counts time from its restart
        self.__dict__.update(state, t0=time.monotonic())

    def _print(self, trial: Any, text: str) -> None:
        elapsed = int(time.monotonic() - self.t0)
        line = f"[{elapsed // 60:2d}:{elapsed % 60:02d}] trial {trial.trial_id}  {text}"
        print(line, file=self.stream or sys.stdout, flush=True)

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best[0] if self.mode == "max" else value < self.best[0]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = "  ".join(_fmt_param(k, trial.config.get(k)) for k in self.keys)
        self._print(trial, f"started    {params}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if value is None or "epoch" not in result:
            return
        if self._better(float(value)):
            self.best = (float(value), trial.trial_id)
        speed = result.get("train_images_per_second")
        rate = f"  {speed:6.0f} img/s" if speed else ""
        best_value, best_trial = self.best
        last = int(result["epoch"]) >= self.epochs
        if last:
            self.announced.add(trial.trial_id)
        self._print(
            trial,
            f"epoch {int(result['epoch'])}/{self.epochs}  {self.metric} {value:.4f}{rate}"
            f"   best so far {best_value:.4f} ({best_trial}){'   finished' if last else ''}",
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        done = int(last.get("epoch", 0))
        value = last.get(self.metric)
        tail = f", last {self.metric} {value:.4f}" if value is not None else ""
        if done >= self.epochs:
            if trial.trial_id not in self.announced:  # else its last epoch line said so
                self._print(trial, f"finished   {done} epochs{tail}")
        else:
            self._print(trial, f"stopped by the scheduler (ASHA) after epoch {done}/{self.epochs}{tail}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._print(trial, f"failed, retrying: {_last_error_line(trial)}  (log: {trial.error_file})")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._print(trial, f"FAILED: {_last_error_line(trial)}  (full log: {trial.error_file})")


def _fmt_param(key: str, value: Any) -> str:
    return f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"


def _last_error_line(trial: Any) -> str:
    """The exception line of a trial's error file (Tune writes the full traceback there)."""
    path = trial.error_file
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()] if path else []
    except OSError:
        lines = []
    return lines[-1][:300] if lines else "unknown error (no error file)"
