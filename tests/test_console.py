"""The console of `dynconv tune`: trial-event lines, no library noise, one clear line for a failed trial;
a progress view beyond a screenful of trials, and a progress bar on a terminal.

The unit tests drive `ConsoleReporter` with stand-in trials and a simulated clock (no Ray, no waiting): a
500-trial phase on a pipe, a phase on a terminal. `test_real_tune_phase_beyond_the_threshold` runs the
reporter in real Tune (its `setup`, error files and events) on a few instant trials with a lowered
threshold. `test_cli_console_is_quiet` reads the whole console of the real `dynconv tune` command on a
2-trial, 2-epoch study (1 worker per trial; the `cli_study` fixture, shared with tests/test_study_lock.py).
"""

from __future__ import annotations

import io
import itertools
import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dynconv.tune.callbacks import ConsoleReporter
from tests.conftest import CliStudy

NOISE = re.compile(r"ERROR|WARNING| E | INFO |Reporting training result|core_worker|Traceback")


def _trial(trial_id: str, tmp_path: Path, **last: float) -> SimpleNamespace:
    return SimpleNamespace(
        trial_id=trial_id,
        config={"lr": 0.05123, "augment_strength": 0.25},
        last_result=dict(last),
        error_file=str(tmp_path / f"{trial_id}_error.txt"),
    )


def test_reporter_prints_one_line_per_event_with_best_so_far(tmp_path: Path) -> None:
    out = io.StringIO()
    rep = ConsoleReporter(epochs=3, metric="val_acc", mode="max", keys=["lr", "augment_strength"], stream=out)
    a, b = _trial("aaaa", tmp_path), _trial("bbbb", tmp_path)
    rep.on_trial_start(0, [], a)
    rep.on_trial_start(0, [], b)
    rep.on_trial_result(0, [], a, {"epoch": 1, "val_acc": 0.5, "train_images_per_second": 812.4})
    rep.on_trial_result(0, [], b, {"epoch": 1, "val_acc": 0.4})
    rep.on_trial_result(0, [], a, {"training_iteration": 1})  # not an epoch report: ignored
    b.last_result = {"epoch": 1, "val_acc": 0.4}
    rep.on_trial_complete(0, [], b)
    a.last_result = {"epoch": 3, "val_acc": 0.7}
    rep.on_trial_complete(0, [], a)
    lines = out.getvalue().splitlines()
    assert len(lines) == 6
    assert "trial aaaa  started    lr=0.05123  augment_strength=0.25" in lines[0]
    assert "epoch 1/3  val_acc 0.5000     812 img/s   best so far 0.5000 (aaaa)" in lines[2]
    assert "trial bbbb  epoch 1/3  val_acc 0.4000   best so far 0.5000 (aaaa)" in lines[3]
    assert "bbbb  stopped by the scheduler (ASHA) after epoch 1/3" in lines[4]
    assert "aaaa  finished   3 epochs, last val_acc 0.7000" in lines[5]
    rep.on_trial_result(0, [], b, {"epoch": 3, "val_acc": 0.9})  # a last epoch says "finished" itself
    b.last_result = {"epoch": 3, "val_acc": 0.9}
    rep.on_trial_complete(0, [], b)
    assert out.getvalue().splitlines()[-1].endswith("best so far 0.9000 (bbbb)   finished")
    assert all(re.match(r"\[ *\d+:\d\d\] trial ", ln) for ln in lines)


def test_failed_trial_is_one_line_with_the_error_and_its_log(tmp_path: Path) -> None:
    out = io.StringIO()
    rep = ConsoleReporter(epochs=2, metric="val_loss", mode="min", keys=["lr"], stream=out)
    t = _trial("cccc", tmp_path)
    Path(t.error_file).write_text(
        "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n"
    )
    rep.on_trial_error(0, [], t)
    [line] = out.getvalue().splitlines()
    assert "trial cccc  FAILED: RuntimeError: CUDA out of memory" in line
    assert f"(full log: {t.error_file})" in line
    missing = _trial("dddd", tmp_path)
    rep.on_trial_error(0, [], missing)
    assert "unknown error (no error file)" in out.getvalue().splitlines()[-1]


