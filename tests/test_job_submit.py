"""The cluster path exactly as docs/cluster.md documents it.

A local head started the way a cluster's head is (`ray start --head`, token authentication, the token in
a mode-600 file named by `RAY_AUTH_TOKEN_PATH`); then, from the root of a fresh `git clone` of this
repository, the documented command:

    RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 ray job submit --address http://127.0.0.1:PORT --working-dir . \\
        --runtime-env cluster/runtime_env.yaml -- dynconv tune tune_jobs/quickstart.yaml --set ...

The clone gets the ignored folders a working checkout has (`.venv`, `data/`, `mlruns/`, `ray_results/`,
`mlflow.db`) and one that changes while the job is submitted, so the allow-list in
`cluster/runtime_env.yaml` is exercised: the test checks that the package Ray unpacked on the head holds
exactly the tracked files of `dynconv/`, `tune_jobs/` and `pyproject.toml`. The quickstart spec is shrunk
with `--set` (tiny data, 2 epochs, 2 trials) so the job finishes in about a minute; the rest (job API,
token, working-dir upload, MLflow from the job) is the real path. Only committed code is cloned: commit
before running this test on a change to the shipped files.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from dynconv.tracking.layout import find_runs
from dynconv.tracking.store import client

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
# The command docs/cluster.md documents: its environment, then `ray job submit --address ADDRESS` and these
# arguments, with the quickstart spec and the `--set` overrides that shrink the study appended.
DOCUMENTED_ENV = {"RAY_RUNTIME_ENV_IGNORE_GITIGNORE": "1"}
DOCUMENTED = ["--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--", "dynconv", "tune"]
SHIPPED = ["dynconv", "tune_jobs", "pyproject.toml"]  # what cluster/runtime_env.yaml lets through


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _head_pids(temp_dir: str) -> list[int]:
    """Processes of the head whose temp dir is `temp_dir`: it is in their command line (Ray's daemons and
    workers) or in their environment (everything started under the head inherits RAY_AUTH_TOKEN_PATH)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if temp_dir.encode() in (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _stop_head(temp_dir: str) -> None:
    """Stop this module's head and nothing else: `ray stop --force` would SIGKILL every Ray on the machine
    (other test runs' too); this SIGKILLs only the processes of `temp_dir`'s head."""
    for pid in _head_pids(temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while _head_pids(temp_dir) and time.time() < deadline:
        time.sleep(0.1)


@pytest.fixture(scope="module")
def head():
    """A local Ray head started the way a cluster's head is, torn down after the module: yields its job
    API address, the environment of a user's shell as docs/cluster.md sets it up, its temp dir and the
    address `dynconv tune --address` takes (its GCS)."""
    temp_dir = tempfile.mkdtemp(prefix="rayh_", dir="/tmp")  # short: unix socket paths are length-limited
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    # Ray 2.60 secures clusters with a token; the job CLI sends it only when told the mode explicitly.
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token)
    port, dashboard, agent = _free_port(), _free_port(), _free_port()
    # A free agent port too: the default (52365) may still be held by an agent of a Ray killed earlier
    # on this machine (tests/test_interrupt_resume.py kills one), and then no job can be submitted.
    try:
        subprocess.run(
            [RAY, "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--num-cpus=2",
             f"--dashboard-agent-listen-port={agent}", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
             "--disable-usage-stats"],
            check=True, env=env, capture_output=True, timeout=120,
        )  # fmt: skip
        yield f"http://127.0.0.1:{dashboard}", env, Path(temp_dir), f"127.0.0.1:{port}"
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _clone(dest: Path) -> Path:
    """A fresh clone of this repository's HEAD, with the ignored folders a working checkout has."""
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout: the documented command runs from a clone of the repository")
    subprocess.run(["git", "clone", "--quiet", "--shared", str(ROOT), str(dest)], check=True, timeout=60)
    (dest / ".venv").symlink_to(Path(sys.prefix))  # a real environment: thousands of files, ~GBs
    for folder in ("data", "mlruns", "ray_results"):
        (dest / folder).mkdir()
        (dest / folder / "big.bin").write_bytes(os.urandom(1 << 20))
    (dest / "mlflow.db").write_bytes(b"not shipped")
    return dest


def _unpacked_files(temp_dir: Path) -> set[str]:
    """The files of the working-dir package Ray unpacked on the head (bytecode written there dropped)."""
    unpacked = temp_dir / "session_latest" / "runtime_resources" / "working_dir_files"
    [package] = [p for p in unpacked.glob("_ray_pkg_*") if p.is_dir()]  # next to it: its download lock
    return {
        str(p.relative_to(package))
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_documented_job_submit_runs_a_study_from_a_clone(head, tiny_dataset: Path, tmp_path: Path) -> None:
    address, env, temp_dir, _gcs = head
    repo = _clone(tmp_path / "repo")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = {
        "data.root": str(tiny_dataset),
        "data.cache_dir": str(tmp_path / "cache"),
        "data.image_size": "16",
        "model.args.width": "4",
        "train.epochs": "2",
        "train.batch_size": "16",
        "search.num_samples": "2",
        "scheduler.grace_period": "1",
        "evaluate.subsets": "[RGB,R]",
        "mlflow.tracking_uri": uri,
        "storage_path": str(tmp_path / "ray_results"),
    }
    sets = [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]
    submit_env = dict(env, **DOCUMENTED_ENV)

    # A file that keeps changing in the checkout while the job is submitted, as a local study's store or
    # results do: outside the allow-list it must not matter (it did for `--working-dir .` alone, whose two
    # hash walks then disagree: docs/reliability.md, Faults).
    done = threading.Event()

    def write_log() -> None:
        with open(repo / "ray_results" / "live.log", "a") as f:
            while not done.is_set():
                f.write("x\n")
                f.flush()
                time.sleep(0.001)

    writer = threading.Thread(target=write_log, daemon=True)
    writer.start()
    start = time.monotonic()
    try:
        for _ in range(12):  # the head's job agent may still be starting: Ray answers "No available agent"
            job = subprocess.run(
                [RAY, "job", "submit", "--address", address, *DOCUMENTED, "tune_jobs/quickstart.yaml", *sets],
                cwd=repo, env=submit_env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if "No available agent" not in job.stderr:
                break
            time.sleep(5)
    finally:
        done.set()
        writer.join()
    print(f"\nray job submit of the documented command: {time.monotonic() - start:.1f} s")
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout
    assert "last val_acc" in job.stdout and "Browse it with: dynconv ui" in job.stdout

    tracked = subprocess.run(
        ["git", "ls-files", *SHIPPED], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.split()
    assert _unpacked_files(temp_dir) == set(tracked)

    c = client(uri)
    exp = c.get_experiment_by_name("quickstart")
    studies = find_runs(uri, exp.experiment_id, role="study")
    assert [r.info.status for r in studies] == ["FINISHED"]
    trials = find_runs(uri, exp.experiment_id, role="trial")
    assert len(trials) == 2
    assert len(find_runs(uri, exp.experiment_id, role="evaluation")) == 1


def test_the_docs_show_the_command_this_module_runs() -> None:
    """Every `ray job submit` of a study in docs/cluster.md and README.md is the command run above."""
    prefix = " ".join(f"{k}={v}" for k, v in DOCUMENTED_ENV.items())
    expected = re.compile(
        re.escape(f"{prefix} ray job submit --address http://127.0.0.1:8265 {' '.join(DOCUMENTED)} ")
        + r"tune_jobs/\w+\.yaml"
    )
    for doc in ("docs/cluster.md", "README.md"):
        text = (ROOT / doc).read_text().replace("\\\n", " ")
        lines = [" ".join(line.split()) for line in text.splitlines()]
        commands = [line for line in lines if "ray job submit --address" in line]
        assert commands, doc
        for command in commands:
            assert expected.fullmatch(command), f"{doc}: {command}"


def test_a_token_head_joined_without_its_token_is_one_line_naming_the_token(head, monkeypatch) -> None:
    """Ray 2.60 secures a head with a token; a driver without RAY_AUTH_MODE=token got twenty
    InvalidAuthToken warnings and a ConnectionError blaming the network. Now: one line before any work,
    naming the setting; with the head's token the same check passes."""
    from dynconv.errors import AuthRefused
    from dynconv.tune.ray_address import check_ray_address

    _, env, _, gcs = head
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AuthRefused, match=f"the Ray cluster at {gcs} requires token authentication: set "
                       "RAY_AUTH_MODE=token"):  # fmt: skip
        check_ray_address(gcs)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-heads-token")
    with pytest.raises(AuthRefused, match="refused this driver's token"):
        check_ray_address(gcs)
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", env["RAY_AUTH_TOKEN_PATH"])
    check_ray_address(gcs)
