"""The exceptions the CLI turns into a one-line error message, and the one way an error's text becomes
that line.

`DynconvError` is a user-facing error: bad input, missing data, an unknown name. `Fault` and its kinds
are the faults of the world under a study (a tracking store, a disk, a token): each kind says whether
waiting can help (`transient`) so that callers decide by type, never by an error's text. Which kind a
library's exception is, is decided from its type and errno where it is raised: `dynconv.tracking.faults`
for the store, `disk_fault` here for a local write.

Imports nothing from dynconv: every layer may import it.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from pathlib import Path


class DynconvError(Exception):
    """A user-facing error: bad input, missing data, an unknown name. Printed as one line, no traceback."""


class Fault(DynconvError):
    """Something a study runs on failed. `transient`: it may answer again, so a write waits for it."""

    transient = False
    kind = "fault"  # recorded as the cause of a run closed by it (`dynconv.failure`)


class StoreBusy(Fault):
    """The tracking store is busy (a sqlite lock, a server's connection pool full): retried."""

    transient = True
    kind = "store_busy"


class StoreUnreachable(Fault):
    """The tracking server does not answer (refused, timed out, 5xx): writes wait for it."""

    transient = True
    kind = "store_unreachable"


class StoreGone(Fault):
    """The store's file was deleted or replaced under the study: nothing written now would be kept."""

    kind = "store_gone"


class AuthRefused(Fault):
    """The tracking server (or a cluster) refuses the credentials it was given."""

    kind = "auth_refused"


class DiskFull(Fault):
    """A local disk is full (or over quota): every later write fails the same way."""

    kind = "disk_full"


class ReadOnlyDisk(Fault):
    """A local disk (or the store's file) became read-only."""

    kind = "read_only"


FAULT_KINDS: dict[str, type[Fault]] = {
    cls.kind: cls for cls in (StoreBusy, StoreUnreachable, StoreGone, AuthRefused, DiskFull, ReadOnlyDisk)
}
"""Each fault's class by its `kind`, for a fault that travels as its kind (in a trial's last result)."""

_DISK_ERRNOS = {errno.ENOSPC: DiskFull, errno.EDQUOT: DiskFull, errno.EROFS: ReadOnlyDisk}


def causes(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what it was raised from or while handling (`__cause__`, `__context__`), and what a
    wrapper holds (SQLAlchemy's `orig`, the DB-API error; Ray's `cause`, a task's exception), each once."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        err = todo.pop(0)
        if id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        wrapped = [err.__cause__, err.__context__, getattr(err, "orig", None), getattr(err, "cause", None)]
        todo += [e for e in wrapped if isinstance(e, BaseException)]


def disk_fault(error: BaseException, where: str | Path | None = None) -> Fault | None:
    """The `DiskFull` or `ReadOnlyDisk` that `error` (or an error it came from) is, by errno, with one
    line naming the place (`where`, else the error's file) and, when full, the space left there."""
    for err in causes(error):
        kind = _DISK_ERRNOS.get(getattr(err, "errno", None)) if isinstance(err, OSError) else None
        if kind is None:
            continue
        place = where or getattr(err, "filename", None)
        if kind is ReadOnlyDisk:
            return ReadOnlyDisk(
                f"read-only disk{f' at {place}' if place else ''}: nothing more can be written"
            )
        return DiskFull(f"disk full at {place}: {free_space(place)}" if place else "disk full: no space left")
    return None


def world_fault(error: BaseException, where: str | Path | None = None) -> Fault | None:
    """The fault of the world `error` is or came from: a `Fault` dynconv raised somewhere in its chain
    (a trial's, wrapped by Ray), else the `DiskFull` or `ReadOnlyDisk` its errno says (`disk_fault`)."""
    fault = next((e for e in causes(error) if isinstance(e, Fault)), None)
    return fault or disk_fault(error, where)


def free_space(place: str | Path) -> str:
    """'N MB free' on the file system holding `place` (its nearest existing parent)."""
    path = Path(place)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return f"{shutil.disk_usage(path).free / 1e6:.0f} MB free"
    except OSError:
        return "free space unknown"


def one_line(error: BaseException | str, limit: int | None = 300) -> str:
    """`error`'s message on one line: whitespace (line breaks included) collapsed, cut to `limit`
    characters with an ellipsis (None: whole); an exception without a message gives its type name."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