def test_reporter_survives_tune_pickling_its_state(tmp_path: Path) -> None:
    import pickle

    rep = ConsoleReporter(epochs=2, metric="val_acc", mode="max", keys=["lr"], stream=io.StringIO())
    clone = pickle.loads(pickle.dumps(rep))
    assert clone.stream is None and clone.epochs == 2


class _Clock:
    """A simulated monotonic clock: the tests move it, nothing sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


STAMP = re.compile(r"^\[ *(?:(\d+):)?(\d+):(\d\d)\] ")


def _seconds(line: str) -> int:
    h, m, s = STAMP.match(line).groups()
    return int(h or 0) * 3600 + int(m) * 60 + int(s)


def _simulate(
    rep: ConsoleReporter, clock: _Clock, tmp_path: Path, n: int, bad: dict[int, str], recorder: Any = None
) -> dict:
    """Run `n` trials of 2 epochs, 3 at a time, through `rep` as Tune would: a trial takes 1.6 s per epoch;
    ASHA stops the odd ones after epoch 1; `bad[i]` = "fail" (an exception, with its error file) or
    "diverge" (a NaN loss at epoch 1). Tune's loop calls `on_step_end` every 0.1 s; `recorder()` runs
    where the MLflow recorder's end-of-phase line comes (before the reporter's). Returns the trials."""
    rep.setup(total_num_samples=n)
    trials = {i: _trial(f"t{i:04d}", tmp_path) for i in range(n)}
    for i, t in trials.items():
        t.config = {"lr": 0.01 + i / 1000, "augment_strength": 0.25}
    queue, running = list(range(n)), {}  # trial -> (next event time, epoch)
    while queue or running:
        while queue and len(running) < 3:
            i = queue.pop(0)
            rep.on_trial_start(0, [], trials[i])
            running[i] = (clock.now + 1.6, 1)
        for i, (due, epoch) in sorted(running.items()):
            if clock.now < due:
                continue
            t, value = trials[i], 0.3 + ((i * 37) % 101) / 200 + epoch / 100
            if bad.get(i) == "fail":
                Path(t.error_file).write_text(f"Traceback ...\nRuntimeError: trial {i} broke\n")
                rep.on_trial_error(0, [], t)
                del running[i]
                continue
            result = {"epoch": epoch, "val_acc": value, "train_loss": 1.0}
            if bad.get(i) == "diverge":
                result["train_loss"] = float("nan")
            rep.on_trial_result(0, [], t, result)
            t.last_result = result
            if epoch == 2 or i % 2 or bad.get(i) == "diverge":
                rep.on_trial_complete(0, [], t)
                del running[i]
            else:
                running[i] = (clock.now + 1.6, epoch + 1)
        clock.now += 0.1
        rep.on_step_end(0, [])
    if recorder is not None:
        recorder()
    rep.on_experiment_end([])
    return trials


def test_a_500_trial_phase_on_a_pipe_prints_its_progress_not_every_trial(tmp_path: Path) -> None:
    """The default screenful and period: 500 trials print about one line per 30 s, one per new best,
    and a line for every failed and diverged trial, by name; the last line counts them all."""
    out, clock = io.StringIO(), _Clock()
    rep = ConsoleReporter(2, "val_acc", "max", ["lr"], out, clock=clock)
    bad = {7: "fail", 123: "diverge", 124: "diverge", 301: "fail", 499: "diverge"}
    trials = _simulate(rep, clock, tmp_path, 500, bad)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue(), "no carriage returns in a log"
    assert len(lines) <= 60, "\n".join(lines)
    progress = [ln for ln in lines if " trials ended (" in ln]
    times = [_seconds(ln) for ln in progress]
    assert times[0] <= 31 and all(b - a <= 31 for a, b in itertools.pairwise(times)), times
    for i, kind in bad.items():
        named = [ln for ln in lines if f"trial {trials[i].trial_id}  " in ln]
        if kind == "fail":
            assert named == [ln for ln in named if f"RuntimeError: trial {i} broke" in ln], named
            assert len(named) == 1 and trials[i].error_file in named[0]
        else:
            assert len(named) == 1 and "DIVERGED at epoch 1: train_loss nan" in named[0], named
    assert " started " not in out.getvalue() and " epoch 1/2 " not in out.getvalue()
    final = lines[-1]
    assert "500/500 trials ended" in final and "2 diverged" not in final and "3 diverged, 2 failed" in final
    # the best: the ranking's (finished trials before stopped ones), here the even trial with the top value
    best = max((i for i in range(0, 500, 2) if i not in bad), key=lambda i: (i * 37) % 101)
    assert f"best val_acc {0.3 + ((best * 37) % 101) / 200 + 0.02:.4f} (t{best:04d})" in final
    bests = [ln for ln in lines if " new best val_acc " in ln]
    assert bests and f"trial t{best:04d}  new best" in bests[-1] and "(finished)  lr=" in bests[-1]


def test_a_lowered_threshold_switches_a_small_phase_to_progress(tmp_path: Path) -> None:
    """12 trials x 3 lines fit no 10-line screen: progress lines; --verbose (every_line) keeps them all."""
    out, clock = io.StringIO(), _Clock()
    rep = ConsoleReporter(2, "val_acc", "max", ["lr"], out, screen_lines=10, period_s=2, clock=clock)
    _simulate(rep, clock, tmp_path, 12, {3: "diverge"})
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("12 trials: more than a screenful of trial lines, so a progress line every "
                             "2 s and a line for each new best, failure and divergence (--verbose: every "
                             "trial event)")  # fmt: skip
    assert sum(" trials ended (" in ln for ln in lines) >= 3 and " started " not in out.getvalue()
    verbose, clock = io.StringIO(), _Clock()
    rep = ConsoleReporter(2, "val_acc", "max", ["lr"], verbose, every_line=True, screen_lines=10, clock=clock)
    _simulate(rep, clock, tmp_path, 12, {3: "diverge"})
    assert verbose.getvalue().count(" started ") == 12 and " trials ended (" not in verbose.getvalue()


def test_on_a_terminal_a_bar_is_redrawn_under_the_event_lines(tmp_path: Path) -> None:
    """An interactive terminal: the bar (trials ended of the total, time left) is redrawn in place with a
    carriage return; the event lines stay whole above it; no periodic lines; the final bar stays."""
    out, clock = _Tty(), _Clock()
    rep = ConsoleReporter(2, "val_acc", "max", ["lr"], out, clock=clock)
    _simulate(
        rep,
        clock,
        tmp_path,
        100,
        {5: "fail"},
        recorder=lambda: print("MLflow runs incomplete: none", file=out),
    )
    text = out.getvalue()
    assert text.endswith("\x1b[K\nMLflow runs incomplete: none\n"), "the final bar ends its line first"
    text = text.removesuffix("MLflow runs incomplete: none\n")
    assert " trials ended (" not in text and "more than a screenful" not in text
    shown = [seg.removeprefix("\x1b[K").split("\x1b[K")[0] for seg in text.split("\r") if seg]
    bars = [seg for seg in shown if re.search(r"\] \[[#.]{20}\] \d+/100 trials", seg)]
    assert len(bars) > 50 and all(re.search(r"trials, ~\d+:\d\d left, \d running", b) for b in bars[20:-1])
    final = r"\[#{20}\] 100/100 trials, 0 running, 1 failed or diverged, best 0\.\d{4} \(t\d{4}\)\x1b\[K\n$"
    assert re.search(final, text), text[-300:]
    [failed] = [seg for seg in shown if "FAILED: RuntimeError: trial 5 broke" in seg]
    assert failed.endswith("_error.txt)\n")


def test_the_best_so_far_is_the_studys_ranking(tmp_path: Path) -> None:
    """The best so far follows `Ranking`: the last value, never a trial that diverged (even one that
    was best before it diverged), trials that ran all epochs before ASHA-stopped ones; mode min."""
    from dynconv.spec.ranking import Ranking

    out = io.StringIO()
    rep = ConsoleReporter(2, "val_loss", "min", [], out, ranking=Ranking("val_loss", "min"))
    a, b, c = _trial("aaaa", tmp_path), _trial("bbbb", tmp_path), _trial("cccc", tmp_path)
    rep.on_trial_result(0, [], a, {"epoch": 1, "val_loss": 0.2, "train_loss": 1.0})
    rep.on_trial_result(0, [], b, {"epoch": 1, "val_loss": 0.5, "train_loss": 1.0})
    assert out.getvalue().splitlines()[-1].endswith("best so far 0.2000 (aaaa)")
    rep.on_trial_result(0, [], a, {"epoch": 2, "val_loss": 0.1, "train_loss": float("nan")})
    assert out.getvalue().splitlines()[-1].endswith("best so far 0.5000 (bbbb)   finished"), "a diverged"
    rep.on_trial_result(0, [], c, {"epoch": 1, "val_loss": 0.3, "train_loss": 1.0})
    c.last_result = {"epoch": 1, "val_loss": 0.3}
    rep.on_trial_complete(0, [], c)  # stopped early: still ranked below nothing finished yet
    rep.on_trial_result(0, [], b, {"epoch": 2, "val_loss": 0.6, "train_loss": 1.0})
    assert out.getvalue().splitlines()[-1].endswith("best so far 0.6000 (bbbb)   finished"), (
        "the last value of a trial that ran all its epochs beats a better one stopped early"
    )


def test_a_resumed_phase_counts_the_trials_that_ended_before(tmp_path: Path) -> None:
    """Tune restores the reporter as it was pickled (empty) and the trials with their states: the first
    step counts those that ended, an errored one it retries counts again as running; the clock restarts."""
    import pickle

    out, clock = io.StringIO(), _Clock()
    rep = pickle.loads(pickle.dumps(ConsoleReporter(1, "val_acc", "max", [], clock=clock)))
    rep.stream, rep.clock = out, clock  # the pickled clock is a copy
    done = [_trial(f"d{i}", tmp_path, epoch=1, val_acc=0.5 + i / 10) for i in range(3)]
    for t in done:
        t.status = "TERMINATED"
    broken = _trial("e0", tmp_path)
    broken.status = "ERROR"
    rep.setup(total_num_samples=100)
    rep.on_step_begin(0, [*done, broken, _trial("p0", tmp_path)])
    clock.now += 31
    rep.on_step_end(0, [])
    assert "4/100 trials ended (3 finished, 1 failed), 0 running; best val_acc 0.7000 (d2)" in out.getvalue()
    rep.on_trial_start(0, [], broken)  # Tune retries an errored trial after --resume
    clock.now += 31
    rep.on_step_end(0, [])
    last = out.getvalue().splitlines()[-1]
    assert last.endswith(
        "3/100 trials ended (3 finished), 1 running; best val_acc 0.7000 (d2); time left unknown"
    )


@pytest.mark.ray
def test_real_tune_phase_beyond_the_threshold(tmp_path: Path) -> None:
    """Real Tune drives the reporter: its `setup` gives the size (8 trials x 3 lines > a 4-line screen),
    the failed trial's line names the error file Tune wrote, the diverged one is named, the best is the
    ranking's, and the last line counts every trial."""
    import ray
    from ray import tune

    def instant_trial(config: dict) -> None:  # defined here: Ray's workers get it by value
        """No cost: trial 3 raises, trial 5's loss is NaN, the others report 2 epochs."""
        if config["i"] == 3:
            raise RuntimeError("trial 3 broke")
        for epoch in (1, 2):
            loss = float("nan") if config["i"] == 5 else 1.0
            tune.report({"epoch": epoch, "val_acc": config["i"] / 10, "train_loss": loss})
            if loss != loss:
                return

    out = io.StringIO()
    rep = ConsoleReporter(2, "val_acc", "max", ["i"], out, screen_lines=4, period_s=0.5)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        tune.Tuner(
            tune.with_resources(instant_trial, {"cpu": 1}),
            param_space={"i": tune.grid_search(list(range(8)))},
            run_config=tune.RunConfig(
                storage_path=str(tmp_path), callbacks=[rep], verbose=0, failure_config=tune.FailureConfig(0)
            ),
        ).fit()
    finally:
        if started:
            ray.shutdown()
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("8 trials: more than a screenful of trial lines, so a progress line every "
                             "0.5 s and a line for each new best, failure and divergence (--verbose: every "
                             "trial event)")  # fmt: skip
    [failed] = [ln for ln in lines if "FAILED: " in ln]
    assert "RuntimeError: trial 3 broke" in failed
    assert Path(failed.split("(full log: ")[1].rstrip(")")).is_file()
    [div] = [ln for ln in lines if "DIVERGED" in ln]
    assert "DIVERGED at epoch 1: train_loss nan" in div
    assert " started " not in out.getvalue() and " epoch 1/2 " not in out.getvalue()
    final = r"8/8 trials ended \(6 finished, 1 diverged, 1 failed\), 0 running; best val_acc 0\.7000 \(\w+\)$"
    assert re.search(final, lines[-1]), lines[-1]


