"""The Tune callback that prints a study phase (the search, a confirmation) on the driver's console.

Two views, chosen when the phase starts (Tune's `setup` says how many trials it will run):

* trial lines: one line per trial event (start, each epoch with the ranked metric, img/s and the best so
  far, stopped by ASHA, finished, diverged, failed with its error file), while the phase's trials fit a
  screen (`SCREEN_LINES`; a trial prints at most `epochs + 1` lines) or when `--verbose` asks for every
  line;
* progress: beyond a screenful, a progress line every `PROGRESS_EVERY_S` (trials ended of the total,
  how they ended, how many run, the best value and its trial, the time left), plus one line for each
  new best, each failure (with its error file) and each divergence: those are never summarised away.

On an interactive terminal, in either view, a progress bar (trials ended of the total, the time left)
is redrawn in place (carriage return) below the event lines, and takes the periodic line's place; a
log file or a pipe gets plain lines only. With `--verbose`, Ray's own output shares the console, so
there is no bar.

The best so far is the study's one ranking (`dynconv.spec.ranking.Ranking`): each trial's last value of
the ranked metric, trials that ran all their epochs before those the scheduler stopped, failed and
diverged trials never (a trial that diverges after being best stops being named). The trial lines rank
every trial seen, running ones with their latest epoch; the progress view ranks the trials that ended,
so a best it announces is final.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from dynconv.spec.metrics import diverged, ended_by_error, trial_outcome
from dynconv.spec.ranking import Ranking

SCREEN_LINES = 40
"""A screenful: a phase whose trial lines could exceed this many (`trials x (epochs + 1)`) shows its
progress instead. The quickstart (4 trials x 6 epochs: 28) and its confirmation keep their lines."""

PROGRESS_EVERY_S = 30.0
"""Seconds between two progress lines (a phase longer than `PROGRESS_LINES` periods stretches it)."""

PROGRESS_LINES = 40
"""Progress lines at the period `PROGRESS_EVERY_S` (20 min); past them, the period grows to the phase's
expected duration over this many, so that a day-long study's log stays readable (< 80 lines)."""

BAR_EVERY_S = 0.5
"""Seconds between two redraws of the progress bar on a terminal."""

_CLEAR = "\r\x1b[K"  # back to the line's start, erase it: where the bar was


@dataclass
class _Trial:
    """What the console knows of one trial: what `Ranking` reads (`RankedTrial`) and what it prints."""

    trial_id: str
    params: str = ""
    status: str = "RUNNING"  # RUNNING, TERMINATED (ended, ranked), FAILED, DIVERGED (never ranked)
    completed: bool = False  # ran all its epochs
    value: float | None = None  # last reported value of the ranked metric
    objectives: dict[str, float | None] = field(default_factory=dict)
    epochs_done: int = 0
    outcome: str | None = None  # set once it ended: finished, stopped_early, diverged, failed


