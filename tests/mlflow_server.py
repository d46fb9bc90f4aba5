"""A local `mlflow server` process for fault tests: temp sqlite backend, temp artifact root, one worker.

Started in its own process group so that `stop` ends the CLI and the uvicorn process it launches, and
`start` can bring it back on the same port over the same store (an outage, not a new server).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`python -m mlflow server` on 127.0.0.1:`port` with its store under `root`."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self, timeout_s: float = 90.0) -> float:
        """Start and wait until /health answers; returns the seconds it took."""
        t0 = time.monotonic()
        cmd = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.root}/server.db",
            "--default-artifact-root", str(self.root / "artifacts"), "--workers", "1",
        ]  # fmt: skip
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        log.close()
        while time.monotonic() - t0 < timeout_s:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"mlflow server did not answer within {timeout_s} s")

    def stop(self) -> None:
        """Kill the server's whole process group (the CLI and its uvicorn child) and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None