@pytest.mark.ray
def test_cli_console_is_quiet(cli_study: CliStudy) -> None:
    console = cli_study.console
    assert cli_study.returncode == 0, console[-3000:]
    noisy = [ln for ln in console.splitlines() if NOISE.search(ln)]
    assert noisy == [], "library noise on a healthy run:\n" + "\n".join(noisy)
    lines = console.splitlines()
    Path(os.environ.get("DYNCONV_CONSOLE_LOG", cli_study.tmp_path / "console.txt")).write_text(console)
    plan = next(
        i for i, ln in enumerate(lines) if ln.startswith("Study 'tiny': 2 trials of resnet18_dynamic")
    )
    assert plan <= 6, "the plan comes right after the data table"
    logs = next(ln for ln in lines if ln.lstrip().startswith("Ray logs"))
    assert Path(logs.split()[2]).is_dir(), "the Ray logs folder printed first exists"
    assert sum(" started " in ln for ln in lines) == 2
    assert any(re.search(r"epoch 1/2  val_acc \d\.\d{4} .* best so far", ln) for ln in lines)
    assert (
        sum(("finished" in ln or "stopped by the scheduler" in ln) for ln in lines if "] trial " in ln) == 2
    )
    assert any(ln.startswith("trial ") and "last val_acc" in ln for ln in lines), "the summary table"
    assert len(lines) < 40


