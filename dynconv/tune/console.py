"""What `dynconv tune` prints and how it stops: a short plan, one line per trial event, the tables; Ray's
logs stay on disk; SIGTERM stops a fit the way Ctrl-C does.

By default the study driver keeps Ray, Tune, Optuna and MLflow quiet: worker output is not forwarded
(`log_to_driver=False`; every worker's stdout/stderr stays under the Ray session's `logs/` folder, whose
path is the first thing printed), Tune's progress tables are off (`verbose=0`) and the `ConsoleReporter`
callback prints the trial events instead. `--verbose` restores Ray/Tune's own reporting.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynconv.errors import disk_fault, one_line
from dynconv.spec import JobSpec
from dynconv.spec.ranking import Ranking

# Tune logs a trial's traceback when it fails; the ConsoleReporter prints one line + the error file instead.
_TUNE_DUPLICATES = ("Trial task failed for trial", "Trials did not complete")


class _DropTuneDuplicates(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TUNE_DUPLICATES)


class _OneLineDiskFaults(logging.Filter):
    """Tune logs a failed save of its experiment state with the traceback; when a full or read-only
    disk failed it, one line names the disk (the study stops on that fault: `dynconv.tune.recorder`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fault = disk_fault(record.exc_info[1]) if record.exc_info and record.exc_info[1] else None
        if fault is not None:
            record.msg, record.args = f"Tune could not save its experiment state: {one_line(fault)}", None
            record.exc_info = record.exc_text = None
        return True


def quiet_libraries(verbose: bool) -> None:
    """Before Ray starts: keep library chatter of a healthy run off the console (ERRORs still pass):
    MLflow's and Optuna's INFO lines, and Tune's traceback of a failed trial (the ConsoleReporter prints
    one line and the error file instead). Their environment settings are `dynconv.environment`'s."""
    if verbose:
        return
    import optuna

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("ray.tune", "ray.tune.execution.tune_controller", "ray.tune.tune"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropTuneDuplicates) for f in log.filters):
            log.addFilter(_DropTuneDuplicates())
    state = logging.getLogger("ray.tune.execution.experiment_state")
    if not any(isinstance(f, _OneLineDiskFaults) for f in state.filters):
        state.addFilter(_OneLineDiskFaults())


def ray_init_kwargs(verbose: bool) -> dict[str, Any]:
    """`ray.init` options: worker logs stay on disk and Ray's driver logging shows errors only.

    A local Ray's dashboard listens on a port the OS picks (`dashboard_port=0`) instead of taking 8265
    whenever it is free, which left anything else needing 8265 (another Ray, `ray job submit`'s default
    address) failing while a study ran. The dashboard stays on: without it Ray Train never releases the
    resources of trials stopped early. Its address is on `ray.init`'s context (`dashboard_url`). Ray
    ignores the option when it joins a running cluster (`--address`).
    """
    if verbose:
        return {"logging_level": "WARNING", "log_to_driver": True, "dashboard_port": 0}
    return {"logging_level": "ERROR", "log_to_driver": False, "dashboard_port": 0}


def ray_logs_dir(session_dir: str | None) -> str:
    """Where this Ray's logs are: the local session's `logs/` (its session directory, as `ray.init`
    returned it), or Ray's documented default location on the head node."""
    if session_dir:
        return str(Path(session_dir) / "logs")
    return "/tmp/ray/session_latest/logs (on the head node)"


def format_plan(spec: JobSpec, data: Any, resources: str, cluster: dict[str, float], where: dict) -> str:
    """The first lines of a study: what it trains on what, how many trials, where logs and results go.

    The dataset's path and per-split table are printed just above by the data cache. `resources` is
    `dynconv.tune.resources.describe_trial_resources`: what a trial reserves and how many run at once.
    """
    s = spec.search
    args = ", ".join(f"{k}={v}" for k, v in spec.model.args.items())
    sched = "ASHA" if spec.scheduler.name == "asha" else "no early stopping"
    n = data.counts
    ranked_on = Ranking.for_spec(spec).describe()
    cpus = f"{cluster.get('CPU', 0):g} CPUs" + (f", {cluster['GPU']:g} GPUs" if cluster.get("GPU") else "")
    return "\n".join(
        [
            f"Study {spec.study!r}: {s.num_samples} trials of {spec.model.name}({args}) "
            f"on {data.num_classes} classes ({n.get('train', 0)} train / {n.get('val', 0)} val images, "
            f"{data.size} px), "
            f"{spec.train.epochs} epochs, {s.algorithm.upper()} + {sched} on {ranked_on}",
            f"  resources {resources}; Ray {where['ray']} ({cpus})"
            + (f", dashboard {where['dashboard']}" if where.get("dashboard") else ""),
            f"  MLflow    experiment {spec.experiment!r}, study run {where['run']} in {where['uri']}",
            f"  Ray logs  {where['logs']}  (Tune state: {where['tune_path']}; --verbose shows them here)",
        ]
    )


@contextlib.contextmanager
def sigterm_as_sigint() -> Iterator[None]:
    """Let SIGTERM (a scheduler or `kill`) stop the study the way Ctrl-C does: Tune saves its state first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
