"""The Tune callback that prints each trial event on the study driver's console."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from dynconv.spec.metrics import diverged, ended_by_error, trial_outcome


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
        if math.isfinite(value) and self._better(float(value)):
            self.best = (float(value), trial.trial_id)
        speed = result.get("train_images_per_second")
        rate = f"  {speed:6.0f} img/s" if speed else ""
        best = f"{self.best[0]:.4f} ({self.best[1]})" if self.best else "-"
        last = int(result["epoch"]) >= self.epochs
        if last:
            self.announced.add(trial.trial_id)
        self._print(
            trial,
            f"epoch {int(result['epoch'])}/{self.epochs}  {self.metric} {value:.4f}{rate}"
            f"   best so far {best}{'   finished' if last else ''}",
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        done = int(last.get("epoch", 0))
        value = last.get(self.metric)
        tail = f", last {self.metric} {value:.4f}" if value is not None else ""
        outcome = trial_outcome(last, done, self.epochs)
        if outcome == "failed":
            self._print(trial, f"FAILED: {ended_by_error(last)}  (not retried: it would fail the same way)")
        elif outcome == "diverged":
            loss = diverged(last)
            self._print(trial, f"DIVERGED at epoch {done}: {loss} {last[loss]}; not ranked, not evaluated")
        elif outcome == "finished":
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
