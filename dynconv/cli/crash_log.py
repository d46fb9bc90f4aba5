"""Full tracebacks of unexpected CLI failures go to a log file; the console gets one line and its path.

Logs live in `$DYNCONV_LOG_DIR`, else `~/.dynconv/logs`, else (not writable) the system temp directory.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path


def log_dir() -> Path:
    """The first writable of $DYNCONV_LOG_DIR, ~/.dynconv/logs, <tmp>/dynconv-logs."""
    candidates = [
        os.environ.get("DYNCONV_LOG_DIR"),
        "~/.dynconv/logs",
        Path(tempfile.gettempdir()) / "dynconv-logs",
    ]
    for cand in candidates:
        if not cand:
            continue
        path = Path(cand).expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
        except OSError:
            continue
    return Path(tempfile.gettempdir())


def write_crash_log(exc: BaseException, argv: list[str]) -> Path:
    """Write the command line and `exc`'s full traceback to a new log file; return its path. A URI's
    password (`--tracking-uri http://USER:PASSWORD@HOST`, or quoted in an error) is written as `***`."""
    from dynconv.tracking.store import masked

    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = log_dir() / f"crash-{stamp}-{os.getpid()}.log"
    text = (
        f"command: {' '.join(argv)}\ncwd: {os.getcwd()}\ntime: {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n\n"
        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    text = masked(text)
    try:
        path.write_text(text)
    except OSError:
        fd, name = tempfile.mkstemp(prefix="dynconv-crash-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        path = Path(name)
    return path
