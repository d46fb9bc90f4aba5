"""The study's MLflow record of its trials, written by the study driver alone, from Tune's events.

`TrialRecorder` is a Tune callback (as Ray's own `MLflowLoggerCallback` is; trials only report to
Tune): it creates a trial's child run when the trial starts, logs each result at step = epoch, logs the
final checkpoint and closes the run with the trial's outcome (`dynconv.outcome`: finished,
stopped_early, failed, diverged, interrupted, orphaned, incomplete). Writes go through a
`QueuedWriter`, so Tune's loop never waits for MLflow; a permanent fault of the store stops the study
(`stopper`). After a killed driver, `--resume` restores the callback and its first step reconciles
MLflow with what Tune persisted (adopts, closes or fills in runs from the checkpoint's `history`).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback, Stopper
from ray.tune.result import AUTO_RESULT_KEYS

from dynconv.errors import Fault, one_line, world_fault
from dynconv.spec import JobSpec
from dynconv.spec.metrics import ended_by_error, ended_by_fault, trial_outcome
from dynconv.tracking.faults import StoreWatch
from dynconv.tracking.find import metric_history
from dynconv.tracking.layout import (
    TAG_CONFIRMS,
    TAG_EPOCHS_DONE,
    TAG_ERROR,
    TAG_FAILURE,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_STUDY,
    TAG_TRIAL_ID,
    end_run,
    ensure_child_run,
    find_runs,
    log_artifact,
    log_metrics,
    log_params,
    run_params,
    set_tags,
)
from dynconv.tracking.retry import QueuedWriter
from dynconv.tracking.store import client
from dynconv.train.ray_session import CHECKPOINT_FILE, read_state
from dynconv.tune.trial import CONFIRMS, train_params

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 300.0
"""How long the end of a study waits for MLflow to take the writes still queued (an outage)."""
TUNE_KEYS = frozenset({*AUTO_RESULT_KEYS, "done", "trial_id", "experiment_tag", "should_checkpoint"})
"""Keys Tune adds to every result; everything else numeric is a metric the trial reported."""


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics a trial reported in `result` (Tune's own bookkeeping keys left out)."""
    return {
        k: float(v)
        for k, v in result.items()
        if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def checkpoint_dir(trial: Any, result: dict[str, Any]) -> Path | None:
    """The checkpoint reported with `result`: a Ray Train checkpoint (`checkpoint_path`, forwarded by
    `TuneReportCallback`) or the Tune checkpoint of a trial training in its actor (`checkpoint_dir_name`)."""
    if result.get("checkpoint_path"):
        return Path(result["checkpoint_path"])
    name = result.get("checkpoint_dir_name")
    return Path(trial.path) / name if name and trial.path else None


class TrialRecorder(Callback):
    """The only writer of a study's trial runs (see the module doc)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        spec: JobSpec,
        num_classes: int,
        role: str = "trial",
        run_tags: dict[str, str] | None = None,
    ) -> None:
        self.uri = tracking_uri
        self.role = role  # "trial" for the search, "confirmation" for the runs retraining its best
        self.run_tags = dict(run_tags or {})  # set on every run it creates
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.spec_json = spec.to_json_dict()
        self.storage = spec.storage_uri()
        self.epochs = spec.train.epochs
        self.num_classes = num_classes
        self._known: set[str] = set()  # trials with a run (created, or queued to be)
        self._runs: dict[str, str] = {}  # trial id -> run id (filled by the writer thread)
        self._logged: dict[str, int] = {}  # trial id -> the highest epoch handed to the writer
        self._closed: set[str] = set()
        self._reconciled = False
        self._facts: dict[str, float] | None = None  # FLOPs and parameters: one model for every trial
        self._writer: QueuedWriter | None = None
        self._trial_fault: Fault | None = None  # a fault of the world a trial met (a full disk)
        _ = self.writer  # the store's file is the one the study opened now (`StoreWatch`)

    def __getstate__(self) -> dict[str, Any]:  # pickled with the Tuner: no thread, no run ids yet
        return {**self.__dict__, "_writer": None}

    @property
    def writer(self) -> QueuedWriter:
        if self._writer is None:
            self._writer = QueuedWriter(StoreWatch(self.uri))
        return self._writer

    @property
    def fault(self) -> Fault | None:
        """The permanent fault that stops the study: the store's (the writer stopped) or a trial's."""
        return self.writer.fatal or self._trial_fault

    def stopper(self) -> Stopper:
        """A Tune stopper that ends the whole study once `fault` is set (see `StopOnFault`)."""
        return StopOnFault(self)

    def _submit(self, trial_id: str, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Queue `fn(uri, <the trial's run id>, *args)`; the run id is looked up when the write runs."""

        def call() -> None:
            fn(self.uri, self._runs[trial_id], *args, **kwargs)

        self.writer.submit(trial_id, call, f"{what} of trial {trial_id}")

    # -- Tune events ---------------------------------------------------------------------------

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._reconciled:
            self._reconciled = True
            self._reconcile(trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        self._closed.discard(tid)
        if tid in self._known:  # a retried or resumed trial continues its run
            self._submit(tid, "reopen", _set_status, "RUNNING")
            return
        self._known.add(tid)
        self.writer.submit(tid, lambda: self._create_run(trial), f"run of trial {tid}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self._trial_fault is None:
            self._trial_fault = ended_by_fault(result, trial.trial_id)
        if "epoch" not in result or ended_by_error(result) is not None:  # the error is logged at close
            return
        tid, epoch = trial.trial_id, int(result["epoch"])
        done = self._logged.get(tid, 0)
        if epoch <= done:  # heard again: a trial resumed from its final checkpoint reports it once more
            return
        if epoch > done + 1:  # epochs this driver never saw (a killed driver's orphaned trial trained them)
            self._fill_in(trial, checkpoint_dir(trial, result), done, epoch - 1)
        stamp = int(time.time() * 1000)  # when the driver heard of it, not when MLflow took it
        metrics = trial_metrics(result)
        self._submit(tid, f"epoch {epoch}", log_metrics, metrics, step=epoch, timestamp_ms=stamp)
        self._logged[tid] = max(done, epoch)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, failed=False)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._note_fault(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._note_fault(trial)
        self._close(trial, failed=True)

    def _note_fault(self, trial: Any) -> None:
        """A trial that raised a fault of the world (a full disk in a DDP worker): no retry can help."""
        if self._trial_fault is not None:
            return
        try:
            error = trial.get_pickled_error()
        except (OSError, EOFError, ValueError):  # Tune could not write it (the disk is full, say)
            error = None
        fault = world_fault(error, self.storage) if error is not None else None
        if fault is not None:
            self._trial_fault = type(fault)(f"trial {trial.trial_id}: {one_line(fault)}")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Close the runs of trials the interruption left open, then wait for MLflow to take it all."""
        for trial in trials:
            tid = trial.trial_id
            if tid in self._known and tid not in self._closed:
                self._closed.add(tid)
                self._submit(tid, "close", _end, "KILLED", {TAG_OUTCOME: "interrupted"})
        print(self.flush(), flush=True)

    # -- writing -------------------------------------------------------------------------------

    def _create_run(self, trial: Any) -> None:
        """The trial's child run, with its params and the model's FLOPs and parameter count."""
        params = train_params(trial.config)
        spec = JobSpec.model_validate(self.spec_json).with_params(params)
        tags = {TAG_STUDY: spec.study, **self.run_tags}
        if CONFIRMS in trial.config:
            tags[TAG_CONFIRMS] = trial.config[CONFIRMS]
        run_id, _ = ensure_child_run(
            self.uri,
            self.experiment_id,
            self.parent_run_id,
            role=self.role,
            key=trial.trial_id,
            run_name=str(trial),
            tags=tags,
        )
        self._runs[trial.trial_id] = run_id
        log_params(self.uri, run_id, run_params(spec, params))
        log_metrics(self.uri, run_id, self._model_facts(spec))

    def _model_facts(self, spec: JobSpec) -> dict[str, float]:
        """FLOPs (fvcore, at the spec's image size, all channels) and parameters, counted once: the
        search never changes the model."""
        if self._facts is None:
            from dynconv.flops import model_facts
            from dynconv.train.loop import build_model

            self._facts = model_facts(build_model(spec, self.num_classes), spec.data.image_size)
        return self._facts

    def _fill_in(self, trial: Any, ckpt: Path | None, after: int, upto: int) -> None:
        """Log epochs `after`+1..`upto` from the history saved in checkpoint `ckpt` (read now: Tune
        may delete it before the writer gets to it)."""
        if upto <= after or ckpt is None or not (ckpt / CHECKPOINT_FILE).is_file():
            return
        state = read_state(ckpt / CHECKPOINT_FILE)
        history = (state or {}).get("history") or []
        tid = trial.trial_id
        for metrics in history:
            epoch = int(metrics.get("epoch", 0))
            if after < epoch <= upto:
                self._submit(tid, f"epoch {epoch} (filled in)", log_metrics, metrics, step=epoch)
                self._logged[tid] = max(self._logged.get(tid, 0), epoch)

    def _close(self, trial: Any, failed: bool) -> None:
        """The trial ended: its final checkpoint, its outcome, its status."""
        tid = trial.trial_id
        if tid not in self._known:
            return
        self._closed.add(tid)
        last = trial.last_result or {}
        ckpt = checkpoint_dir(trial, last)
        ckpt_epoch = int(last.get("epoch", 0))
        self._fill_in(trial, ckpt, self._logged.get(tid, 0), ckpt_epoch)
        done = max(ckpt_epoch, self._logged.get(tid, 0))
        if ckpt is not None and (ckpt / CHECKPOINT_FILE).is_file():
            self._submit(tid, "checkpoint", log_artifact, ckpt / CHECKPOINT_FILE, "checkpoint")
        outcome = trial_outcome(last, done, self.epochs, failed)
        tags = {TAG_OUTCOME: outcome, TAG_EPOCHS_DONE: done}
        if (error := ended_by_error(last)) is not None:
            tags[TAG_ERROR] = error
        if self.fault is not None and outcome == "stopped_early":  # stopped by the fault, not ASHA
            tags.update({TAG_OUTCOME: "interrupted", TAG_FAILURE: one_line(self.fault)})
        status = {"failed": "FAILED", "diverged": "FAILED"}.get(str(tags[TAG_OUTCOME]), "FINISHED")
        status = "KILLED" if tags[TAG_OUTCOME] == "interrupted" else status

        def close(uri: str, run_id: str) -> None:  # runs after the trial's other writes landed, or not
            missing = self.writer.incomplete(tid)
            if missing:  # complete or absent: a run that lost a write is neither finished nor ranked
                _end(uri, run_id, "FAILED", {**tags, TAG_OUTCOME: "incomplete", TAG_ERROR: _lost(missing)})
            else:
                _end(uri, run_id, status, tags)

        self._submit(tid, "close", close)

    def flush(self) -> str:
        """Wait (bounded) for every queued write; the summary line of what MLflow is missing."""
        ok = self.writer.flush(FLUSH_TIMEOUT_S, on_wait=_say_waiting)
        waiting = {} if ok else self.writer.pending()
        lines = [f"trial {t}: {n} writes still waiting for MLflow" for t, n in waiting.items()]
        lines += [f"trial {t}: {'; '.join(w)}" for t, w in self.writer.failed.items()]
        lines += [f"trial {t}: {n} writes not tried" for t, n in self.writer.lost.items()]
        if self.writer.fatal is not None:  # the cause first, then what it cost
            return f"MLflow writes stopped: {one_line(self.writer.fatal)} ({len(lines)} runs incomplete)"
        if not lines:
            return "MLflow runs incomplete: none"
        return f"MLflow runs incomplete: {len(lines)}\n" + "\n".join(f"  {line}" for line in lines)

    # -- after a killed driver -----------------------------------------------------------------

    def _reconcile(self, trials: list) -> None:
        """Match MLflow's trial runs of this study with the trials Tune restored (see the module doc)."""
        known = {t.trial_id: t for t in trials}
        for run in find_runs(self.uri, self.experiment_id, role=self.role):
            if run.data.tags.get(TAG_PARENT) != self.parent_run_id:
                continue
            tid, run_id = run.data.tags.get(TAG_TRIAL_ID, ""), run.info.run_id
            trial = known.get(tid)
            if trial is None:  # Tune lost this trial and will suggest it again under a new id
                if run.info.status == "RUNNING":
                    set_tags(self.uri, run_id, {TAG_OUTCOME: "orphaned"})
                    end_run(self.uri, run_id, "KILLED")
                    print(f"MLflow run {run_id}: a trial lost by a killed driver, closed KILLED", flush=True)
                continue
            self._known.add(tid)
            self._runs[tid] = run_id
            self._logged[tid] = max(metric_history(self.uri, run_id, "epoch"), default=0)
            if run.info.status != "RUNNING":
                self._closed.add(tid)
            elif trial.status in ("TERMINATED", "ERROR"):  # ended, but its run was never closed
                self._close(trial, failed=trial.status == "ERROR")


def _set_status(uri: str, run_id: str, status: str) -> None:
    client(uri).update_run(run_id, status=status)


def _end(uri: str, run_id: str, status: str, tags: dict[str, Any]) -> None:
    set_tags(uri, run_id, tags)
    end_run(uri, run_id, status)


def _lost(missing: list[str]) -> str:
    return one_line("MLflow lost: " + "; ".join(missing), limit=5000)


def _say_waiting(n: int, waited_s: float, fault: Fault) -> None:
    print(f"{one_line(fault)}: {n} queued writes wait ({waited_s:.0f} s so far)", file=sys.stderr)


class StopOnFault(Stopper):
    """Stops every trial once the recorder holds a permanent fault (`TrialRecorder.fault`): a full
    disk or a gone store fails every later trial and write the same way. Tune asks `stop_all` after
    each step; no single trial is stopped by it."""

    def __init__(self, recorder: TrialRecorder) -> None:
        self.recorder = recorder

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.recorder.fault is not None