class ConsoleReporter(Callback):
    """Prints a phase's trial events or its progress (see the module doc).

    Works from Tune's callback events only, so it does not care whether a trial runs a TorchTrainer or
    trains in its trial actor. `ranking` is the study's (`Ranking.for_spec`); without one, `metric` in
    `mode`. `every_line` keeps the trial lines whatever the phase's size (`--verbose`). `total` is the
    number of trials when Tune does not say it; `stream` defaults to stdout, `clock` to the monotonic
    clock; `screen_lines` and `period_s` default to `SCREEN_LINES` and `PROGRESS_EVERY_S`.
    """

    def __init__(
        self,
        epochs: int,
        metric: str,
        mode: str,
        keys: list[str],
        stream: Any = None,
        *,
        ranking: Ranking | None = None,
        every_line: bool = False,
        total: int | None = None,
        screen_lines: int | None = None,
        period_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.epochs, self.keys, self.stream = epochs, keys, stream
        self.ranking = ranking or Ranking(metric, mode)
        self.metric = self.ranking.metric
        self.every_line, self.total = every_line, total
        self.screen_lines = SCREEN_LINES if screen_lines is None else screen_lines
        self.period_s = PROGRESS_EVERY_S if period_s is None else period_s
        self.clock = clock
        self.t0 = clock()
        self.trials: dict[str, _Trial] = {}
        self.counts = {"finished": 0, "stopped_early": 0, "diverged": 0, "failed": 0}
        self.running: set[str] = set()
        self.best: _Trial | None = None  # by the ranking: of every trial seen (lines), or ended (progress)
        self.best_shown: tuple[float | None, bool] | None = None  # the last best announced (`_best_key`)
        self.announced: set[str] = set()  # trials whose last epoch line already said "finished"
        self.progress: bool | None = None  # decided by `setup`; trial lines until then
        self.last_progress = self.last_bar = self.t0
        self.bar_shown = False
        self.bar_done = False  # the final bar is drawn: the phase's last trial ended
        self._stale_best = False  # multi-objective: the Pareto ranking is recomputed at most once a second
        self._ranked_at = -math.inf
        self._restored = False
        self.ended_before = 0  # trials that ended before a resumed phase restarted

    @classmethod
    def for_spec(cls, spec: Any, keys: list[str], verbose: bool = False) -> ConsoleReporter:
        """The console of a phase of the study `spec` describes: its epochs and ranking; `keys` are the
        parameters each trial's line shows; `verbose` keeps every trial line."""
        ranking = Ranking.for_spec(spec)
        return cls(spec.train.epochs, ranking.metric, ranking.mode, keys, ranking=ranking, every_line=verbose)

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the Tuner
        return {**self.__dict__, "stream": None}

    def __setstate__(self, state: dict[str, Any]) -> None:  # a resumed phase counts time from its restart
        self.__dict__.update(state)
        self.t0 = self.last_progress = self.last_bar = self.clock()
        self.bar_shown = self.bar_done = False

    # ---------------------------------------------------------------------------------- Tune's events

    def setup(self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any):
        """The phase starts (or restarts): its clock starts, and its size chooses the view."""
        if not self.trials:
            self.t0 = self.last_progress = self.last_bar = self.clock()
        self.bar_done = False
        if isinstance(total_num_samples, int) and total_num_samples > 0:
            self.total = total_num_samples
        lines = (self.total or 0) * (self.epochs + 1)
        self.progress = not self.every_line and lines > self.screen_lines
        if self.progress and not self._bar():
            self._write(
                self._stamp()
                + f"{self.total} trials: more than a screenful of trial lines, so a progress line every "
                f"{self.period_s:g} s and a line for each new best, failure and divergence (--verbose: "
                "every trial event)"
            )

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._restored:  # a resumed phase: count the trials that ended before it restarted
            self._restored = True
            self._count_ended(trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._tick()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        seen = self._trial(trial)
        if seen.outcome is not None:  # ended before and runs again (an errored trial after --resume)
            self.counts[seen.outcome] -= 1
        seen.status, seen.outcome = "RUNNING", None
        self.running.add(trial.trial_id)
        if self.best is seen:  # no longer an ended trial's final value
            self._best_after(seen, self._ended if self.progress else self.trials.values)
        if not self.progress:
            self._print(trial, f"started    {seen.params}")
        self._tick()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if value is None or "epoch" not in result:
            return
        seen = self._update(self._trial(trial), result)
        if not self.progress:
            self._best_after(seen, self.trials.values)
            speed = result.get("train_images_per_second")
            rate = f"  {speed:6.0f} img/s" if speed else ""
            last = seen.epochs_done >= self.epochs
            if last:
                self.announced.add(trial.trial_id)
            self._print(
                trial,
                f"epoch {seen.epochs_done}/{self.epochs}  {self.metric} {value:.4f}{rate}"
                f"   best so far {self._best_text()}{'   finished' if last else ''}",
            )
        self._tick()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        seen = self._end(trial, last)
        value = last.get(self.metric)
        tail = f", last {self.metric} {value:.4f}" if value is not None else ""
        done = seen.epochs_done
        if seen.outcome == "failed":
            self._print(trial, f"FAILED: {ended_by_error(last)}  (not retried: it would fail the same way)")
        elif seen.outcome == "diverged":
            loss = diverged(last)
            self._print(trial, f"DIVERGED at epoch {done}: {loss} {last[loss]}; not ranked, not evaluated")
        elif self.progress:
            self._announce_best()
        elif seen.outcome == "finished":
            if trial.trial_id not in self.announced:  # else its last epoch line said so
                self._print(trial, f"finished   {done} epochs{tail}")
        else:
            self._print(trial, f"stopped by the scheduler (ASHA) after epoch {done}/{self.epochs}{tail}")
        self._tick()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._print(trial, f"failed, retrying: {_last_error_line(trial)}  (log: {trial.error_file})")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, trial.last_result or {}, errored=True)
        self._print(trial, f"FAILED: {_last_error_line(trial)}  (full log: {trial.error_file})")
        self._tick()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """The phase ended (or was interrupted): the bar's final state stays, or the last progress line."""
        self._refresh_best(force=True)
        if self._bar():
            if not self.bar_done:
                self._draw_bar(final=True)
        elif self.progress:
            self._write(self._progress_line())

    # ------------------------------------------------------------------------------------ the state

    def _trial(self, trial: Any) -> _Trial:
        seen = self.trials.get(trial.trial_id)
        if seen is None:
            params = "  ".join(_fmt_param(k, (trial.config or {}).get(k)) for k in self.keys)
            seen = self.trials[trial.trial_id] = _Trial(trial.trial_id, params)
        return seen

    def _update(self, seen: _Trial, result: dict) -> _Trial:
        """The trial's latest epoch: its value and epochs (what the ranking reads)."""
        seen.epochs_done = max(seen.epochs_done, int(result.get("epoch", 0)))
        seen.completed = seen.epochs_done >= self.epochs
        seen.value = _number(result.get(self.metric))
        seen.objectives = {m: _number(result.get(m)) for m, _ in self.ranking.objectives}
        if diverged(result) is not None:
            seen.status = "DIVERGED"
        return seen

    def _end(self, trial: Any, last: dict, errored: bool = False) -> _Trial:
        """Record how the trial ended (its last result, or an error) and count it once."""
        seen = self._update(self._trial(trial), last) if last else self._trial(trial)
        outcome = trial_outcome(last, seen.epochs_done, self.epochs, errored)
        if seen.outcome is not None:  # ended twice (Tune reports an errored trial's end too): count once
            self.counts[seen.outcome] -= 1
        seen.outcome = outcome
        seen.status = {"failed": "FAILED", "diverged": "DIVERGED"}.get(outcome, "TERMINATED")
        self.counts[outcome] += 1
        self.running.discard(trial.trial_id)
        self._best_after(seen, self._ended if self.progress else self.trials.values)
        return seen

    def _count_ended(self, trials: Iterable[Any]) -> None:
        """Trials Tune restored as ended (a resumed phase) count as ended, silently."""
        for trial in trials:
            status = str(getattr(trial, "status", ""))
            if trial.trial_id not in self.trials and status in ("TERMINATED", "ERROR"):
                self._end(trial, trial.last_result or {}, errored=status == "ERROR")
        self.best_shown, self.ended_before = self._best_key(), self._ended_count()

    def _ended(self) -> list[_Trial]:
        return [t for t in self.trials.values() if t.outcome is not None]

    def _best_after(self, changed: _Trial, pool: Callable[[], Iterable[_Trial]]) -> None:
        """The best trial by the study's ranking once `changed` changed: the best so far against
        `changed` when nothing else changed (one objective), else over all of `pool()` (when `changed`
        was the best; a multi-objective study's Pareto set depends on every trial: recomputed at most
        once a second, see `_refresh_best`)."""
        if self.ranking.objectives:
            self._stale_best = True
            self._refresh_best()
        elif self.best is None or self.best is changed:
            ranked = self.ranking.rank(pool())
            self.best = ranked[0] if ranked else None
        elif self.ranking.rankable(changed):
            self.best = self.ranking.rank([self.best, changed])[0]

    def _refresh_best(self, force: bool = False) -> None:
        now = self.clock()
        if self._stale_best and (force or now - self._ranked_at >= 1.0):
            ranked = self.ranking.rank(self._ended() if self.progress else self.trials.values())
            self.best = ranked[0] if ranked else None
            self._stale_best, self._ranked_at = False, now

    def _best_key(self) -> tuple[float | None, bool] | None:
        """What makes a best new: its value and whether it ran all its epochs (not its id: a tie)."""
        return (self.best.value, self.best.completed) if self.best is not None else None

    def _best_text(self) -> str:
        return f"{self.best.value:.4f} ({self.best.trial_id})" if self.best is not None else "-"

    # ---------------------------------------------------------------------------------- the output

    def _out(self) -> Any:
        return self.stream or sys.stdout

    def _bar(self) -> bool:
        """Whether to draw the progress bar: a person watches (an interactive terminal) and Ray's own
        output is not on it (`--verbose`)."""
        if self.every_line:
            return False
        isatty = getattr(self._out(), "isatty", None)
        try:
            return bool(isatty and isatty())
        except (OSError, ValueError):  # a closed stream
            return False

    def _stamp(self) -> str:
        return f"[{_clock(self.clock() - self.t0)}] "

    def _write(self, line: str) -> None:
        """One line on the console (above the progress bar on a terminal, which is then redrawn)."""
        out = self._out()
        if self.bar_shown:
            out.write(_CLEAR)
            self.bar_shown = False
        print(line, file=out, flush=True)
        if self._bar() and not self.bar_done:
            self._draw_bar()

    def _print(self, trial: Any, text: str) -> None:
        self._write(f"{self._stamp()}trial {trial.trial_id}  {text}")

    def _announce_best(self) -> None:
        """Progress view: a line when the best ended trial is better than the last one announced (a
        better value, or all epochs where that one stopped early; not a tie another trial's id broke)."""
        self._refresh_best()
        key = self._best_key()
        if key is None or key == self.best_shown:
            return
        self.best_shown = key
        best = self.best
        how = "finished" if best.completed else f"stopped after epoch {best.epochs_done}/{self.epochs}"
        self._write(
            f"{self._stamp()}trial {best.trial_id}  new best {self.metric} {best.value:.4f} ({how})  "
            f"{best.params}"
        )

    def _tick(self) -> None:
        """The bar (a terminal, either view) or the progress view's periodic line (a log) when due."""
        now = self.clock()
        if self._bar():
            if self.bar_done:
                return
            done = bool(self.total) and self._ended_count() >= (self.total or 0)
            if done or now - self.last_bar >= BAR_EVERY_S or not self.bar_shown:
                self._refresh_best(force=done)
                self._draw_bar(final=done)  # the last trial ended: the bar's line ends before others print
        elif self.progress and now - self.last_progress >= self._period(now):
            self._refresh_best(force=True)
            self._write(self._progress_line())
            self.last_progress = now

    def _period(self, now: float) -> float:
        """`period_s` for the first `PROGRESS_LINES` periods; then stretched to the phase's expected
        duration over `PROGRESS_LINES`, so that a day-long phase prints fewer than twice that many."""
        elapsed, left = now - self.t0, self._seconds_left(now)
        if elapsed < PROGRESS_LINES * self.period_s:
            return self.period_s
        return max(self.period_s, (elapsed + (left or 0.0)) / PROGRESS_LINES)

    def _ended_count(self) -> int:
        return sum(self.counts.values())

    def _seconds_left(self, now: float) -> float | None:
        """At the pace of the trials that ended since the phase (re)started; None before one did."""
        done, total = self._ended_count(), self.total or 0
        if total and done >= total:
            return 0.0
        here = done - self.ended_before
        return (now - self.t0) / here * (total - done) if here > 0 and total else None

    def _progress_line(self) -> str:
        """`[ 2:30] 137/500 trials ended (12 finished, 120 stopped by ASHA, 3 diverged, 2 failed),
        3 running; best val_acc 0.8133 (1a2b3c4d); about 6:40 left` (the last one says no time left)."""
        now = self.clock()
        c = self.counts
        how = [
            f"{c['finished']} finished",
            f"{c['stopped_early']} stopped by ASHA" if c["stopped_early"] else "",
            f"{c['diverged']} diverged" if c["diverged"] else "",
            f"{c['failed']} failed" if c["failed"] else "",
        ]
        best = f"best {self.metric} {self._best_text()}" if self.best is not None else "no trial ranked yet"
        left = self._seconds_left(now)
        eta = "; time left unknown" if left is None else f"; about {_duration(left)} left" if left else ""
        return (
            f"{self._stamp()}{self._ended_count()}/{self.total or '?'} trials ended "
            f"({', '.join(h for h in how if h)}), {self._running_text()}; {best}{eta}"
        )

    def _running_text(self) -> str:
        """`3 running`, and where the furthest of them are when a trial has several epochs: `3 running
        (epochs done 12, 7, 0 of 30)`."""
        text = f"{len(self.running)} running"
        if self.epochs > 1 and self.running:
            done = sorted((self.trials[t].epochs_done for t in self.running), reverse=True)
            more = ", ..." if len(done) > 4 else ""
            text += f" (epochs done {', '.join(map(str, done[:4]))}{more} of {self.epochs})"
        return text

    def _draw_bar(self, final: bool = False) -> None:
        """The progress bar on a terminal: redrawn in place; `final` leaves it as the phase's last line."""
        now = self.clock()
        done, total = self._ended_count(), max(self.total or 0, 1)
        width = 20
        filled = min(width, round(width * done / total))
        failed = self.counts["failed"] + self.counts["diverged"]
        left = self._seconds_left(now)
        parts = [
            f"{self._stamp()}[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total or '?'} trials",
            "" if final or not left else f"~{_duration(left)} left",
            f"{len(self.running)} running",
            f"{failed} failed or diverged" if failed else "",
            f"best {self._best_text()}" if self.best is not None else "",
        ]
        text = ", ".join(p for p in parts if p)
        columns = shutil.get_terminal_size((100, 24)).columns
        out = self._out()
        out.write("\r" + text[: max(columns - 1, 20)] + "\x1b[K" + ("\n" if final else ""))
        out.flush()
        self.bar_shown, self.last_bar = not final, now
        self.bar_done = self.bar_done or final


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _clock(seconds: float) -> str:
    """`m:ss` (`h:mm:ss` from an hour), right-aligned to 5 characters: the console's time stamps."""
    return f"{_duration(seconds):>5}"


def _duration(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour."""
    s = max(int(seconds), 0)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


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
