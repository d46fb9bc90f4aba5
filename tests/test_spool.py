"""The epoch-metric spool: unreachable server → spooled; replay lands each epoch once, even if repeated."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

from dynconv import tracking
from dynconv.tracking import spool
from dynconv.tune.incomplete import format_incomplete, incomplete_runs
from tests.mlflow_server import free_port


def _run(uri: str) -> str:
    exp = tracking.ensure_experiment(uri, "spool")
    parent = tracking.start_study_run(uri, exp, "spool", {})
    run_id, _ = tracking.ensure_child_run(uri, exp, parent, "trial", "t1", "t1")
    return run_id


def test_unreachable_server_spools_and_replay_lands_each_epoch_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = _run(uri)
    root = tmp_path / "storage" / spool.SPOOL_DIR
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert spool.log_epoch(uri, run_id, {"epoch": 1, "val_acc": 0.5}, 1, root)
    for epoch in (2, 3):
        assert not spool.log_epoch(down, run_id, {"epoch": epoch, "val_acc": 0.5 + epoch / 10}, epoch, root)
    assert spool.pending(root, run_id) == 2
    saved = tmp_path / "copy.jsonl"
    shutil.copy(root / f"{run_id}.jsonl", saved)

    assert spool.log_epoch(uri, run_id, {"epoch": 4, "val_acc": 0.9}, 4, root)  # replays 2, 3 first
    assert spool.pending(root, run_id) == 0
    shutil.copy(saved, root / f"{run_id}.claim-999-dead")  # a replay that died after sending
    assert spool.replay_all(uri, root, [run_id]) == {run_id: 2}

    c = tracking.client(uri)
    for key in ("epoch", "val_acc"):
        assert sorted(m.step for m in c.get_metric_history(run_id, key)) == [1, 2, 3, 4]
    assert not list(root.iterdir())


def test_summary_names_runs_missing_epochs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = _run(uri)
    for epoch in (1, 2):
        tracking.log_metrics(uri, run_id, {"epoch": epoch}, step=epoch)
    full = SimpleNamespace(trial_id="a", epochs=2, status="FINISHED", run_id=run_id)
    short = SimpleNamespace(trial_id="b", epochs=3, status="FINISHED", run_id=run_id)
    storage = str(tmp_path / "storage")
    assert incomplete_runs(uri, storage, [full]) == []
    assert format_incomplete([], 1) == "MLflow runs incomplete: none"
    lines = incomplete_runs(uri, storage, [full, short])
    assert lines == [f"{run_id} (trial b): epochs 3 missing"]
    assert format_incomplete(lines, 2).splitlines()[0] == "MLflow runs incomplete: 1 of 2"
