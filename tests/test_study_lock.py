"""Same study twice (issue 15 item 5): a second driver of a running study refuses in one line.

The lock is an OS file lock that dies with its holder, so a SIGKILLed driver never blocks `--resume`.
Unit cases take ~1 s; the end-to-end case runs two real `dynconv tune` processes of one tiny spec
(the first a 1-trial, 1-epoch study, ~40 s on 2 cores).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from dynconv.errors import DynconvError
from dynconv.tune.study_lock import lock_path, study_lock
from tests.conftest import tiny_spec_dict

HOLDER = textwrap.dedent(
    """
    import sys, time
    from dynconv.tune.study_lock import study_lock
    with study_lock(sys.argv[1], "s"):
        print("held", flush=True)
        time.sleep(120)
    """
)


def _parent(pid: int) -> int:
    """The parent pid of `pid` (from /proc)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_lock_refuses_a_second_holder_and_dies_with_sigkill(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(DynconvError, match=rf"study 's' is already running \(pid {holder.pid} on "),
            study_lock(str(tmp_path), "s"),
        ):
            pass
        with study_lock(str(tmp_path), "other"):  # another study name is not blocked
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with study_lock(str(tmp_path), "s") as path:  # the kernel released the killed holder's lock
        assert path == lock_path(str(tmp_path), "s")
        assert f"pid {os.getpid()} " in path.read_text()
    with study_lock(str(tmp_path), "s"):  # and released ours at the end of the block
        pass
    assert lock_path("s3://bucket/x", "s") is None


@pytest.mark.ray
def test_second_dynconv_tune_of_a_running_study_refuses(tmp_path: Path, tiny_dataset: Path) -> None:
    data = tiny_spec_dict(
        tmp_path,
        tiny_dataset,
        train={"epochs": 1},
        scheduler={"name": "none"},
        search={"num_samples": 1},
        resources={"workers_per_trial": 1, "cpus_per_worker": 0.5, "driver_cpus": 0.1},
        evaluate={"enabled": False},
    )
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dynconv", "tune", str(spec)]
    first = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lock = lock_path(str(tmp_path / "ray_results"), "tiny")
        _wait_for(lambda: lock.exists() and "pid " in lock.read_text(), 60, "the first lock")
        holder = int(re.search(r"pid (\d+) ", lock.read_text()).group(1))
        # the command runs its study driver as its child (dynconv.cli.study_process): the driver holds it
        assert holder == first.pid or _parent(holder) == first.pid
        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        err = second.stderr.strip()
        assert second.returncode == 2 and len(err.splitlines()) == 1, err
        assert f"study 'tiny' is already running (pid {holder} on " in err
        assert first.poll() is None  # the first study goes on
        out, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out[-3000:]
    assert "FINISHED" in out
    tune_dirs = [
        p for p in (tmp_path / "ray_results").iterdir() if re.fullmatch(r"tiny-\d{8}-\d{6}-\w{6}", p.name)
    ]
    assert len(tune_dirs) == 1  # the second driver created no Tune experiment directory
