"""`dynconv tune` and `dynconv confirm` run their study driver in a child process of its own session.

Ray starts its GCS, raylet and dashboard as children of the driver, in the driver's process group.
They block SIGINT but not SIGTERM, so a SIGTERM sent to the command's whole process group (`timeout`,
a batch scheduler, a supervisor stopping a job) killed Ray's GCS under a driver that was still closing
its runs: the console ended in "Failed to connect to GCS within 60 seconds" and the study and its
trials stayed RUNNING in MLflow. The command now starts the driver in a session of its own and turns
every stop it receives (SIGINT, SIGTERM, SIGHUP) into one SIGINT to the driver, which then stops the
way Ctrl-C stops it (Tune saves its state, every run is closed, the resume hint is printed).

The driver dies with the command (`PR_SET_PDEATHSIG`), so `kill -9` of the command still takes the
study and the local Ray it started with it, as before. Only the command's own process does this, on
Linux: `dynconv.cli.main([...])` called from Python runs the study in the caller's process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

STUDY_COMMANDS = ("tune", "confirm")
"""The commands that drive Ray Tune (and so start Ray's GCS under them when no cluster is given)."""
CHILD_FLAG = "--study-process"
"""The hidden flag of those commands that marks the driver process itself."""
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the child, before it runs Python: SIGKILL when the command dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the command died before the request was in place
        os._exit(1)


def run_study_process(argv: list[str]) -> int:
    """Run `dynconv <argv> --study-process` in its own session (`run_in_own_session`); its exit code."""
    return run_in_own_session([sys.executable, "-m", "dynconv", *argv, CHILD_FLAG])


def run_in_own_session(command: list[str]) -> int:
    """Run `command` in a session of its own that dies with this process, turning every stop this
    process receives into one SIGINT to it; its exit code (128 + N when signal N ended it)."""
    parent = os.getpid()
    child = subprocess.Popen(command, start_new_session=True, preexec_fn=lambda: _die_with_parent(parent))

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)

    previous = {sig: signal.signal(sig, forward) for sig in STOPS}
    try:
        code = child.wait()  # a stop arriving meanwhile runs `forward`, then the wait goes on (PEP 475)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's 128 + signal number
