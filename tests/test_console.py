"""The console of `dynconv tune`: trial-event lines, no library noise, one clear line for a failed trial.

The unit tests drive `ConsoleReporter` with stand-in trials (no Ray). `test_cli_console_is_quiet` reads
the whole console of the real `dynconv tune` command on a 2-trial, 2-epoch study (1 worker per trial;
the `cli_study` fixture, shared with tests/test_study_lock.py).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from types import SimpleNamespace

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
