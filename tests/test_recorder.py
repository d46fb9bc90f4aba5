"""The study driver's record of its trials (`dynconv.tune.recorder`, `dynconv.tracking.retry.QueuedWriter`).

Driven by Tune's callback events with stand-in trials on a real sqlite store, without starting Ray:
what each event writes, the outcome each ending gets, writes held through an outage, and what a
resumed study reconciles. The same callback under a real Tune is covered by test_tune_smoke,
test_interrupt_resume and test_mlflow_outage.
"""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dynconv.errors import DiskFull, StoreGone
from dynconv.spec import parse_spec
from dynconv.spec.metrics import error_result
from dynconv.tracking.find import metric_history
from dynconv.tracking.layout import TAG_PARENT, TAG_TRIAL_ID, ensure_experiment, find_runs, start_study_run
from dynconv.tracking.retry import QueuedWriter
from dynconv.tracking.store import client
from dynconv.tune.recorder import TrialRecorder
from tests.conftest import tiny_spec_dict

EPOCHS = 3


class FakeTrial(SimpleNamespace):
    """What the recorder reads of a Tune trial."""

    error: BaseException | None = None  # what the trial raised (Tune pickles it into its trial dir)

    def __str__(self) -> str:
        return f"run_trial_{self.trial_id}"

    def get_pickled_error(self) -> BaseException | None:
        return self.error


def _trial(trial_id: str, path: Path, status: str = "RUNNING") -> FakeTrial:
    return FakeTrial(trial_id=trial_id, config={"lr": 0.05}, path=str(path), last_result={}, status=status)


def _metrics(epoch: int) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 0.1 * epoch}


def _result(trial: FakeTrial, epoch: int, history: list | None = None) -> dict:
    """A result as Tune hands it to callbacks, with a checkpoint holding the epoch's history."""
    name = f"checkpoint_{epoch:06d}"
    (Path(trial.path) / name).mkdir(parents=True, exist_ok=True)
    state = {"epoch": epoch, "history": history or [_metrics(e) for e in range(1, epoch + 1)]}
    torch.save(state, Path(trial.path) / name / "state.pt")
    result = {**_metrics(epoch), "training_iteration": epoch, "timestamp": 0, "done": False}
    result.update(checkpoint_dir_name=name, trial_id=trial.trial_id, pid=1, config={"lr": 0.05})
    trial.last_result = result
    return result


@pytest.fixture()
def study(tmp_path: Path, tiny_dataset: Path) -> SimpleNamespace:
    data = tiny_spec_dict(tmp_path, tiny_dataset, train={"epochs": EPOCHS})
    spec = parse_spec(data).resolved()
    uri = spec.tracking_uri()
    exp = ensure_experiment(uri, spec.experiment)
    parent = start_study_run(uri, exp, spec.study, {})
    recorder = TrialRecorder(uri, exp, parent, spec, num_classes=3)
    return SimpleNamespace(spec=spec, uri=uri, exp=exp, parent=parent, recorder=recorder, tmp=tmp_path)


def _runs(s: SimpleNamespace) -> dict[str, object]:
    return {r.data.tags[TAG_TRIAL_ID]: r for r in find_runs(s.uri, s.exp, role="trial")}


def _epochs(s: SimpleNamespace, run) -> list[int]:
    return sorted(metric_history(s.uri, run.info.run_id, "epoch"))


