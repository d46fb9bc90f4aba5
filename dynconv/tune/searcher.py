"""The study's searcher: Ray Tune's OptunaSearch, made to know a trial's epochs (built by
`dynconv.tune.search.build_searcher`)."""

from __future__ import annotations

import math
from typing import Any

from optuna.trial import TrialState, create_trial
from ray.tune.search.optuna import OptunaSearch

from dynconv.spec.metrics import trial_outcome


class EpochOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, told what a trial's epochs are.

    - Intermediate values are reported to Optuna at step = `epoch`, which stays monotonic when a trial
      is retried or a study resumed (Tune's `training_iteration`, which OptunaSearch uses, restarts at 1,
      and Optuna ignores a step reported twice).
    - A trial the scheduler stopped before its last epoch is told to Optuna as PRUNED (at its last
      reported value), not COMPLETE as if its partial value were final: TPE then ranks it below the
      trials that ran all epochs, as the study's own ranking does. So is a trial that diverged
      (`dynconv.spec.metrics.diverged`), whatever epoch it reached: its values are not to be trusted, and
      a NaN told as a value would leave the Optuna trial running forever.

    - A trial ended by one of dynconv's own errors (`dynconv.spec.metrics.ended_by_error`: it reports the
      error instead of raising it, so that Tune does not retry it) is told to Optuna as FAIL.

    - An earlier study's trials (`--warm-start`, `dynconv.tune.warm_start`) come in through Ray's own
      `points_to_evaluate` + `evaluated_rewards`, added to the Optuna study as COMPLETE trials when the
      space is known (`set_search_properties`), before the first suggestion. Ray 2.60 hands a
      multi-objective reward (a list) to Optuna as one `value`, which Optuna refuses (TypeError);
      here it goes in as `values`.

    Its state (the Optuna study with every trial told so far) is saved and restored by Tune with the
    experiment, so a resumed study suggests from the whole history.
    """

    def __init__(self, *args: Any, epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epochs = epochs
        self.reported_epochs: dict[str, int] = {}  # trial id -> the last epoch told to Optuna

    @property
    def optuna_study(self) -> Any:
        """The Optuna study behind the searcher: every trial it suggested and what it was told."""
        return self._ot_study

    def add_evaluated_point(
        self,
        parameters: dict,
        value: Any,
        error: bool = False,
        pruned: bool = False,
        intermediate_values: list[float] | None = None,
    ) -> None:
        if not isinstance(value, (list, tuple)) or error or pruned or not isinstance(self._space, dict):
            super().add_evaluated_point(parameters, value, error, pruned, intermediate_values)  # or its error
            return
        trial = create_trial(values=[float(v) for v in value], params=parameters, distributions=self._space)
        self._ot_study.add_trial(trial)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return  # Optuna takes no intermediate values of several objectives
        if self.metric in result and "epoch" in result and math.isfinite(result[self.metric]):
            epoch = int(result["epoch"])
            if epoch > self.reported_epochs.get(trial_id, 0):  # a trial resumed from its last checkpoint
                self._ot_trials[trial_id].report(result[self.metric], epoch)  # reports that epoch again
                self.reported_epochs[trial_id] = epoch

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ended = (
            None
            if error or result is None
            else trial_outcome(result, int(result.get("epoch", 0)), self.epochs)
        )
        if ended == "failed" and trial_id not in self._completed_trials:
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.FAIL)  # its NaNs are no value
            self._completed_trials.add(trial_id)
            return
        stopped = (
            ended in ("diverged", "stopped_early")
            and not isinstance(self.metric, list)
            and result.get(self.metric) is not None
        )
        if not stopped or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
