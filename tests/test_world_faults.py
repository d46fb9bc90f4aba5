"""When the world under a study breaks (issue 28): the study says what broke in one line, stops, and its
MLflow record stays true.

Before any work (no Ray, no data cache, no run created): a closed `--address`, `auto` without a
cluster, each tracking-URI form MLflow 3.17 refuses, an experiment in MLflow's trash. Then the record:
a study run left RUNNING by a driver that is gone is recognised by `confirm`, `evaluate` and
`--resume`; `--resume` of a finished study is refused. The token-authenticated head is in
tests/test_job_submit.py (it shares that module's head); the recorder's faults (a full disk, a store
deleted under it, a dropped write) in tests/test_recorder.py; whole studies meeting them below.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dynconv import cli
from dynconv.errors import DynconvError
from tests.conftest import tiny_spec_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def spec_file(tmp_path: Path, tiny_dataset: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict(tmp_path, tiny_dataset)))
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("dynconv") and "Traceback" not in err[0]
    return err[0]


def _nothing_made(tmp_path: Path) -> None:
    """Nothing of the study was created: no data cache, no run in the store (if a store exists)."""
    assert not (tmp_path / "cache").exists(), "refused after the data cache was built"
    db = tmp_path / "mlflow.db"
    if db.is_file():
        with sqlite3.connect(db) as con:
            tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
            assert "runs" not in tables or con.execute("select count(*) from runs").fetchone()[0] == 0


def test_no_cluster_at_the_address_is_one_line_in_seconds(spec_file, tmp_path, capsys) -> None:
    port = _closed_port()
    t0 = time.monotonic()
    line = _one_line(capsys, cli.main(["tune", str(spec_file), "--address", f"127.0.0.1:{port}"]))
    assert time.monotonic() - t0 < 10
    assert f"no Ray cluster answers at 127.0.0.1:{port} (Connection refused)" in line
    _nothing_made(tmp_path)


def test_address_auto_without_a_cluster_says_so(spec_file, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "no_ray"))
    line = _one_line(capsys, cli.main(["tune", str(spec_file), "--address", "auto"]))
    assert "--address auto: no Ray cluster was started on this machine" in line
    _nothing_made(tmp_path)


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("{tmp}/runs_dir", "is a file store (a directory of runs), which MLflow 3.17 no longer opens"),
        ("file://{tmp}/runs_dir", "is a file store"),
        ("x.db", "use sqlite:///{tmp}/x.db"),
        ("postgresql://u:secret@localhost/db", "the database driver 'psycopg' is not installed"),
        ("mysql://u:secret@localhost/db", "pip install"),
        ("sqlite://relative.db", "names no file: use sqlite:///RELATIVE/PATH.db"),
    ],
)
def test_store_forms_mlflow_refuses_are_one_line_before_any_work(
    form, expected, spec_file, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = form.format(tmp=tmp_path)
    line = _one_line(capsys, cli.main(["tune", str(spec_file), "--set", f"mlflow.tracking_uri={uri}"]))
    assert expected.format(tmp=tmp_path) in line and "secret" not in line
    _nothing_made(tmp_path)
    assert not (tmp_path / "runs_dir").exists() and not (tmp_path / "x.db").exists()


def test_mlflows_own_switch_keeps_a_file_store(monkeypatch) -> None:
    from dynconv.tracking.store import check_uri_form

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_uri_form("file:///tmp/somewhere")  # the user asked for it: MLflow opens it


def test_an_experiment_in_mlflows_trash_says_how_to_restore_it(spec_file, tmp_path, capsys) -> None:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = c.create_experiment("tiny")  # the study name is the default experiment
    c.delete_experiment(exp)
    capsys.readouterr()  # MLflow's own lines while this test made the store
    line = _one_line(capsys, cli.main(["tune", str(spec_file)]))
    assert f"MLflow experiment 'tiny' (id {exp}) is in MLflow's trash" in line
    assert f"mlflow experiments restore --experiment-id {exp}" in line
    _nothing_made(tmp_path)


def _wrapped_sqlite_error(con_uri: str, sql: str, tmp_path: Path) -> BaseException:
    """A real SQLite error, raised again as MLflow's sqlite store does: an MlflowException from
    SQLAlchemy's OperationalError, whose `orig` is the sqlite3 error with its result code."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    try:
        try:
            con = sqlite3.connect(con_uri, uri=True, timeout=0)
            con.execute(sql)
            con.commit()
        except sqlite3.Error as orig:
            raise OperationalError(sql, {}, orig) from orig
    except OperationalError as err:
        try:
            raise MlflowException(str(err), error_code="TEMPORARILY_UNAVAILABLE") from err
        except MlflowException as wrapped:
            return wrapped
    raise AssertionError("no error")


