"""One live driver per study: an OS file lock under the Ray storage path, held for the study's life.

Two `dynconv tune` runs of the same study name would otherwise interleave their trials and MLflow
runs. The lock is `fcntl.flock` on `<storage>/.dynconv_locks/<study>.lock`: the kernel drops it when
the driver exits in any way, SIGKILL included, so a killed study never blocks its own `--resume`
(a RUNNING parent run left in MLflow by a killed driver is not used as a lock for that reason).
The file keeps the holder's pid, host and start time for the error message. Works on local disks and
NFSv4/EFS (flock is emulated with POSIX locks there); cloud storage URIs (s3://, gs://) get no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from dynconv.errors import DynconvError

LOCK_DIR = ".dynconv_locks"


def lock_path(storage: str, study: str) -> Path | None:
    """Where the lock of `study` lives under `storage` (None for cloud storage URIs)."""
    if "://" in storage:
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study)
    return Path(storage) / LOCK_DIR / f"{safe}.lock"


@contextlib.contextmanager
def study_lock(storage: str, study: str) -> Iterator[Path | None]:
    """Hold the lock of `study` for the duration of the block; a one-line error when another holds it."""
    path = lock_path(storage, study)
    if path is None:
        yield None
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DynconvError(f"cannot create the study lock {path} ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DynconvError(
                f"study {study!r} is already running ({_holder(fd)}; lock {path}): wait for it, stop it "
                "(Ctrl-C, then --resume later), or give this study another name"
            ) from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode())
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _holder(fd: int) -> str:
    """The holder's line from the lock file (best effort: it is written just after locking)."""
    with contextlib.suppress(OSError):
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if text:
            return text.splitlines()[0]
    return "holder unknown"


def is_held(storage: str, study: str) -> bool | None:
    """Whether a live driver holds the lock of `study` now; None when this machine cannot tell (cloud
    storage, or no lock file here: a study run on a cluster whose storage this machine does not see).
    A study run left RUNNING while its lock is free belongs to a driver that is gone."""
    path = lock_path(storage, study)
    if path is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock it may just have taken
    return False
