"""`dynconv ui`: the MLflow server on the study store, started so that it never outlives the command.
Imports `dynconv.errors`, `dynconv.tracking.layout` (the runs page's URL) and `spec` (lazily); MLflow
only as a child process.

`mlflow server` starts uvicorn workers (and, unless disabled, a job runner with huey consumers) as
child processes. We start it in its own process group and forward SIGINT/SIGTERM to the whole group, so
Ctrl-C, `kill -TERM` or a scheduler stopping `dynconv ui` stops every server process and frees the port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from dynconv.errors import DynconvError
from dynconv.tracking.layout import runs_page_url
from dynconv.tracking.store import masked

STOP_GRACE_S = 10.0


def check_port_free(host: str, port: int) -> None:
    """One clear line instead of uvicorn's traceback when something already listens on host:port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is fine
        try:
            sock.bind((host, port))
        except OSError as err:
            raise DynconvError(
                f"port {port} on {host} is busy ({err.strerror or err}): another MLflow UI? "
                "Stop it or choose another port with --port"
            ) from None


def server_command(host: str, port: int, workers: int) -> list[str]:
    """The `mlflow server` command line; the store comes in MLFLOW_BACKEND_STORE_URI (`serve`), so that
    a database password is not on a command line every user of the machine can read (`ps`)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def serve(uri: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> int:
    """Run the MLflow server in the foreground until it exits or we are signalled; returns its exit code."""
    if workers < 1:
        raise DynconvError(f"--workers must be at least 1, got {workers}")
    check_port_free(host, port)
    env = dict(os.environ)
    # The job runner (7 huey consumers) serves GenAI jobs (judges, trace rollups) that dynconv never uses.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env["MLFLOW_BACKEND_STORE_URI"] = uri  # read by `mlflow server --backend-store-uri` (its envvar)
    url = f"http://{host}:{port}"
    print(f"MLflow UI for {masked(uri)} at {url} (Ctrl-C to stop)", flush=True)
    print(f"  a study's runs table: {runs_page_url(url, '<experiment id>')}", flush=True)
    proc = subprocess.Popen(server_command(host, port, workers), env=env, start_new_session=True)
    stopping: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        _signal_group(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()  # the handler's signal interrupts nothing: wait() resumes after it
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_group(proc)
    if stopping:
        return 0
    if code != 0:
        raise DynconvError(f"the MLflow server exited with code {code} (its output is above)")
    return 0


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stop_group(proc: subprocess.Popen) -> None:
    """Whatever is left of the server's process group: SIGTERM, a grace period, then SIGKILL."""
    import time

    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    _signal_group(proc.pid, signal.SIGKILL)


def serve_ui(tracking_uri: str | None, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> int:
    """Run the MLflow UI on the study store in the foreground (Ctrl-C or SIGTERM stops all of it)."""
    from dynconv.spec import resolve_tracking_uri

    return serve(resolve_tracking_uri(tracking_uri), host=host, port=port, workers=workers)