def test_faults_are_told_by_type_code_and_errno_never_by_text(tmp_path) -> None:
    import errno

    from mlflow.exceptions import MlflowException, RestException

    from dynconv.errors import (
        AuthRefused,
        DiskFull,
        ReadOnlyDisk,
        StoreBusy,
        StoreUnreachable,
    )
    from dynconv.tracking.faults import classify

    db = tmp_path / "s.db"
    with sqlite3.connect(db) as con:
        con.execute("create table t (x)")
    readonly = _wrapped_sqlite_error(f"{db.as_uri()}?mode=ro", "insert into t values (1)", tmp_path)
    holder = sqlite3.connect(db)
    holder.execute("begin exclusive")
    busy = _wrapped_sqlite_error(db.as_uri(), "insert into t values (1)", tmp_path)
    holder.rollback()
    missing_table = _wrapped_sqlite_error(db.as_uri(), "insert into nothing values (1)", tmp_path)
    uri, server = f"sqlite:///{db}", "http://127.0.0.1:5000"
    assert isinstance(classify(readonly, uri), ReadOnlyDisk)
    assert isinstance(classify(busy, uri), StoreBusy) and classify(busy, uri).transient
    assert classify(missing_table, uri) is None, "an error SQLite gives a store that is not busy"
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "mlartifacts" / "x"))
    assert isinstance(classify(full, uri), DiskFull)
    assert str(classify(full, uri)).startswith(f"disk full at {db}: ") and not classify(full, uri).transient
    assert isinstance(classify(OSError(errno.EROFS, "Read-only file system"), uri), ReadOnlyDisk)
    refused = RestException({"error_code": "UNAUTHENTICATED", "message": "who are you"})
    assert isinstance(classify(refused, server), AuthRefused) and not classify(refused, server).transient
    overloaded = RestException({"error_code": "BAD_REQUEST", "message": "QueuePool limit reached"})
    assert isinstance(classify(overloaded, server), StoreBusy)
    assert classify(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "x"}), server) is None
    try:
        import requests

        try:
            raise requests.exceptions.ConnectionError("refused")
        except requests.exceptions.ConnectionError:
            raise MlflowException(f"API request to {server} failed with exception refused")  # noqa: B904
    except MlflowException as down:
        assert isinstance(classify(down, server), StoreUnreachable) and classify(down, server).transient
    # Text alone decides nothing: MLflow's words for a lock, with no error behind them, are no fault.
    assert classify(MlflowException("(sqlite3.OperationalError) database is locked"), uri) is None


@pytest.fixture()
def dead_study(tmp_path: Path, tiny_dataset: Path):
    """A study run left RUNNING with one finished trial, as a driver killed after its trials leaves it."""
    from dynconv.spec import parse_spec
    from dynconv.tracking.layout import ensure_experiment
    from dynconv.tune.parent_run import open_parent_run
    from dynconv.tune.study_lock import study_lock

    data = tiny_spec_dict(tmp_path, tiny_dataset)
    spec = parse_spec(data).resolved()
    uri = spec.tracking_uri()
    with study_lock(spec.storage_uri(), spec.study):  # the driver that ran it held its lock, and died
        parent, _, tune_path = open_parent_run(
            spec, uri, ensure_experiment(uri, spec.experiment), resume=False
        )
    Path(tune_path).mkdir(parents=True)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    return spec, uri, parent


def test_a_study_left_running_by_a_dead_driver_is_closed_as_such(dead_study, capsys) -> None:
    """`evaluate` and `confirm` name the dead driver, close its run FAILED with that cause, and go on
    (here to their own one-line refusal: the driver died before it ranked the trials, so there is no
    ranking to evaluate or confirm from, and `--resume` is the way to one)."""
    from dynconv.tracking.store import client

    spec, uri, parent = dead_study
    for command in (["evaluate", spec.study], ["confirm", spec.study]):
        code = cli.main([*command, "--tracking-uri", uri])
        err = capsys.readouterr().err.strip().splitlines()
        if command[0] == "evaluate":
            assert err[0].startswith(f"dynconv: study run {parent} was left RUNNING by a driver that is gone")
        assert code == 2 and "recorded no ranking of its trials" in err[-1], err
        assert "finish it with: dynconv tune SPEC --resume" in err[-1]
    run = client(uri).get_run(parent)
    assert run.info.status == "FAILED" and run.data.tags["dynconv.failure"].startswith("driver gone")


def test_a_study_whose_driver_holds_its_lock_is_still_running(dead_study, capsys) -> None:
    """Its lock held, or no lock this machine can see (a study run on a cluster whose storage is not
    mounted here): still running, as far as anyone here can tell; nothing is closed."""
    from dynconv.tracking.store import client
    from dynconv.tune.study_lock import lock_path, study_lock

    spec, uri, parent = dead_study
    with study_lock(spec.storage_uri(), spec.study):
        code = cli.main(["confirm", spec.study, "--tracking-uri", uri])
    line = _one_line(capsys, code)
    assert f"study 'tiny' (run {parent}) is still running: confirm it once it ends" in line
    lock_path(spec.storage_uri(), spec.study).unlink()
    assert "still running" in _one_line(capsys, cli.main(["confirm", spec.study, "--tracking-uri", uri]))
    assert client(uri).get_run(parent).info.status == "RUNNING"


