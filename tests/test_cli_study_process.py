"""`dynconv tune` runs its driver in a session of its own (`dynconv.cli.study_process`): every stop sent
to the command's process group reaches the driver once, as SIGINT, and the driver dies with the command.

A stand-in driver (a few lines of Python) instead of a study, so each case costs a fraction of a second;
the study itself is stopped this way in tests/test_interrupt_resume.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

# The command's side: run the stand-in driver through run_in_own_session, print its exit code.
COMMAND = textwrap.dedent(
    """
    import sys
    from dynconv.cli.study_process import run_in_own_session
    print("exit", run_in_own_session([sys.executable, "-c", sys.argv[1], sys.argv[2]]), flush=True)
    """
)
# The stand-in driver: record its session and each signal it gets; exit 130 on SIGINT, like the driver.
DRIVER = textwrap.dedent(
    """
    import os, signal, sys, time
    log = open(sys.argv[1], "a", buffering=1)
    log.write(f"sid {os.getsid(0)} pid {os.getpid()}\\n")
    def on(sig, _):
        log.write(f"got {signal.Signals(sig).name}\\n")
        if sig == signal.SIGINT:
            sys.exit(130)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on)
    while True:
        time.sleep(0.05)
    """
)


def _start(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "driver.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", COMMAND, DRIVER, str(log)],
        start_new_session=True,  # the command's own group, which the test signals as a whole
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (log.exists() and log.read_text().startswith("sid")):
        assert time.monotonic() < deadline and proc.poll() is None, "the stand-in driver never started"
        time.sleep(0.05)
    return proc, log


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_to_the_group_reaches_the_driver_once_as_sigint(sig: signal.Signals, tmp_path: Path) -> None:
    proc, log = _start(tmp_path)
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=30)
    first, *signals = log.read_text().splitlines()
    _, sid, _, pid = first.split()
    assert sid == pid and int(sid) != proc.pid, "the driver leads a session of its own, not the command's"
    assert signals == ["got SIGINT"], "the stop reached the driver once, as SIGINT"
    assert out.strip() == "exit 130"


def test_the_driver_dies_with_the_command(tmp_path: Path) -> None:
    """`kill -9` of the command still takes the study with it (PR_SET_PDEATHSIG)."""
    proc, log = _start(tmp_path)
    driver = int(log.read_text().split()[3])
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{driver}").exists() and _state(driver) != "Z":
        assert time.monotonic() < deadline, "the driver outlived the command"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@pytest.mark.parametrize(
    "argv",
    [["tune", "tune_jobs/quickstart.yaml"], ["confirm", "some-study", "--seeds", "2"]],
    ids=["tune", "confirm"],
)
def test_the_commands_that_drive_ray_run_their_driver_in_its_own_session(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both commands that start Ray under them hand the command line to the own-session runner."""
    import dynconv.cli as cli

    handed: list[list[str]] = []
    monkeypatch.setattr(cli, "run_study_process", lambda args: handed.append(args) or 7)
    monkeypatch.setattr(sys, "argv", ["dynconv", *argv])
    assert cli.main() == 7
    assert handed == [argv]