# ------------------------------- the quickstart's evaluation times one subset (issue 31 item 4: its speed)


def test_speed_is_timed_only_on_the_subsets_the_spec_names() -> None:
    """`evaluate.speed_subsets`: the quickstart times RGB alone; another subset gets no latency or
    throughput (NaN, '-' in the table); a speed subset the evaluation skips is a one-line spec error."""
    import math

    import numpy as np
    import torch

    from dynconv.evaluation.results import SpeedConfig
    from dynconv.evaluation.speed import measure_speed, speed_config
    from dynconv.models import create_model
    from dynconv.spec import load_spec, parse_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "tune_jobs" / "quickstart.yaml")
    assert speed_config(spec.evaluate).subsets == ("RGB",)
    model = create_model("resnet18_dynamic", num_classes=3, stem="small", width=4)
    images = np.zeros((4, 3, 16, 16), dtype=np.uint8)  # the cache's layout: N x C x H x W
    fast = {"warmup": 0, "latency_iters": 1, "throughput_iters": 1, "throughput_batch": 4}
    timed = SpeedConfig(**fast, subsets=("RGB",))
    cpu = torch.device("cpu")
    assert all(math.isfinite(v) and v > 0 for v in measure_speed(model, images, "RGB", True, cpu, timed))
    assert all(math.isnan(v) for v in measure_speed(model, images, "RG", True, cpu, timed))
    assert all(math.isfinite(v) for v in measure_speed(model, images, "RG", True, cpu, SpeedConfig(**fast)))
    data = spec.to_json_dict()
    data["evaluate"].update(subsets=["RGB", "R"], speed_subsets=["G"])
    with pytest.raises(ValueError, match=r"speed_subsets \['G'\] not among the evaluated subsets \(RGB, R\)"):
        parse_spec(data)