def test_resume_of_a_finished_study_is_refused_with_its_notes_kept(dead_study, capsys) -> None:
    from dynconv.tracking.layout import end_run, set_tags
    from dynconv.tracking.store import client

    spec, uri, parent = dead_study
    set_tags(uri, parent, {"mlflow.note.content": "confirmed: it holds"})
    end_run(uri, parent, "FINISHED")
    line = _one_line(
        capsys, cli.main(["tune", str(Path(spec.storage_uri()).parent / "tiny.yaml"), "--resume"])
    )
    assert f"--resume: study 'tiny' (run {parent}) finished: nothing to resume" in line
    assert client(uri).get_run(parent).data.tags["mlflow.note.content"] == "confirmed: it holds"


def test_resume_of_a_study_left_running_says_its_driver_is_gone(dead_study, capsys, monkeypatch) -> None:
    """--resume holds the lock, so a RUNNING study run is a dead driver's: said, then resumed (here the
    resume stops at its spec check, before any data or Ray)."""
    from dynconv.tune.study import run_study

    spec, _uri, parent = dead_study
    changed = spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 7})})
    with pytest.raises(DynconvError, match="spec changed since the study started"):
        run_study(changed, resume=True)
    err = capsys.readouterr().err
    assert f"study run {parent} was left RUNNING by a driver that is gone; resuming it" in err


def _dynconv(*args: str, cwd: Path, stdout_lines: int | None = None, timeout: float = 240):
    """`dynconv ARGS` in a child process, as a user runs it: (exit code, stdout, stderr)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynconv", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = []
    try:
        if stdout_lines is not None:
            for line in proc.stdout:
                out.append(line)
                if len(out) >= stdout_lines:
                    proc.stdout.close()
                    break
            err = proc.stderr.read()
            proc.wait(timeout=timeout)
        else:
            rest, err = proc.communicate(timeout=timeout)
            out.append(rest)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    return proc.returncode, "".join(out), err


def _statuses(uri: str) -> dict[str, int]:
    from dynconv.tracking.store import client

    runs = client(uri).search_runs([e.experiment_id for e in client(uri).search_experiments()])
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.info.status] = counts.get(r.info.status, 0) + 1
    return counts


def test_a_reader_gone_while_the_plan_prints_leaves_nothing_running(tmp_path, tiny_dataset) -> None:
    """`dynconv tune SPEC | head -3`: the plan's lines are still being printed (Ray has started, no trial
    has) when the reader goes away; the study stops as on Ctrl-C and its run is closed KILLED."""
    data = tiny_spec_dict(tmp_path, tiny_dataset, resources={"workers_per_trial": 1, "cpus_per_worker": 0.5})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    code, _out, err = _dynconv("tune", str(tmp_path / "tiny.yaml"), cwd=tmp_path, stdout_lines=3)
    assert code == 130 and "Traceback" not in err, err
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert _statuses(uri) == {"KILLED": 1}


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 4 MB tmpfs for the case (skipped where this user may not mount one, e.g. not root)."""
    where = tmp_path / "small_disk"
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): benchmarks/world_faults.py has the row")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_disk_that_fills_under_the_store_stops_the_study_with_its_runs_closed(
    small_disk, tmp_path, tiny_dataset
) -> None:
    """The store and Tune's storage on a 4 MB disk: the first write that finds it full stops the study
    (nothing retried, no wait) in one line, and the space held beside the store closes every run FAILED
    or KILLED with the cause."""
    from dynconv.tracking.store import client

    uri = f"sqlite:///{small_disk}/mlflow.db"
    data = tiny_spec_dict(tmp_path, tiny_dataset, resources={"workers_per_trial": 1, "cpus_per_worker": 0.5})
    data.update(
        mlflow={"tracking_uri": uri}, storage_path=str(small_disk / "rr"), evaluate={"enabled": False}
    )
    data["train"]["epochs"], data["search"]["num_samples"] = 3, 4
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    code, _out, err = _dynconv("tune", str(tmp_path / "tiny.yaml"), cwd=tmp_path, timeout=180)
    said = [ln for ln in err.splitlines() if ln.strip() and "img/s]" not in ln]  # not the decode bars
    assert code == 2 and "Traceback" not in err, err
    assert said[-1].startswith("dynconv: error: ") and "disk full at " in said[-1], said
    assert said[-1].endswith(": 0 MB free"), said
    assert "RUNNING" not in _statuses(uri)
    exp = client(uri).get_experiment_by_name("tiny").experiment_id
    [study] = client(uri).search_runs([exp], "tags.`dynconv.role` = 'study'")
    assert study.info.status == "FAILED" and "disk full" in study.data.tags["dynconv.failure"]
    assert not list(small_disk.glob(".dynconv-reserve-*")), "the space held is given back"
