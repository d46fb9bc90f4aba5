"""Same study twice (issue 15 item 5): a second driver of a running study refuses in one line.

The lock is an OS file lock that dies with its holder, so a SIGKILLed driver never blocks `--resume`.
Unit cases take ~1 s; the end-to-end case reads two real `dynconv tune` processes of one tiny spec, the
second started while the first runs (the `cli_study` fixture, shared with tests/test_console.py).
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

from dynconv.errors import DynconvError
from dynconv.tune.study_lock import lock_path, study_lock
from tests.conftest import CliStudy

HOLDER = textwrap.dedent(
    """
    import sys, time
    from dynconv.tune.study_lock import study_lock
    with study_lock(sys.argv[1], "s"):
        print("held", flush=True)
        time.sleep(120)
    """
)


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
def test_second_dynconv_tune_of_a_running_study_refuses(cli_study: CliStudy) -> None:
    holder = cli_study.holder
    # the command runs its study driver as its child (dynconv.cli.study_process): the driver holds it
    assert cli_study.pid in (holder, cli_study.holder_parent)
    err = cli_study.second.stderr.strip()
    assert cli_study.second.returncode == 2 and len(err.splitlines()) == 1, err
    assert f"study 'tiny' is already running (pid {holder} on " in err
    assert cli_study.returncode == 0, cli_study.console[-3000:]  # the first study went on to its end
    assert "FINISHED" in cli_study.console
    tune_dirs = [
        p
        for p in (cli_study.tmp_path / "ray_results").iterdir()
        if re.fullmatch(r"tiny-\d{8}-\d{6}-\w{6}", p.name)
    ]
    assert len(tune_dirs) == 1  # the second driver created no Tune experiment directory
