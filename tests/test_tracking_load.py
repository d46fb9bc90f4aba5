"""Many trials logging to one tracking store at once: nothing lost, nothing doubled, no lock errors shown.

The load is made by dynconv's own tracking functions, called the way a study driver's recorder calls
them for a trial (`ensure_child_run`, then `log_metrics` once per epoch with step = epoch, then
`end_run`), from 16 processes at once (16 studies or commands sharing one store) and without the
seconds of training between epochs, i.e. far above the rate real trials reach. Processes are forked
after `mlflow` is imported, so the 16 "trials" cost no interpreter start-up; no Ray is started.
`benchmarks/tracking_load.py` measures where each store stops keeping up.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

from dynconv.tracking.layout import (
    TAG_PARENT,
    end_run,
    ensure_child_run,
    ensure_experiment,
    find_runs,
    log_metrics,
    start_study_run,
)
from dynconv.tracking.store import client
from tests.mlflow_server import MlflowServer

TRIALS = 16
EPOCHS = 8
METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_s")


def _trial(uri: str, exp_id: str, parent: str, idx: int, epochs: int, start: Any, err_path: str) -> None:
    """One simulated trial in a forked process; stderr goes to `err_path`, exceptions end in exit 1."""
    fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 2)
    sys.stderr = open(err_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore._engine_map.clear()  # never share the parent's sqlite connections across fork
    try:
        start.wait()
        key = f"trial_{idx:02d}"
        run_id, _ = ensure_child_run(uri, exp_id, parent, "trial", key, key)
        for epoch in range(1, epochs + 1):
            values = {m: epoch + idx / 100 + j / 1000 for j, m in enumerate(METRICS)}
            values["epoch"] = epoch
            log_metrics(uri, run_id, values, step=epoch)
        end_run(uri, run_id, "FINISHED")
    except BaseException as err:  # reported through the exit code and the stderr file
        print(f"trial {idx} failed: {type(err).__name__}: {err}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)
    sys.stderr.flush()
    os._exit(0)


def run_load(uri: str, workdir: Path, trials: int, epochs: int) -> dict[str, Any]:
    """Drive `trials` concurrent trial loggers against `uri`; returns exit codes, stderr texts, seconds."""
    exp_id = ensure_experiment(uri, "load")
    parent = start_study_run(uri, exp_id, "load", {"trials": trials})
    ctx = mp.get_context("fork")
    start = ctx.Event()
    procs, errs = [], []
    for i in range(trials):
        errs.append(workdir / f"trial_{i:02d}.stderr")
        procs.append(ctx.Process(target=_trial, args=(uri, exp_id, parent, i, epochs, start, str(errs[-1]))))
        procs[-1].start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    start.set()
    for p in procs:
        p.join(timeout=600)
    seconds = time.perf_counter() - t0
    return {
        "exp_id": exp_id,
        "parent": parent,
        "exit_codes": [p.exitcode for p in procs],
        "stderr": [e.read_text() if e.exists() else "" for e in errs],
        "seconds": seconds,
    }


def _assert_nothing_lost(uri: str, load: dict[str, Any]) -> None:
    stderr = "\n".join(load["stderr"])
    assert load["exit_codes"] == [0] * TRIALS, stderr[-4000:]
    assert "database is locked" not in stderr.lower()
    c = client(uri)
    runs = find_runs(uri, load["exp_id"], role="trial")
    assert len(runs) == TRIALS, "one run per trial, none doubled"
    assert {r.data.tags[TAG_PARENT] for r in runs} == {load["parent"]}
    assert [r.info.status for r in runs] == ["FINISHED"] * TRIALS
    for run in runs:
        for metric in METRICS:
            steps = [m.step for m in c.get_metric_history(run.info.run_id, metric)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), f"{metric} of {run.info.run_name}: {steps}"
    calls = TRIALS * (EPOCHS + 3)
    print(f"\n{TRIALS} trials × {EPOCHS} epochs × {len(METRICS)} metrics in {load['seconds']:.1f} s "
          f"({calls / load['seconds']:.0f} store calls/s)")  # fmt: skip


def test_sixteen_trials_logging_at_once_to_sqlite(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _assert_nothing_lost(uri, run_load(uri, tmp_path, TRIALS, EPOCHS))


def test_sixteen_trials_logging_at_once_to_a_server(tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "server")
    server.start()
    try:
        _assert_nothing_lost(server.url, run_load(server.url, tmp_path, TRIALS, EPOCHS))
    finally:
        server.stop()
