"""The environment variables dynconv sets for the libraries it drives: all of them, in this one place.

Ray, Tune and MLflow read these settings from the process environment. dynconv sets each once, when
the process starts (`set_library_environment`: the `dynconv` command line before it runs a command, and
`dynconv.tune.study.run_study` for a study started from Python), only where the user has not set it,
and never changes one around a call. Settings a study hands to Ray's workers travel in the job's
runtime environment instead (`dynconv.tune.study`); nothing else in dynconv writes `os.environ`.
"""

from __future__ import annotations

import os

TUNE_STATE_PERIOD_S = 1
"""Seconds between saves of Tune's experiment state: all that a SIGKILLed study driver can lose."""

ALWAYS: dict[str, tuple[str, str]] = {
    "TUNE_GLOBAL_CHECKPOINT_S": (
        str(TUNE_STATE_PERIOD_S),
        "Tune saves its experiment state (small files) this often; its 'auto' means 10 s or more",
    ),
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": (
        "2",
        "a down tracking server fails a call in seconds, not after MLflow's minutes of retries (7 with "
        "backoff 2, 120 s each): read-only commands say so in one line, and the study driver's writer "
        "holds its writes and retries them itself (dynconv.tracking.retry)",
    ),
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": ("1", "as above"),
    "MLFLOW_HTTP_REQUEST_TIMEOUT": ("10", "as above"),
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": ("false", "no progress bar per downloaded artifact"),
}
"""Name: (value, why)."""

QUIET: dict[str, tuple[str, str]] = {
    "RAY_worker_maximum_startup_concurrency": (
        "8",
        "the raylet warns once 4x this many workers started; each trial starts a handful of actors, "
        "so the default (the CPU count) warns on every 2-core run",
    ),
    "RAY_AIR_NEW_OUTPUT": ("0", "Tune's new output engine prints its experiment box even at verbose=0"),
    "MLFLOW_LOGGING_LEVEL": ("WARNING", "MLflow's database-migration INFO lines"),
}
"""Set unless `dynconv tune --verbose` asks for the libraries' own output. Name: (value, why)."""


def set_library_environment(verbose: bool = False) -> None:
    """Set `ALWAYS` (and `QUIET` unless `verbose`) where the environment does not set them already."""
    for name, (value, _why) in (ALWAYS if verbose else {**ALWAYS, **QUIET}).items():
        os.environ.setdefault(name, value)