def test_each_event_writes_its_part_and_each_ending_its_outcome(study, capsys) -> None:
    rec = study.recorder
    full, stopped, failed, interrupted = (_trial(t, study.tmp / t) for t in ("full", "asha", "bad", "cut"))
    rec.on_step_begin(0, trials=[full, stopped, failed, interrupted])
    for t in (full, stopped, failed, interrupted):
        rec.on_trial_start(0, [], t)
    for e in range(1, EPOCHS + 1):
        rec.on_trial_result(0, [], full, _result(full, e))
    rec.on_trial_complete(0, [], full)
    rec.on_trial_result(0, [], stopped, _result(stopped, 1))
    rec.on_trial_complete(0, [], stopped)
    rec.on_trial_error(0, [], failed)
    rec.on_trial_result(0, [], interrupted, _result(interrupted, 1))
    rec.on_experiment_end(trials=[full, stopped, failed, interrupted])
    assert "MLflow runs incomplete: none" in capsys.readouterr().out

    runs = _runs(study)
    assert set(runs) == {"full", "asha", "bad", "cut"}
    ends = {t: (r.info.status, r.data.tags.get("dynconv.outcome")) for t, r in runs.items()}
    assert ends == {
        "full": ("FINISHED", "finished"),
        "asha": ("FINISHED", "stopped_early"),
        "bad": ("FAILED", "failed"),
        "cut": ("KILLED", "interrupted"),
    }
    run = runs["full"]
    assert run.data.tags[TAG_PARENT] == study.parent
    assert run.info.run_name == "run_trial_full"
    assert run.data.params["lr"] == "0.05" and run.data.params["train.epochs"] == str(EPOCHS)
    assert run.data.metrics["flops"] > 0 and run.data.metrics["params"] > 0
    assert _epochs(study, run) == [1, 2, 3]
    assert metric_history(study.uri, run.info.run_id, "val_acc")[2] == pytest.approx(0.2)
    assert "training_iteration" not in run.data.metrics and "timestamp" not in run.data.metrics
    assert run.data.tags["dynconv.epochs_done"] == str(EPOCHS)
    c = client(study.uri)
    assert [a.path for a in c.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/state.pt"]


def test_results_are_logged_at_the_time_they_arrive_whatever_the_store_does(study) -> None:
    """Tune's loop never waits for MLflow: a stalled store holds the writes, they land later, stamped
    with the time the driver received them."""
    rec, trial = study.recorder, _trial("slow", study.tmp / "slow")
    gate = threading.Event()
    rec.writer.submit("other", gate.wait, "a write stuck on a stalled store")
    rec.on_trial_start(0, [], trial)
    t0 = time.monotonic()
    heard = int(time.time() * 1000)
    rec.on_trial_result(0, [], trial, _result(trial, 1))
    assert time.monotonic() - t0 < 1.0, "the event returned without waiting for the store"
    assert rec.writer.pending() == {"other": 1, "slow": 2}  # its run, its epoch
    time.sleep(0.3)
    gate.set()
    assert rec.writer.flush(30)
    (m,) = client(study.uri).get_metric_history(_runs(study)["slow"].info.run_id, "epoch")
    assert heard <= m.timestamp < heard + 300


def test_writer_retries_an_unreachable_store_and_drops_what_the_store_refuses() -> None:
    done: list[str] = []
    fails = iter([ConnectionRefusedError("refused"), ConnectionRefusedError("refused")])

    def flaky() -> None:
        err = next(fails, None)
        if err is not None:
            raise err
        done.append("flaky")

    def refused() -> None:
        raise ValueError("INVALID_PARAMETER_VALUE: bad")

    w = QueuedWriter()
    w.submit("a", flaky, "flaky write")
    w.submit("a", refused, "refused write")
    w.submit("b", lambda: done.append("after"), "later write")
    assert w.flush(30)
    assert done == ["flaky", "after"], "retried until it landed, in order"
    assert w.failed == {"a": ["refused write: INVALID_PARAMETER_VALUE: bad"]}

    stuck = QueuedWriter()
    stuck.submit("c", lambda: (_ for _ in ()).throw(ConnectionRefusedError("down")), "never lands")
    assert not stuck.flush(0.5)
    assert stuck.pending() == {"c": 1} and stuck.waiting_for_store_s() > 0


def test_a_run_that_lost_a_write_closes_failed_incomplete(study) -> None:
    """Complete or absent: a trial whose epoch the store refused is not FINISHED, and says what it lost."""
    rec, trial = study.recorder, _trial("lossy", study.tmp / "lossy")
    rec.on_trial_start(0, [], trial)
    rec.on_trial_result(0, [], trial, _result(trial, 1))
    rec.writer.submit("lossy", lambda: (_ for _ in ()).throw(ValueError("refused value")), "epoch 2")
    rec.on_trial_result(0, [], trial, _result(trial, 3))
    rec.on_trial_complete(0, [], trial)
    assert rec.writer.flush(30)
    run = _runs(study)["lossy"]
    assert (run.info.status, run.data.tags["dynconv.outcome"]) == ("FAILED", "incomplete")
    assert run.data.tags["dynconv.error"] == "MLflow lost: epoch 2: refused value"


def test_a_full_disk_stops_the_writer_and_the_study_in_one_line(study, capsys) -> None:
    """A permanent fault is not retried: the writer keeps it, tries nothing after it, drains at once,
    and the recorder's stopper ends the whole study."""
    rec, trial = study.recorder, _trial("t", study.tmp / "t")
    stopper = rec.stopper()
    rec.on_trial_start(0, [], trial)
    assert rec.writer.flush(30) and not stopper.stop_all()
    tried: list[str] = []

    def full() -> None:
        tried.append("full")
        raise OSError(28, "No space left on device", str(study.tmp / "mlflow.db"))

    rec.writer.submit("t", full, "epoch 1")
    for what in ("epoch 2", "epoch 3"):
        rec.writer.submit("t", lambda w=what: tried.append(w), what)
    t0 = time.monotonic()
    assert rec.writer.flush(30) and time.monotonic() - t0 < 5, "nothing waits for a full disk"
    assert tried == ["full"], "the writes after a permanent fault are not tried"
    assert isinstance(rec.fault, DiskFull) and stopper.stop_all()
    assert str(rec.fault).startswith(f"disk full at {study.tmp / 'mlflow.db'}: ") and "MB free" in str(
        rec.fault
    )
    assert rec.writer.incomplete("t") == [f"epoch 1: {rec.fault}", "2 writes not tried"]
    rec.on_experiment_end(trials=[trial])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("MLflow writes stopped: disk full at "), out


def test_a_store_file_deleted_under_the_study_is_gone_not_busy(study) -> None:
    """MLflow would make a new empty file and fail with 'no such table' (retried as a busy store for
    minutes before): the watch sees another file, and the writer stops at the first failure."""
    rec, trial = study.recorder, _trial("t", study.tmp / "t")
    rec.on_trial_start(0, [], trial)
    assert rec.writer.flush(30)
    (study.tmp / "mlflow.db").unlink()
    rec.on_trial_result(0, [], trial, _result(trial, 1))
    t0 = time.monotonic()
    assert rec.writer.flush(60) and time.monotonic() - t0 < 10
    assert isinstance(rec.fault, StoreGone) and "was deleted or replaced" in str(rec.fault)


def test_a_trial_that_met_a_full_disk_stops_the_study(study) -> None:
    """From its last result (a one-worker trial reports the fault's kind), or from what it raised (a
    DDP trial: Tune keeps the exception)."""
    rec = study.recorder
    reported, raised = _trial("reported", study.tmp / "r"), _trial("raised", study.tmp / "d")
    for t in (reported, raised):
        rec.on_trial_start(0, [], t)
    rec.on_trial_result(0, [], reported, error_result(["val_acc"], "disk full at /x: 0 MB free", "disk_full"))
    assert isinstance(rec.fault, DiskFull) and rec.stopper().stop_all()

    other = TrialRecorder(study.uri, study.exp, study.parent, study.spec, num_classes=3)
    try:
        raise RuntimeError("worker group failed") from OSError(28, "No space left on device")
    except RuntimeError as err:
        raised.error = err
    other.on_trial_start(0, [], raised)
    other.on_trial_error(0, [], raised)
    assert isinstance(other.fault, DiskFull) and str(other.fault).startswith("trial raised: disk full at ")


def test_a_resumed_study_adopts_closes_orphans_and_fills_in_missing_epochs(study) -> None:
    """After a killed driver: MLflow holds what the old driver wrote; the restored recorder (a fresh
    copy, as Tune unpickles it) adopts the runs of known trials, closes the one Tune lost, closes a
    trial Tune knows as ended, and logs the epochs nobody received from the next checkpoint."""
    first = study.recorder
    ran, lost, ended = (_trial(t, study.tmp / t) for t in ("ran", "lost", "ended"))
    first.on_step_begin(0, trials=[ran, lost, ended])
    for t in (ran, lost, ended):
        first.on_trial_start(0, [], t)
    first.on_trial_result(0, [], ran, _result(ran, 1))
    first.on_trial_result(0, [], ended, _result(ended, 1))
    assert first.writer.flush(30)  # ... and then the driver is SIGKILLed: nothing is closed

    resumed = TrialRecorder(study.uri, study.exp, study.parent, study.spec, num_classes=3)
    ended.status = "TERMINATED"
    _result(ended, EPOCHS)  # it ran to the end after Tune's last report reached the old driver
    resumed.on_step_begin(0, trials=[ran, ended])
    resumed.on_trial_start(0, [], ran)
    # the orphaned worker trained epoch 2 that no driver saw; the resumed trial reports epoch 3
    resumed.on_trial_result(0, [], ran, _result(ran, 3))
    resumed.on_trial_complete(0, [], ran)
    assert resumed.writer.flush(30)

    runs = _runs(study)
    assert (runs["lost"].info.status, runs["lost"].data.tags["dynconv.outcome"]) == ("KILLED", "orphaned")
    assert runs["ran"].info.status == "FINISHED" and _epochs(study, runs["ran"]) == [1, 2, 3]
    assert runs["ended"].info.status == "FINISHED" and _epochs(study, runs["ended"]) == [1, 2, 3]
    history = client(study.uri).get_metric_history(runs["ran"].info.run_id, "epoch")
    assert len(history) == EPOCHS, "every epoch once"


def test_trial_and_worker_code_write_nothing_to_mlflow() -> None:
    """Trials and Ray Train workers only report to Tune: no module they run imports a tracking writer."""
    package = Path(__file__).resolve().parents[1] / "dynconv"
    trial_side = [package / "tune" / "trial.py", *(package / "train").glob("*.py")]
    for path in trial_side:
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        assert not {m for m in imported if m.startswith(("dynconv.tracking", "mlflow"))}, path.name


def test_the_searcher_knows_stopped_trials_and_keeps_them_across_a_resume(tmp_path: Path) -> None:
    """A trial stopped before its last epoch is PRUNED for Optuna (at its last value), one that ran all
    epochs COMPLETE; intermediate values go in at step = epoch; the saved and restored searcher (what
    `--resume` gets) holds both before it suggests the next trial."""
    import optuna
    from optuna.trial import TrialState
    from ray import tune

    from dynconv.tune.searcher import EpochOptunaSearch

    def searcher() -> EpochOptunaSearch:
        s = EpochOptunaSearch(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=1), epochs=EPOCHS)
        s.set_search_properties("val_acc", "max", {"lr": tune.loguniform(0.01, 0.2)})
        return s

    first = searcher()
    first.suggest("full"), first.suggest("asha")
    for epoch in range(1, EPOCHS + 1):
        first.on_trial_result("full", {"val_acc": 0.2 * epoch, "epoch": epoch, "training_iteration": 1})
    first.on_trial_complete("full", {"val_acc": 0.6, "epoch": EPOCHS})
    first.on_trial_result("asha", {"val_acc": 0.1, "epoch": 1, "training_iteration": 1})
    first.on_trial_complete("asha", {"val_acc": 0.1, "epoch": 1})
    full, asha = first.optuna_study.trials
    assert (full.state, full.value) == (TrialState.COMPLETE, 0.6)
    assert full.intermediate_values == pytest.approx({1: 0.2, 2: 0.4, 3: 0.6})
    assert (asha.state, asha.intermediate_values) == (TrialState.PRUNED, {1: 0.1})

    first.save_to_dir(str(tmp_path))
    resumed = searcher()
    resumed.restore_from_dir(str(tmp_path))
    assert [t.state for t in resumed.optuna_study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert resumed.suggest("next")["lr"] > 0
    assert len(resumed.optuna_study.trials) == 3


def test_a_diverged_trial_is_stopped_closed_failed_and_pruned(study, capsys) -> None:
    """A NaN loss ends the trial: Tune's stopper stops it, its run is FAILED with outcome `diverged`,
    the console says so in one line, and Optuna hears PRUNED (a NaN value would leave it running)."""
    import optuna
    from optuna.trial import TrialState
    from ray import tune

    from dynconv.tune.callbacks import ConsoleReporter
    from dynconv.tune.search import stop_diverged
    from dynconv.tune.searcher import EpochOptunaSearch

    trial = _trial("nan", study.tmp / "nan")
    rec, console = study.recorder, ConsoleReporter(EPOCHS, "val_acc", "max", ["lr"])
    searcher = EpochOptunaSearch(sampler=optuna.samplers.RandomSampler(seed=0), epochs=EPOCHS)
    searcher.set_search_properties("val_acc", "max", {"lr": tune.loguniform(0.01, 0.2)})
    searcher.suggest("nan")
    rec.on_trial_start(0, [], trial)
    ok = _result(trial, 1)
    assert not stop_diverged("nan", ok)
    searcher.on_trial_result("nan", ok)
    bad = {**_result(trial, 2), "train_loss": float("nan"), "val_loss": float("inf")}
    trial.last_result = bad
    assert stop_diverged("nan", bad)
    rec.on_trial_result(0, [], trial, bad)
    console.on_trial_result(0, [], trial, bad)
    rec.on_trial_complete(0, [], trial)
    console.on_trial_complete(0, [], trial)
    searcher.on_trial_complete("nan", bad)
    assert rec.writer.flush(30)

    run = _runs(study)["nan"]
    assert (run.info.status, run.data.tags["dynconv.outcome"]) == ("FAILED", "diverged")
    assert run.data.tags["dynconv.epochs_done"] == "2"
    assert "DIVERGED at epoch 2: train_loss nan; not ranked, not evaluated" in capsys.readouterr().out
    (told,) = searcher.optuna_study.trials
    assert told.state == TrialState.PRUNED
